"""The event relay: one backend-owned upstream per watched worker per process, fanned out to browsers.

A ``WorkerRelay`` owns the upstream event stream of one ``(runtime_id, worker_id)``: it is started by the
first subscriber and closed shortly after the last one leaves. The upstream is read on a thread of its
own (the handles are blocking) and every item is handed to the event loop, where all relay state lives,
so nothing here needs a lock.

Each ``Subscriber`` (one per browser socket) has a cursor, ``next_seq``: an event is delivered only when
its seq is the one the subscriber expects, so duplicates are dropped and a gap is repaired — from the
relay's bounded buffer, or from the runtime with a short catch-up stream — before anything later is sent.
The upstream reconnects with capped exponential backoff and full jitter, resuming after the last seq it
delivered, and every transition is told to browsers as a ``state`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.db import close_old_connections

from runtimes import metrics
from runtimes.errors import (
    InvalidRequest,
    RuntimeBadResponse,
    RuntimeDisabled,
    RuntimeNotFound,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.base import EventStream
from runtimes.registry import registry
from runtimes.types import StreamReset, WorkerEvent
from workers.cluster import ClusterLink, cluster_enabled
from workers.frames import error_frame, event_frame, reset_frame, state_frame

logger = logging.getLogger(__name__)

FINAL_EVENT = "worker_exited"
# Errors after which retrying cannot help: the browser gets the error and the socket closes.
TERMINAL_ERRORS: tuple[type[YoiError], ...] = (RuntimeNotFound, RuntimeDisabled, WorkerNotFound, InvalidRequest)
# After this many failed attempts in a row the upstream is reported "unavailable" instead of "reconnecting".
UNAVAILABLE_AFTER = 3
CATCH_UP_TIMEOUT = 30.0
# An upstream that stayed connected this long before dropping starts its backoff afresh.
STABLE_CONNECTION = 10.0
# Items an upstream thread may have handed to the event loop but not yet handled: at most an eighth of a
# browser's queue, so that several batches fit while a browser's sender waits for its socket to drain.
# Without a bound a fast runtime piles thousands of events into one loop turn, before any socket is
# written, and even browsers that keep up overflow their queues and get a slow_consumer reset. The loop
# takes what has queued in one wake-up, so a larger bound means fewer, larger batches.
MAX_IN_FLIGHT = 256
IN_FLIGHT_POLL = 0.5
# A repair sends at most half a browser's queue at a time, then waits (polling) for the browser to take it.
REPAIR_POLL = 0.02


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


class FrameWriter(Protocol):
    """Writes frames to a browser's socket without an ``await`` (see workers.transport.DirectWriter)."""

    def writable(self) -> bool: ...

    def backed_up(self) -> bool: ...

    def write(self, text: str) -> None: ...

    def flush(self) -> None: ...


class Subscriber:
    """One browser's view of a relay: its cursor and its bounded queue of frames (``None`` = close).

    With a ``writer`` a frame is written to the socket the moment the relay produces it, while the socket
    keeps up; frames queue only while it is backed up (or to close it), and then ``handoff`` is set: the
    socket's sender task owns delivery until it has emptied the queue. Without one the sender task sends
    every frame from the queue.
    """

    def __init__(
        self, runtime_id: str, worker_id: str, *, after: int, max_frames: int, writer: FrameWriter | None = None
    ) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.next_seq = after + 1
        self.max_frames = max_frames
        self.writer = writer
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.handoff = asyncio.Event()
        self.repairing = False
        self.closed = False
        self.close_code: int | None = None
        self.resets = 0

    def __repr__(self) -> str:
        return (
            f"Subscriber(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r}, next_seq={self.next_seq})"
        )

    def push_event(self, seq: int, frame: str) -> None:
        """Queue the event the cursor expects; a browser too slow to keep its queue bounded gets a reset."""
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
        """Queue a frame outside the event sequence (state, reset, error)."""
        if not self.closed:
            self._push(frame)

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


@dataclass
class _Buffered:
    seq: int
    frame: str


