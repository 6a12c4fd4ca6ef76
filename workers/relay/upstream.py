"""Step 2 of the event path: the upstream of one relay — the one connection to the runtime for a worker.

``Upstream`` runs one task on the event loop: open the worker's live stream through the one call path
(``registry.call_async``: breaker and status marks), resuming after the relay's last seq; hand every item
to its owner in the same loop turn it arrived in; when the stream ends, back off (capped exponential, full
jitter, at least a circuit breaker's ``Retry-After``) and open it again. Its state is ``UpstreamState``,
and every transition is told to the owner (who tells browsers). Errors after which retrying cannot help
end it and are handed to the owner. ``fetch`` opens the short second streams of a catch-up the same way.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable
from typing import Protocol

from django.conf import settings

from runtimes import metrics
from runtimes.errors import (
    InvalidRequest,
    RuntimeBadResponse,
    RuntimeDisabled,
    RuntimeMisconfigured,
    RuntimeNotFound,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.base import LiveEvents
from runtimes.registry import registry
from runtimes.types import FINAL_EVENT, StreamReset, WorkerEvent

logger = logging.getLogger(__name__)

# Errors after which retrying cannot help: the browser gets the error and the socket closes.
TERMINAL_ERRORS: tuple[type[YoiError], ...] = (
    RuntimeNotFound,
    RuntimeDisabled,
    RuntimeMisconfigured,
    WorkerNotFound,
    InvalidRequest,
)
# After this many failed attempts in a row the upstream is reported "unavailable" instead of "reconnecting".
UNAVAILABLE_AFTER = 3
# An upstream that stayed connected this long before dropping starts its backoff afresh.
STABLE_CONNECTION = 10.0
# A catch-up stream that has not reached its end by then is given up (its browser is told a reset).
CATCH_UP_TIMEOUT = 30.0
# Items one loop turn hands to the relay, at most (and at most a sixteenth of a browser's queue): past it the
# stream is paused and the rest handed over in later turns, so that the browsers' sockets are written in
# between. Without a bound one read of a fast runtime (hundreds of kilobytes) becomes one loop turn of
# thousands of events, and even browsers that keep up overflow their queues and get a slow_consumer reset.
# The bound also paces a burst to what browsers that read as fast as they can take: at an eighth of a small
# queue (200 frames), a 50,000-event burst outran two Python readers in the slow-reader test now and then.
MAX_ITEMS_PER_TURN = 256

Item = WorkerEvent | StreamReset


class UpstreamState(enum.StrEnum):
    """Where the upstream is; the values are what browsers are told in ``state`` frames."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    UNAVAILABLE = "unavailable"
    STOPPED = "stopped"  # ended for good (a terminal error): browsers get the error, not a state


class UpstreamOwner(Protocol):
    """What an upstream needs of its relay (workers.relay.hub.WorkerRelay)."""

    def resume_after(self) -> int: ...

    def done(self) -> bool: ...

    def upstream_item(self, item: Item) -> None: ...

    def upstream_state(self, state: UpstreamState, reason: str | None, retry_in: float | None) -> None: ...

    def upstream_failed(self, error: YoiError) -> None: ...

    def behind(self) -> Awaitable[None] | None: ...


def relay_setting(name: str, default: float) -> float:
    """A ``YOI_RELAY_*`` setting (read when used: tests and operators change them at run time)."""
    return float(getattr(settings, name, default))


