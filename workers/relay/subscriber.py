"""Step 4 of the event path: one browser's side of a relay — its cursor, its bounded queue, its writer.

A ``Subscriber`` delivers an event only when its seq is the one the cursor (``next_seq``) expects, so a
browser never sees a duplicate or a gap. With a ``writer`` (the browser's daphne connection, see
``workers.transport``) a frame is written the moment the relay produces it while the socket keeps up;
frames queue only while it is backed up, and then ``handoff`` is set: the consumer's sender task owns
delivery until the queue is empty again. A browser that lets its queue fill is sent a ``slow_consumer``
reset instead of the frames it did not take.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from workers.frames import reset_frame

logger = logging.getLogger(__name__)

# How long, over a browser's whole subscription, the relay may hold a burst back for it while it catches up
# (see WorkerRelay.behind); a browser that needs more is slow: its queue fills and it gets a reset.
HOLD_SECONDS = 1.0


class FrameWriter(Protocol):
    """Writes frames to a browser's socket without an ``await`` (see workers.transport.DirectWriter)."""

    def writable(self) -> bool: ...

    def backed_up(self) -> bool: ...

    def write(self, text: str) -> None: ...

    def flush(self) -> None: ...

    async def drained(self) -> None: ...


class FrameQueue(asyncio.Queue[str | None]):
    """A subscriber's frames (``None`` = close), which tells a waiting catch-up when it has room again."""

    def __init__(self) -> None:
        super().__init__()
        self._room = asyncio.Event()
        self._room_at = -1

    def _get(self) -> str | None:
        # asyncio.Queue's extension point: every get, awaited or not, takes from here.
        item: str | None = super()._get()
        if self.qsize() <= self._room_at:
            self._room.set()
        return item

    async def room(self, limit: int) -> None:
        """Return once at most ``limit`` frames are queued."""
        while self.qsize() > limit:
            self._room_at = limit
            self._room.clear()
            await self._room.wait()
        self._room_at = -1


class Subscriber:
    """One browser's view of a relay: its cursor and its bounded queue of frames."""

    def __init__(
        self, runtime_id: str, worker_id: str, *, after: int, max_frames: int, writer: FrameWriter | None = None
    ) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.next_seq = after + 1
        self.max_frames = max_frames
        self.writer = writer
        self.queue = FrameQueue()
        self.handoff = asyncio.Event()
        self.catching_up = False
        self.closed = False
        self.close_code: int | None = None
        self.resets = 0
        self.hold_left = HOLD_SECONDS

    def __repr__(self) -> str:
        return (
            f"Subscriber(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r}, next_seq={self.next_seq})"
        )

    def push_event(self, seq: int, frame: str) -> None:
        """Deliver the event the cursor expects; a browser too slow to keep its queue bounded gets a reset."""
        if self.queue.qsize() >= self.max_frames:
            # Drop what it has not taken: it learns where the stream goes on and re-pages the rest.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(reset_frame("slow_consumer", seq))
            self.resets += 1
            logger.info(
                "workers.relay.slow_consumer_reset",
                extra={"runtime_id": self.runtime_id, "worker_id": self.worker_id, "seq": seq},
            )
        self._push(frame)
        self.next_seq = seq + 1

    def push_control(self, frame: str) -> None:
        """Deliver a frame outside the event sequence (state, reset, error)."""
        if not self.closed:
            self._push(frame)

    def skip_to(self, seq: int, reason: str) -> None:
        """Events before ``seq`` will not come: tell the browser, and expect ``seq`` next."""
        self.push_control(reset_frame(reason, seq))
        self.next_seq = seq

    def _push(self, frame: str) -> None:
        writer = self.writer
        if writer is not None and not self.handoff.is_set():
            # Nothing is queued while handoff is clear: writing now keeps the order.
            if writer.writable():
                writer.write(frame)
                return
            self.handoff.set()  # backed up: the sender waits for the browser, then sends what queued
        self.queue.put_nowait(frame)

    def finish(self, close_code: int = 1000) -> None:
        """Close the socket once every queued frame is sent."""
        if not self.closed:
            self.closed = True
            self.close_code = close_code
            self.queue.put_nowait(None)
            self.handoff.set()