@dataclass
class WorkerRelay:
    """The relay of one worker in this process (see the module docstring)."""

    runtime_id: str
    worker_id: str
    hub: RelayHub
    loop: asyncio.AbstractEventLoop
    last_seq: int
    subscribers: set[Subscriber] = field(default_factory=set)
    buffer: deque[_Buffered] = field(default_factory=deque)
    state: str = "connecting"
    final_seq: int | None = None
    failures: int = 0
    generation: int = 0
    upstreams_opened: int = 0
    cluster: ClusterLink | None = None
    _stream: EventStream | None = None
    _retry: asyncio.TimerHandle | None = None
    _linger: asyncio.TimerHandle | None = None
    _connected_at: float | None = None
    _closed: bool = False
    # Upstream items handed over by the reader thread, taken by the loop in one wake-up (see _hand_over).
    _inbox: deque[tuple[int, WorkerEvent | StreamReset, threading.Semaphore]] = field(default_factory=deque)
    _inbox_lock: threading.Lock = field(default_factory=threading.Lock)
    _inbox_scheduled: bool = False

    def __post_init__(self) -> None:
        self.buffer = deque(self.buffer, maxlen=int(_setting("YOI_RELAY_BUFFER_EVENTS", 4096)))

    def __repr__(self) -> str:
        return f"WorkerRelay(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r}, state={self.state!r})"

    # ------------------------------------------------------------------------------------ subscribers

    def add(self, subscriber: Subscriber) -> None:
        """Attach a browser; it gets the current state, then every event after its cursor."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.subscribers.add(subscriber)
        if self.state != "connecting":
            subscriber.push_control(state_frame(self.state))
        if subscriber.next_seq <= self.last_seq:
            self._repair(subscriber)
        self._maybe_finish(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        """Detach a browser; the upstream closes a little after the last one leaves."""
        subscriber.closed = True
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        if not self.subscribers and not self._closed and self._linger is None:
            linger = _setting("YOI_RELAY_LINGER_SECONDS", 2.0)
            self._linger = self.loop.call_later(linger, self.close)

    def _broadcast(self, frame: str) -> None:
        for subscriber in self.subscribers:
            subscriber.push_control(frame)

    def _feed(self, subscriber: Subscriber, item: _Buffered) -> None:
        if subscriber.repairing or subscriber.closed or item.seq < subscriber.next_seq:
            return  # repairing: the repair reads the buffer; older: a duplicate
        if item.seq > subscriber.next_seq:
            self._repair(subscriber)  # a gap: fill it before anything later goes out
            return
        subscriber.push_event(item.seq, item.frame)
        self._maybe_finish(subscriber)

    def _maybe_finish(self, subscriber: Subscriber) -> None:
        if self.final_seq is not None and subscriber.next_seq > self.final_seq and not subscriber.repairing:
            subscriber.finish()

    # ------------------------------------------------------------------------------------ gap repair

    def _repair(self, subscriber: Subscriber) -> None:
        if not subscriber.repairing:
            subscriber.repairing = True
            self.loop.create_task(self._run_repair(subscriber))

    async def _run_repair(self, subscriber: Subscriber) -> None:
        # In steps of half a queue: thousands of missed events must not overflow the bounded queue they are
        # repairing (a slow_consumer reset for a browser that reads as fast as it is sent).
        step = max(1, subscriber.max_frames // 2)
        try:
            while subscriber.next_seq <= self.last_seq and not subscriber.closed:
                while subscriber.queue.qsize() > step and not subscriber.closed:
                    await asyncio.sleep(REPAIR_POLL)
                if subscriber.closed:
                    break
                first = self.buffer[0].seq if self.buffer else self.last_seq + 1
                if subscriber.next_seq >= first:
                    # From the buffer, synchronously: no event can slip in between.
                    offset = subscriber.next_seq - first
                    for item in list(itertools.islice(self.buffer, offset, offset + step)):
                        subscriber.push_event(item.seq, item.frame)
                    continue
                await self._catch_up(subscriber, until=min(first - 1, subscriber.next_seq + step - 1))
        except Exception:
            logger.exception("workers.relay.repair_failed", extra=self._ids())
            subscriber.push_control(reset_frame("history_unavailable", self.last_seq + 1))
            subscriber.next_seq = self.last_seq + 1
        finally:
            subscriber.repairing = False
        self._maybe_finish(subscriber)

    async def _catch_up(self, subscriber: Subscriber, *, until: int) -> None:
        """Fetch ``subscriber.next_seq .. until`` from the runtime (older than the buffer)."""
        start = subscriber.next_seq
        try:
            items = await asyncio.to_thread(self._fetch, after=start - 1, until=until)
        except YoiError as error:
            logger.info("workers.relay.catch_up_failed", extra={**self._ids(), "code": error.code})
            items = []
        for item in items:
            if isinstance(item, StreamReset):
                if item.earliest_seq > subscriber.next_seq:
                    subscriber.push_control(reset_frame(item.reason, item.earliest_seq))
                    subscriber.next_seq = item.earliest_seq
            elif item.seq == subscriber.next_seq:
                subscriber.push_event(item.seq, event_frame(item))
        if subscriber.next_seq == start:
            # The runtime could not give the missing events: say so, and go on from what the buffer has.
            resume = self.buffer[0].seq if self.buffer else self.last_seq + 1
            subscriber.push_control(reset_frame("history_unavailable", resume))
            subscriber.next_seq = resume

    def _fetch(self, *, after: int, until: int) -> list[WorkerEvent | StreamReset]:
        """A short second stream from the runtime, read up to seq ``until`` (runs on a worker thread)."""
        items: list[WorkerEvent | StreamReset] = []
        try:
            stream = registry.call(self.runtime_id, lambda handle: handle.open_events(self.worker_id, after=after))
            watchdog = threading.Timer(CATCH_UP_TIMEOUT, stream.close)
            watchdog.start()
            try:
                with metrics.relay_upstream(self.runtime_id):
                    for item in stream:
                        items.append(item)
                        if isinstance(item, WorkerEvent) and (item.seq >= until or item.event == FINAL_EVENT):
                            break
            finally:
                watchdog.cancel()
                stream.close()
        except YoiError:
            if not items:
                raise
        finally:
            close_old_connections()
        return items

    # ------------------------------------------------------------------------------------ upstream

    def start(self) -> None:
        """Begin relaying: open the upstream, or in cluster mode compete for it (see workers.cluster)."""
        if cluster_enabled():
            self.cluster = ClusterLink(self)
            self.cluster.begin()
        else:
            self.open_upstream()

    def open_upstream(self) -> None:
        """Open the upstream (on its own thread), resuming after ``last_seq``."""
        self._retry = None
        if self._closed or self.final_seq is not None or (self.cluster is not None and not self.cluster.leader):
            return
        self.generation += 1
        self.upstreams_opened += 1
        generation, after = self.generation, self.last_seq
        thread = threading.Thread(
            target=self._read_upstream, args=(generation, after), name="relay-upstream", daemon=True
        )
        thread.start()

    def _read_upstream(self, generation: int, after: int) -> None:
        """The upstream thread: open, read every item, report how it ended; never touches relay state."""
        error: YoiError | None = None
        try:
            stream = registry.call(self.runtime_id, lambda handle: handle.open_events(self.worker_id, after=after))
            self._to_loop(self._on_connected, generation, stream)
            frames = int(_setting("YOI_RELAY_SUBSCRIBER_FRAMES", 2048))
            in_flight = threading.Semaphore(max(1, min(MAX_IN_FLIGHT, frames // 8)))
            with metrics.relay_upstream(self.runtime_id):
                for item in stream:
                    while not in_flight.acquire(timeout=IN_FLIGHT_POLL):
                        if self._closed or generation != self.generation or self.loop.is_closed():
                            stream.close()  # closed, replaced or its loop gone: nobody wants the rest
                            return
                    self._hand_over(generation, item, in_flight)
        except YoiError as exc:
            error = exc
        except Exception:
            logger.exception("workers.relay.upstream_crashed", extra=self._ids())
            error = RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=self.worker_id)
        finally:
            close_old_connections()
        self._to_loop(self._on_upstream_end, generation, error)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop is gone (process shutting down) and nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)

    def _on_connected(self, generation: int, stream: EventStream) -> None:
        if generation != self.generation or self._closed:
            stream.close()
            return
        self._stream = stream
        self._connected_at = self.loop.time()
        self._set_state("connected")

    def _hand_over(self, generation: int, item: WorkerEvent | StreamReset, in_flight: threading.Semaphore) -> None:
        """Give the loop an upstream item (reader thread). The loop is woken once for all the items that
        queue up before it runs, not once per event: a wake-up is a self-pipe write and read."""
        with self._inbox_lock:
            self._inbox.append((generation, item, in_flight))
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        self._to_loop(self._take_inbox)

    def _take_inbox(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._inbox_scheduled = False
        for generation, item, in_flight in items:
            in_flight.release()
            self._on_item(generation, item)

    def _on_item(self, generation: int, item: WorkerEvent | StreamReset) -> None:
        if generation != self.generation or self._closed:
            return
        self.failures = 0  # the upstream delivers: whatever failed before is over
        if isinstance(item, StreamReset):
            self._on_reset(item)
            return
        if item.seq > self.last_seq:
            frame = event_frame(item)
            self.accept(item.seq, frame, item.event)
            if self.cluster is not None:
                self.cluster.publish_event(item.seq, frame, item.event)

    def accept(self, seq: int, frame: str, kind: str) -> None:
        """Take one event (from the upstream, or from the cluster's leader) and feed every subscriber."""
        if seq <= self.last_seq or self._closed:
            return  # a resumed upstream, or a second leader, repeating what we have
        if self.state == "connecting":
            self._set_state("connected")  # a follower learns the upstream is up from its first event
        if seq != self.last_seq + 1:
            self.buffer.clear()  # continuity broken: the buffer restarts here; subscribers repair the gap
        self.last_seq = seq
        metrics.relay_event()
        buffered = _Buffered(seq, frame)
        self.buffer.append(buffered)  # bounded: the oldest event falls out
        if kind == FINAL_EVENT:
            self.final_seq = seq
        for subscriber in list(self.subscribers):
            self._feed(subscriber, buffered)

    def _on_reset(self, reset: StreamReset) -> None:
        """The runtime no longer has what we asked for: everyone behind ``earliest_seq`` is told."""
        self.buffer.clear()
        self.last_seq = max(self.last_seq, reset.earliest_seq - 1)
        for subscriber in self.subscribers:
            if subscriber.next_seq < reset.earliest_seq:
                subscriber.push_control(reset_frame(reset.reason, reset.earliest_seq))
                subscriber.next_seq = reset.earliest_seq

    def _on_upstream_end(self, generation: int, error: YoiError | None) -> None:
        if generation != self.generation or self._closed:
            return
        self._stream = None
        if self.final_seq is not None:
            return  # the worker exited: nothing more will ever come
        if self._connected_at is not None and self.loop.time() - self._connected_at >= STABLE_CONNECTION:
            self.failures = 0  # it was up for a good while: this is a fresh drop, not a failing runtime
        self._connected_at = None
        if isinstance(error, TERMINAL_ERRORS):
            frame, code = error_frame(error)
            for subscriber in list(self.subscribers):
                subscriber.push_control(frame)
                subscriber.finish(code)
            self.close()
            return
        reason = error.code if error is not None else "stream_ended"
        self.failures += 1
        delay = self._backoff(error)
        self._set_state("unavailable" if self.failures >= UNAVAILABLE_AFTER else "reconnecting", reason, delay)
        self._retry = self.loop.call_later(delay, self.open_upstream)
        metrics.relay_reconnect(self.runtime_id)
        logger.info("workers.relay.upstream_lost", extra={**self._ids(), "code": reason, "retry_in": delay})

    def _backoff(self, error: YoiError | None) -> float:
        base = _setting("YOI_RELAY_BACKOFF_BASE", 0.5)
        cap = _setting("YOI_RELAY_BACKOFF_CAP", 15.0)
        ceiling = min(cap, base * 2 ** (self.failures - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        retry_after = getattr(error, "retry_after", None)
        return max(delay, float(retry_after)) if retry_after else delay

    def _set_state(self, state: str, reason: str | None = None, retry_in: float | None = None) -> None:
        if state == self.state and state == "connected":
            return
        self.state = state
        frame = state_frame(state, reason=reason, retry_in=retry_in)
        self._broadcast(frame)
        if self.cluster is not None:
            self.cluster.publish_state(frame)

    def mirror_state(self, frame: str) -> None:
        """An upstream transition told by the cluster's leader."""
        state = json.loads(frame).get("upstream")
        if isinstance(state, str) and not (state == self.state == "connected"):
            self.state = state
            self._broadcast(frame)

    def stop_upstream(self) -> None:
        """Close the upstream without closing the relay (cluster mode: the lease went to another process)."""
        self.generation += 1
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        """Stop the upstream and forget this relay; remaining subscribers are closed."""
        if self._closed:
            return
        self._closed = True
        self.generation += 1
        if self.cluster is not None:
            self.cluster.close()
        for handle in (self._retry, self._linger):
            if handle is not None:
                handle.cancel()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        for subscriber in list(self.subscribers):
            subscriber.finish(1001)
        self.subscribers.clear()
        self.hub.forget(self)
        logger.info("workers.relay.closed", extra=self._ids())

    def _ids(self) -> dict[str, str]:
        return {"runtime_id": self.runtime_id, "worker_id": self.worker_id}


class RelayHub:
    """Every relay of this process, by ``(runtime_id, worker_id)``; bound to the event loop it runs on."""

    def __init__(self) -> None:
        self._relays: dict[tuple[str, str], WorkerRelay] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"RelayHub(relays={len(self._relays)})"

    def relays(self) -> Iterable[WorkerRelay]:
        """The live relays (for tests and diagnostics)."""
        return list(self._relays.values())

    def subscribe(
        self, runtime_id: str, worker_id: str, *, after: int, writer: FrameWriter | None = None
    ) -> Subscriber:
        """Attach a browser to the worker's relay (creating it and its upstream if it is the first); with a
        ``writer`` its frames are written to the socket directly while it keeps up."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Relays of another (finished) loop cannot be reused: end their upstreams and forget them.
            for stale in list(self._relays.values()):
                with contextlib.suppress(Exception):
                    stale.close()
            self._relays.clear()
            self._loop = loop
        max_frames = int(_setting("YOI_RELAY_SUBSCRIBER_FRAMES", 2048))
        subscriber = Subscriber(runtime_id, worker_id, after=after, max_frames=max_frames, writer=writer)
        key = (runtime_id, worker_id)
        relay = self._relays.get(key)
        if relay is None:
            relay = WorkerRelay(runtime_id=runtime_id, worker_id=worker_id, hub=self, loop=loop, last_seq=after)
            self._relays[key] = relay
            relay.add(subscriber)
            relay.start()
        else:
            relay.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Detach a browser."""
        relay = self._relays.get((subscriber.runtime_id, subscriber.worker_id))
        if relay is not None:
            relay.remove(subscriber)

    def forget(self, relay: WorkerRelay) -> None:
        """Drop a closed relay."""
        key = (relay.runtime_id, relay.worker_id)
        if self._relays.get(key) is relay:
            del self._relays[key]

    def reset(self) -> None:
        """Close every relay (tests)."""
        for relay in list(self._relays.values()):
            relay.close()
        self._relays.clear()
        self._loop = None


relay_hub = RelayHub()
metrics.count_relay_subscribers(lambda: sum(len(relay.subscribers) for relay in relay_hub.relays()))
