"""The browser's event socket: ``WS /ws/runtimes/{runtime_id}/workers/{worker_id}/events/?after=<seq>``.

Observation only: the socket relays a worker's events; commands go through REST. An anonymous socket is
refused at the handshake (4401). Every other socket is accepted first, so that whatever goes wrong reaches
the browser as one error frame and a close with 4000 + status — bad ids (4400), too many sockets (4429),
the runtime/worker lookup, which runs after the accept and is bounded (``YOI_SOCKET_LOOKUP_TIMEOUT_SECONDS``,
then 4504) instead of racing daphne's handshake timeout. While open, the socket follows policy
(workers.sockets): a logout, a deactivated user, a runtime no longer visible or disabled end it with an
error frame (4401 / 4404 / 4503), and a shutdown with 1001. A client that sends anything more than a few
small messages is closed 4400. Any other ``/ws/`` path is accepted and closed 4404 (``UnknownPathConsumer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import unquote

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings

from runtimes.errors import InvalidRequest, NotAuthenticated, NotFound, RateLimited, RuntimeTimeout, YoiError
from runtimes.types import WorkerDetail
from workers.frames import CLOSE_CODE_BASE, error_frame
from workers.ids import id_errors, parse_after
from workers.policy import SocketAccess, scope_session_key
from workers.relay import Subscriber, relay_hub
from workers.services import worker_get
from workers.sockets import GOING_AWAY, live_sockets
from workers.transport import close_going_away, direct_writer, limit_incoming, resume_incoming

logger = logging.getLogger(__name__)

ANONYMOUS_CLOSE_CODE = 4401
OBSERVATION_ONLY = "this socket is observation-only: send commands via REST"
TOO_MANY_SOCKETS = "too many open event sockets for this user; close one and retry"
CHANNEL_LAYER_TIMEOUT = 5.0
# The path of the event socket, as the client wrote it (ids still percent-encoded).
EVENTS_PATH_SHAPE = ("", "ws", "runtimes", None, "workers", None, "events", "")

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
    """Relays one worker's events to one browser, for as long as its access holds."""

    subscriber: Subscriber | None = None
    sender: asyncio.Task[None] | None = None
    access: SocketAccess | None = None
    policy_groups: tuple[str, ...] = ()
    ended = False
    client_messages = 0
    incoming_limited = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=ANONYMOUS_CLOSE_CODE)
            return
        # Under daphne the limits on what a client sends also hold at the transport (see receive).
        self.incoming_limited = limit_incoming(
            self.base_send,
            max_messages=int(settings.YOI_SOCKET_MAX_CLIENT_MESSAGES),
            max_bytes=int(settings.YOI_SOCKET_MAX_CLIENT_MESSAGE_BYTES),
        )
        await self.accept()
        if live_sockets.draining:
            await self.end(None, code=GOING_AWAY)  # this process is stopping: reconnect to another
            return
        kwargs = self.scope["url_route"]["kwargs"]
        runtime_id, worker_id = kwargs["runtime_id"], kwargs["worker_id"]
        try:
            fields = id_errors(runtime_id=runtime_id, worker_id=worker_id)
            if fields:
                raise InvalidRequest(runtime_id=None, fields=fields)
            after = parse_after(self.scope.get("query_string", b""))
        except YoiError as error:
            await self.end(error)
            return
        access = SocketAccess(user_id=user.pk, session_key=scope_session_key(self.scope), runtime_id=runtime_id)
        if not await live_sockets.admit(self, access):
            await self.end(RateLimited(message=TOO_MANY_SOCKETS, retry_after=1))
            return
        self.access = access
        # Before the lookup: a change made while it runs reaches this socket too.
        await self._join(access.groups)
        try:
            # Visibility first (an invisible runtime is never contacted), then the worker must exist.
            worker = await asyncio.wait_for(
                _worker_get(runtime_id=runtime_id, worker_id=worker_id, user=user),
                timeout=float(settings.YOI_SOCKET_LOOKUP_TIMEOUT_SECONDS),
            )
        except TimeoutError:
            await self.end(RuntimeTimeout(runtime_id=runtime_id, worker_id=worker_id))
            return
        except YoiError as error:
            await self.end(error)
            return
        if self.ended:
            return  # closed meanwhile (policy, shutdown)
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

    async def end(self, error: YoiError | None, *, code: int | None = None) -> None:
        """Close now (policy, limits, shutdown): the error frame when there is an error, then the close with
        ``code`` (default 4000 + its status). What the relay had not sent yet is dropped: after a policy
        change the browser may no longer see it, and on shutdown it resumes with ``?after=``."""
        if self.ended:
            return
        self._leave_relay()
        if error is not None:
            frame, error_code = error_frame(error)
            code = error_code if code is None else code
            await self.send(text_data=frame)
        await self.close(code=1000 if code is None else code)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close from the server side (once: later closes, and frames, are for a socket already closing)."""
        self.ended = True
        if code == GOING_AWAY and close_going_away(self.base_send):
            return  # daphne would refuse to send 1001 itself
        await super().close(code=code, reason=reason)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """Observation only: nothing a browser sends is answered, but a message over
        ``YOI_SOCKET_MAX_CLIENT_MESSAGE_BYTES`` or more than ``YOI_SOCKET_MAX_CLIENT_MESSAGES`` messages close
        the socket with 4400."""
        if self.ended:
            return
        self.client_messages += 1
        limit = int(settings.YOI_SOCKET_MAX_CLIENT_MESSAGE_BYTES)
        size = len(bytes_data or b"") if text_data is None else len(text_data)
        if size <= limit and text_data is not None:
            size = len(text_data.encode("utf-8", "surrogatepass"))
        if size <= limit and self.client_messages <= int(settings.YOI_SOCKET_MAX_CLIENT_MESSAGES):
            return
        await self.end(InvalidRequest(message=OBSERVATION_ONLY))
        if self.incoming_limited:
            # daphne drops whatever else the client sends, and will not deliver the disconnect either: read on
            # only for the closing handshake, and end this consumer here.
            resume_incoming(self.base_send)
            await self.disconnect(CLOSE_CODE_BASE + InvalidRequest.status)
            raise StopConsumer

    # ------------------------------------------------------------------------------------ policy messages

    async def policy_check(self, message: dict[str, Any]) -> None:
        """A change that may concern this socket was announced (workers.signals): check its access again."""
        live_sockets.check_soon(self)

    async def policy_session_ended(self, message: dict[str, Any]) -> None:
        """This socket's login session ended (logout)."""
        await self.end(NotAuthenticated())

    # ------------------------------------------------------------------------------------ the end

    async def _join(self, groups: list[str]) -> None:
        self.policy_groups = tuple(groups)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self.channel_layer.group_add(g, self.channel_name) for g in groups)),
                CHANNEL_LAYER_TIMEOUT,
            )
        except Exception as exc:
            # The periodic revalidation still covers this socket; announcements will not reach it.
            logger.warning("workers.sockets.join_failed", extra={"error_class": type(exc).__name__})

    async def _leave(self) -> None:
        groups, self.policy_groups = self.policy_groups, ()
        if not groups:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(self.channel_layer.group_discard(g, self.channel_name) for g in groups)),
                CHANNEL_LAYER_TIMEOUT,
            )

    def _leave_relay(self) -> None:
        """Stop relaying to this socket (the upstream closes as usual once no browser is left)."""
        if self.subscriber is not None:
            relay_hub.unsubscribe(self.subscriber)
            self.subscriber = None
        if self.sender is not None and self.sender is not asyncio.current_task():
            self.sender.cancel()

    async def disconnect(self, code: int) -> None:
        self.ended = True
        self._leave_relay()
        if self.sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
            self.sender = None
        await self._leave()
        if self.access is not None:
            self.access = None
            await live_sockets.release(self)


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: accepted, then one error frame and a close — 4400 ``invalid_request`` for
    event-socket ids no route could hold (``a%2Fb``), else 4404 ``not_found`` — never a server error."""

    async def connect(self) -> None:
        await self.accept()
        frame, code = error_frame(unknown_path_error(self.scope))
        await self.send(text_data=frame)
        await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """The socket is closing; nothing a client sends matters."""


def unknown_path_error(scope: dict[str, Any]) -> YoiError:
    """The error of an unrouted WebSocket path (see UnknownPathConsumer)."""
    raw = scope.get("raw_path")
    parts = raw.decode("latin-1").split("?", 1)[0].split("/") if isinstance(raw, bytes) else []
    shaped = len(parts) == len(EVENTS_PATH_SHAPE) and all(
        want is None or part == want for part, want in zip(parts, EVENTS_PATH_SHAPE, strict=True)
    )
    if shaped:
        fields = id_errors(runtime_id=unquote(parts[3]), worker_id=unquote(parts[5]))
        if fields:
            return InvalidRequest(fields=fields)
    return NotFound()