class _Connection:
    """The sink of one opened stream: items reach the upstream only while it is the current one."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self.ended: asyncio.Future[YoiError | None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"_Connection(upstream={self._upstream!r})"

    def event_item(self, item: Item) -> None:
        if self._upstream.current is self:
            self._upstream.deliver(item)

    def event_end(self, error: YoiError | None) -> None:
        if not self.ended.done():
            self.ended.set_result(error)


class _Collector:
    """The sink of a catch-up stream: items up to ``until`` (or the final event), then done."""

    def __init__(self, until: int) -> None:
        self._until = until
        self.items: list[Item] = []
        self.done: asyncio.Future[YoiError | None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"_Collector(until={self._until}, items={len(self.items)})"

    def event_item(self, item: Item) -> None:
        if self.done.done():
            return
        self.items.append(item)
        if isinstance(item, WorkerEvent) and (item.seq >= self._until or item.event == FINAL_EVENT):
            self.done.set_result(None)

    def event_end(self, error: YoiError | None) -> None:
        if not self.done.done():
            self.done.set_result(error)


class Upstream:
    """The one upstream stream of a worker in this process (see the module docstring)."""

    def __init__(self, owner: UpstreamOwner, runtime_id: str, worker_id: str) -> None:
        self.owner = owner
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.state = UpstreamState.CONNECTING
        self.failures = 0
        self.opened = 0  # attempts to open, for tests and diagnostics
        self.current: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected_at: float | None = None
        self._live: LiveEvents | None = None
        frames = int(relay_setting("YOI_RELAY_SUBSCRIBER_FRAMES", 2048))
        self._turn_budget = max(1, min(MAX_ITEMS_PER_TURN, frames // 16))
        self._turn_items = 0
        self._held: deque[Item] | None = None  # items past this turn's budget, handed over next turn
        self._held_done: asyncio.Future[None] | None = None
        self._turn_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Upstream(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r}, state={self.state!r})"

    @property
    def running(self) -> bool:
        """True while its task runs (connected, connecting or waiting to reconnect)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task (no-op while it runs)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-upstream")

    def stop(self) -> None:
        """Close the stream and end the task; nothing more is delivered."""
        self.current = None
        self._live = None
        self._held = None
        if self._turn_task is not None:
            self._turn_task.cancel()
            self._turn_task = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # ------------------------------------------------------------------------------------ the task

    async def _run(self) -> None:
        while not self.owner.done():
            error = await self._session()
            if self.owner.done():
                return  # the worker exited (or the relay closed): nothing more will ever come
            if isinstance(error, TERMINAL_ERRORS):
                self.state = UpstreamState.STOPPED
                self.owner.upstream_failed(error)
                return
            reason = error.code if error is not None else "stream_ended"
            self.failures += 1
            delay = self._backoff(error)
            state = UpstreamState.UNAVAILABLE if self.failures >= UNAVAILABLE_AFTER else UpstreamState.RECONNECTING
            self._set(state, reason, delay)
            metrics.relay_reconnect(self.runtime_id)
            logger.info(
                "workers.relay.upstream_lost",
                extra={
                    **self._ids(),
                    "code": reason,
                    "reason": getattr(error, "reason", None) or reason,
                    "retry_in": round(delay, 3),
                },
            )
            await asyncio.sleep(delay)

    async def _session(self) -> YoiError | None:
        """Open the stream once and wait for its end; return the error it ended with (None: closed cleanly)."""
        connection = _Connection(self)
        self.current = connection
        self.opened += 1
        after = self.owner.resume_after()
        live: LiveEvents | None = None
        try:
            live = await registry.call_async(
                self.runtime_id,
                lambda handle: handle.watch_events(self.worker_id, after=after, sink=connection),
            )
            self._live = live
            self._connected()
            with metrics.relay_upstream(self.runtime_id):
                ended = await connection.ended
                if self._held is not None:
                    # What arrived before the end is handed over first (it may be the worker's final event).
                    self._held_done = asyncio.get_running_loop().create_future()
                    await self._held_done
            return ended
        except YoiError as error:
            return error
        except Exception:
            logger.exception("workers.relay.upstream_crashed", extra=self._ids())
            return RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=self.worker_id)
        finally:
            if live is not None:
                live.close()
            if self.current is connection:  # not replaced meanwhile (stop, then a new start)
                self.current = None
                self._live = None
                self._held = None
                self._held_done = None
            loop = asyncio.get_running_loop()
            if self._connected_at is not None and loop.time() - self._connected_at >= STABLE_CONNECTION:
                self.failures = 0  # it was up for a good while: this is a fresh drop, not a failing runtime
            self._connected_at = None

    def deliver(self, item: Item) -> None:
        """An item of the current stream (called by its sink, in the loop turn it arrived in)."""
        if self._held is not None:
            self._held.append(item)
            return
        if self.state is not UpstreamState.CONNECTED:
            self._connected()  # items may come with the response head, before the open returned
        self.failures = 0  # the upstream delivers: whatever failed before is over
        self.owner.upstream_item(item)
        self._turn_items += 1
        if self._turn_items >= self._turn_budget:
            self._held = deque()
            if self._live is not None:
                self._live.pause_reading()
            self._schedule_next_turn()

    def _schedule_next_turn(self) -> None:
        # The next turn's items wait while a browser that has kept up so far is behind (see WorkerRelay.behind):
        # a burst is paced by the browsers that read it, not by how fast this process can parse it.
        waiting = self.owner.behind()
        if waiting is None:
            asyncio.get_running_loop().call_soon(self._next_turn)
        else:
            self._turn_task = asyncio.get_running_loop().create_task(self._next_turn_after(waiting))

    async def _next_turn_after(self, waiting: Awaitable[None]) -> None:
        await waiting
        self._next_turn()

    def _next_turn(self) -> None:
        held = self._held
        self._turn_items = 0
        if held is None:
            return  # the stream ended or was replaced meanwhile
        while held and self._turn_items < self._turn_budget:
            self._turn_items += 1
            self.owner.upstream_item(held.popleft())
        if held:
            self._schedule_next_turn()
            return
        self._held = None
        if self._live is not None:
            self._live.resume_reading()
        if self._held_done is not None and not self._held_done.done():
            self._held_done.set_result(None)

    def _connected(self) -> None:
        if self._connected_at is None:
            self._connected_at = asyncio.get_running_loop().time()
        self._set(UpstreamState.CONNECTED)

    def _set(self, state: UpstreamState, reason: str | None = None, retry_in: float | None = None) -> None:
        if state == self.state == UpstreamState.CONNECTED:
            return
        self.state = state
        self.owner.upstream_state(state, reason, retry_in)

    def _backoff(self, error: YoiError | None) -> float:
        base = relay_setting("YOI_RELAY_BACKOFF_BASE", 0.5)
        cap = relay_setting("YOI_RELAY_BACKOFF_CAP", 15.0)
        ceiling = min(cap, base * 2 ** (self.failures - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        retry_after = getattr(error, "retry_after", None)
        return max(delay, float(retry_after)) if retry_after else delay

    # ------------------------------------------------------------------------------------ catch-up streams

    async def fetch(self, after: int, until: int) -> list[Item]:
        """The events after ``after`` up to seq ``until`` from a short second stream (a catch-up)."""
        collector = _Collector(until)
        live: LiveEvents | None = None
        try:
            async with asyncio.timeout(CATCH_UP_TIMEOUT):
                live = await registry.call_async(
                    self.runtime_id,
                    lambda handle: handle.watch_events(self.worker_id, after=after, sink=collector),
                )
                with metrics.relay_upstream(self.runtime_id):
                    error = await collector.done
        except TimeoutError:
            error = None
            logger.info("workers.relay.catch_up_timeout", extra=self._ids())
        finally:
            if live is not None:
                live.close()
        if error is not None and not collector.items:
            raise error
        return collector.items

    def _ids(self) -> dict[str, str]:
        return {"runtime_id": self.runtime_id, "worker_id": self.worker_id}
