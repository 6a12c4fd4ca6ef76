"""Step 3 of the event path: the replay log of one worker — what this process relayed, and the one way a
browser behind the live edge is brought up to it.

``ReplayLog`` holds the last ``YOI_RELAY_BUFFER_EVENTS`` event frames (encoded once), the last seq
relayed and the final seq once the worker's last event came. ``catch_up`` is the only catch-up path: a
browser that joins behind the live edge, or that a gap left behind, is sent the missing events in steps of
half its queue — from the log when it still holds them, else from the runtime (a short second stream) —
waiting for its queue to have room between steps, until it is at the live edge. What the runtime no longer
has is told as a ``reset``.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtimes.errors import YoiError
from runtimes.types import FINAL_EVENT, StreamReset, WorkerEvent
from workers.frames import event_frame
from workers.relay.subscriber import Subscriber

logger = logging.getLogger(__name__)

# A second, short stream from the runtime: the events after ``after`` up to seq ``until``.
Fetch = Callable[[int, int], Awaitable[list[WorkerEvent | StreamReset]]]


@dataclass(slots=True)
class Logged:
    """One relayed event: its seq and its frame, encoded once for every browser."""

    seq: int
    frame: str


class ReplayLog:
    """The bounded log of one relay (see the module docstring)."""

    def __init__(self, *, last_seq: int, capacity: int) -> None:
        self.last_seq = last_seq
        self.final_seq: int | None = None
        self.buffer: deque[Logged] = deque(maxlen=capacity)

    def __repr__(self) -> str:
        return f"ReplayLog(last_seq={self.last_seq}, buffered={len(self.buffer)})"

    @property
    def first_seq(self) -> int:
        """The oldest seq the log still holds (``last_seq + 1`` when it holds none)."""
        return self.buffer[0].seq if self.buffer else self.last_seq + 1

    def append(self, seq: int, frame: str, kind: str) -> Logged | None:
        """Log the next event; None when it is not new (a resumed upstream, or a second leader, repeating)."""
        if seq <= self.last_seq:
            return None
        if seq != self.last_seq + 1:
            self.buffer.clear()  # continuity broken: the log restarts here; subscribers behind catch up
        self.last_seq = seq
        logged = Logged(seq, frame)
        self.buffer.append(logged)  # bounded: the oldest event falls out
        if kind == FINAL_EVENT:
            self.final_seq = seq
        return logged

    def skip_to(self, earliest_seq: int) -> None:
        """The runtime has nothing before ``earliest_seq``: the log goes on from there."""
        self.buffer.clear()
        self.last_seq = max(self.last_seq, earliest_seq - 1)

    async def catch_up(self, subscriber: Subscriber, fetch: Fetch) -> None:
        """Send ``subscriber`` every event from its cursor to the live edge (the only catch-up path)."""
        # In steps of half a queue: thousands of missed events must not overflow the bounded queue they are
        # sent through (a slow_consumer reset for a browser that reads as fast as it is sent).
        step = max(1, subscriber.max_frames // 2)
        subscriber.catching_up = True
        try:
            while subscriber.next_seq <= self.last_seq and not subscriber.closed:
                await subscriber.queue.room(step)
                if subscriber.closed:
                    break
                first = self.first_seq
                if subscriber.next_seq >= first:
                    # From the log, synchronously: no event can slip in between.
                    offset = subscriber.next_seq - first
                    for logged in list(itertools.islice(self.buffer, offset, offset + step)):
                        subscriber.push_event(logged.seq, logged.frame)
                    continue
                await self._from_runtime(subscriber, fetch, until=min(first - 1, subscriber.next_seq + step - 1))
        except Exception:
            logger.exception("workers.relay.catch_up_failed", extra=_ids(subscriber))
            subscriber.skip_to(self.last_seq + 1, "history_unavailable")
        finally:
            subscriber.catching_up = False

    async def _from_runtime(self, subscriber: Subscriber, fetch: Fetch, *, until: int) -> None:
        """Send ``subscriber.next_seq .. until`` (older than the log) from a short stream of the runtime."""
        start = subscriber.next_seq
        try:
            items = await fetch(start - 1, until)
        except YoiError as error:
            logger.info("workers.relay.catch_up_unavailable", extra={**_ids(subscriber), "code": error.code})
            items = []
        for item in items:
            if isinstance(item, StreamReset):
                if item.earliest_seq > subscriber.next_seq:
                    subscriber.skip_to(item.earliest_seq, item.reason)
            elif item.seq == subscriber.next_seq:
                subscriber.push_event(item.seq, event_frame(item))
        if subscriber.next_seq == start:
            # The runtime could not give the missing events: say so, and go on from what the log has.
            subscriber.skip_to(self.first_seq, "history_unavailable")


def _ids(subscriber: Subscriber) -> dict[str, str]:
    return {"runtime_id": subscriber.runtime_id, "worker_id": subscriber.worker_id}
