"""The browser's event socket: ``WS /ws/runtimes/{runtime_id}/workers/{worker_id}/events/?after=<seq>``.

Observation only: the socket relays a worker's events; commands go through REST. It is accepted only
after authentication, visibility and the worker lookup succeed (an anonymous socket is refused at the
handshake with 4401); a failed lookup is told as one error frame, then a close with 4000 + status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from runtimes.errors import InvalidRequest, YoiError
from runtimes.types import WorkerDetail
from workers.frames import error_frame
from workers.ids import id_errors, parse_after
from workers.relay import Subscriber, relay_hub
from workers.services import worker_get
from workers.transport import direct_writer

logger = logging.getLogger(__name__)

ANONYMOUS_CLOSE_CODE = 4401

_worker_get = database_sync_to_async(worker_get, thread_sensitive=False)


def starting_cursor(after: int | None, worker: WorkerDetail) -> int:
    """Where the relay starts for this browser: its cursor, or live (a finished worker still tells its end)."""
    if after is not None:
        # No browser has seen an event the runtime has not logged: a cursor past the worker's last event
        # would become the shared relay's position and hold back every other browser watching it.
        return after if worker.last_seq is None else min(after, worker.last_seq)
    last = worker.last_seq or 0
    return max(0, last - 1) if worker.status != "running" else last


class WorkerEventsConsumer(AsyncJsonWebsocketConsumer):
    """Relays one worker's events to one browser."""

    subscriber: Subscriber | None = None
    sender: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=ANONYMOUS_CLOSE_CODE)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        runtime_id, worker_id = kwargs["runtime_id"], kwargs["worker_id"]
        try:
            fields = id_errors(runtime_id=runtime_id, worker_id=worker_id)
            if fields:
                raise InvalidRequest(runtime_id=None, fields=fields)
            after = parse_after(self.scope.get("query_string", b""))
            # Visibility first (an invisible runtime is never contacted), then the worker must exist.
            worker = await _worker_get(runtime_id=runtime_id, worker_id=worker_id, user=user)
        except YoiError as error:
            await self.accept()
            await self.send_error(error)
            return
        await self.accept()
        cursor = starting_cursor(after, worker)
        if worker.status != "running" and worker.last_seq is not None and cursor >= worker.last_seq:
            # A finished worker's log is complete and this browser has all of it: an upstream would end at
            # once with nothing to send, and the relay would take that for a drop and reconnect forever.
            await self.close(code=1000)
            return
        # Under daphne the relay writes frames to this socket directly while it keeps up (no task wake-up
        # per frame); this consumer's sender takes over while the browser is backed up.
        writer = direct_writer(self.base_send)
        self.subscriber = relay_hub.subscribe(runtime_id, worker_id, after=cursor, writer=writer)
        self.sender = asyncio.create_task(self._send_frames(self.subscriber))

    async def _send_frames(self, subscriber: Subscriber) -> None:
        """Send queued frames in order, waiting while the browser's transport is backed up.

        With a direct writer the relay writes while the socket keeps up and this task only runs while
        ``handoff`` is set: it empties the queue through the same writer (waiting for Twisted to say the
        browser has read what it was sent), then hands delivery back.
        """
        writer = subscriber.writer
        while True:
            if writer is None:
                frame = await subscriber.queue.get()
            elif subscriber.queue.empty():
                subscriber.handoff.clear()  # caught up: the relay writes directly again
                await subscriber.handoff.wait()
                continue
            else:
                frame = subscriber.queue.get_nowait()
            if frame is None:
                if writer is not None:
                    writer.flush()  # every frame before the close
                await self.close(code=subscriber.close_code or 1000)
                return
            if writer is None:
                await self.send(text_data=frame)
            else:
                if writer.backed_up():
                    await writer.drained()
                writer.write(frame)

    async def send_error(self, error: YoiError) -> None:
        """THE WebSocket rendering of a typed error: one error frame, then close with 4000 + status."""
        frame, code = error_frame(error)
        await self.send(text_data=frame)
        await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """Observation only: anything a browser sends is answered with an error frame; the socket stays."""
        frame, _ = error_frame(InvalidRequest(message="this socket is observation-only: send commands via REST"))
        await self.send(text_data=frame)

    async def disconnect(self, code: int) -> None:
        if self.subscriber is not None:
            relay_hub.unsubscribe(self.subscriber)
            self.subscriber = None
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
            self.sender = None
