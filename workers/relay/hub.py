"""The owner of each watched worker's stream in this process, and the hub that finds it.

A ``WorkerRelay`` joins the three parts of one stream and is the only thing that changes them: its
``Upstream`` (the runtime connection), its ``ReplayLog`` (what was relayed; catch-up) and its
``Subscriber`` set (the browsers). Everything runs on the event loop, so nothing here needs a lock. It is
started by the first subscriber and closed shortly after the last one leaves. In cluster mode
(``workers.cluster``) only the lease holder's relay runs its upstream; the others take its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Iterable

from runtimes import metrics
from runtimes.errors import YoiError
from runtimes.types import StreamReset
from workers.cluster import ClusterLink, cluster_enabled
from workers.frames import error_frame, event_frame, state_frame
from workers.relay.replay import Logged, ReplayLog
from workers.relay.subscriber import FrameWriter, Subscriber
from workers.relay.upstream import Item, Upstream, UpstreamState, relay_setting

logger = logging.getLogger(__name__)


class WorkerRelay:
    """The relay of one worker in this process (see the module docstring)."""

    def __init__(
        self, runtime_id: str, worker_id: str, *, hub: RelayHub, loop: asyncio.AbstractEventLoop, last_seq: int
    ) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.hub = hub
        self.loop = loop
        self.log = ReplayLog(last_seq=last_seq, capacity=int(relay_setting("YOI_RELAY_BUFFER_EVENTS", 4096)))
        self.upstream = Upstream(self, runtime_id, worker_id)
        self.subscribers: set[Subscriber] = set()
        # What browsers were last told of the upstream (a follower's is the cluster leader's).
        self.state = UpstreamState.CONNECTING
        self.cluster: ClusterLink | None = None
        self._catch_ups: set[asyncio.Task[None]] = set()
        self._linger: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"WorkerRelay(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r}, state={self.state!r})"

    # Views for tests and diagnostics.
    @property
    def last_seq(self) -> int:
        """The last seq relayed."""
        return self.log.last_seq

    @property
    def final_seq(self) -> int | None:
        """The worker's final seq, once its last event came."""
        return self.log.final_seq

    @property
    def buffer(self) -> deque[Logged]:
        """The replay log's buffered events."""
        return self.log.buffer

    @property
    def upstreams_opened(self) -> int:
        """How many times the upstream was opened (or tried to be)."""
        return self.upstream.opened

    @property
    def failures(self) -> int:
        """Failed upstream attempts in a row."""
        return self.upstream.failures

    # ------------------------------------------------------------------------------------ subscribers

    def add(self, subscriber: Subscriber) -> None:
        """Attach a browser; it gets the current state, then every event after its cursor."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.subscribers.add(subscriber)
        if self.state != UpstreamState.CONNECTING:
            subscriber.push_control(state_frame(self.state))
        if subscriber.next_seq <= self.log.last_seq:
            self._catch_up(subscriber)
        self._maybe_finish(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        """Detach a browser; the upstream closes a little after the last one leaves."""
        subscriber.closed = True
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        if not self.subscribers and not self._closed and self._linger is None:
            self._linger = self.loop.call_later(relay_setting("YOI_RELAY_LINGER_SECONDS", 2.0), self.close)

    def _feed(self, subscriber: Subscriber, logged: Logged) -> None:
        if subscriber.catching_up or subscriber.closed or logged.seq < subscriber.next_seq:
            return  # catching up: the catch-up reads the log; older: a duplicate
        if logged.seq > subscriber.next_seq:
            self._catch_up(subscriber)  # a gap: fill it before anything later goes out
            return
        subscriber.push_event(logged.seq, logged.frame)
        self._maybe_finish(subscriber)

    def _catch_up(self, subscriber: Subscriber) -> None:
        if subscriber.catching_up:
            return
        subscriber.catching_up = True  # from now: live events wait for the catch-up, which reads the log
        task = self.loop.create_task(self._run_catch_up(subscriber))
        self._catch_ups.add(task)
        task.add_done_callback(self._catch_ups.discard)

    async def _run_catch_up(self, subscriber: Subscriber) -> None:
        await self.log.catch_up(subscriber, self.upstream.fetch)
        self._maybe_finish(subscriber)

    def _maybe_finish(self, subscriber: Subscriber) -> None:
        final = self.log.final_seq
        if final is not None and subscriber.next_seq > final and not subscriber.catching_up:
            subscriber.finish()

    def _broadcast(self, frame: str) -> None:
        for subscriber in self.subscribers:
            subscriber.push_control(frame)

    # ------------------------------------------------------------------------------------ from the upstream

    def resume_after(self) -> int:
        """Where a (re)opened upstream resumes."""
        return self.log.last_seq

    def done(self) -> bool:
        """Nothing more will come: the worker's final event was relayed, or the relay closed."""
        return self._closed or self.log.final_seq is not None

    def upstream_item(self, item: Item) -> None:
        """One item of the runtime's stream, in the loop turn it arrived in."""
        if isinstance(item, StreamReset):
            self._on_reset(item)
            return
        if item.seq > self.log.last_seq:
            frame = event_frame(item)
            self.accept(item.seq, frame, item.event)
            if self.cluster is not None:
                self.cluster.publish_event(item.seq, frame, item.event)

    def upstream_state(self, state: UpstreamState, reason: str | None, retry_in: float | None) -> None:
        """An upstream transition: told to every browser (and to the cluster's followers)."""
        self.state = state
        frame = state_frame(state, reason=reason, retry_in=retry_in)
        self._broadcast(frame)
        if self.cluster is not None:
            self.cluster.publish_state(frame)

    def behind(self) -> Awaitable[None] | None:
        """Something to wait for before the next turn of a burst, while a browser that has kept up so far has
        more than half its queue waiting (a reader momentarily slower than the runtime), else None.

        Each browser may hold the burst back for ``HOLD_SECONDS`` in all; past that it is treated as slow
        (its queue fills and it gets a reset), so a browser that stopped reading delays the others once and
        briefly, never for good.
        """
        lagging = [
            subscriber
            for subscriber in self.subscribers
            if subscriber.hold_left > 0
            and not (subscriber.resets or subscriber.closed or subscriber.catching_up)
            and subscriber.queue.qsize() > subscriber.max_frames // 2
        ]
        return self._hold_for(lagging) if lagging else None

    async def _hold_for(self, lagging: list[Subscriber]) -> None:
        loop = self.loop
        for subscriber in lagging:
            if subscriber.hold_left <= 0 or subscriber.closed:
                continue
            started = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(subscriber.hold_left):
                    await subscriber.queue.room(subscriber.max_frames // 4)
            subscriber.hold_left -= loop.time() - started

    def upstream_failed(self, error: YoiError) -> None:
        """Retrying cannot help: every browser gets the error and its socket closes."""
        frame, code = error_frame(error)
        for subscriber in list(self.subscribers):
            subscriber.push_control(frame)
            subscriber.finish(code)
        self.close()

    def accept(self, seq: int, frame: str, kind: str) -> None:
        """Take one event (from the upstream, or from the cluster's leader) and feed every subscriber."""
        if self._closed:
            return
        if self.state is UpstreamState.CONNECTING:
            self.upstream_state(UpstreamState.CONNECTED, None, None)  # a follower learns it from an event
        logged = self.log.append(seq, frame, kind)
        if logged is None:
            return
        metrics.relay_event()
        for subscriber in list(self.subscribers):
            self._feed(subscriber, logged)

    def _on_reset(self, reset: StreamReset) -> None:
        """The runtime no longer has what we asked for: everyone behind ``earliest_seq`` is told."""
        self.log.skip_to(reset.earliest_seq)
        for subscriber in self.subscribers:
            if subscriber.next_seq < reset.earliest_seq:
                subscriber.skip_to(reset.earliest_seq, reset.reason)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin relaying: open the upstream, or in cluster mode compete for it (see workers.cluster)."""
        if cluster_enabled():
            self.cluster = ClusterLink(self)
            self.cluster.begin()
        else:
            self.open_upstream()

    def open_upstream(self) -> None:
        """Run the upstream (cluster mode: this process took the lease)."""
        if not self.done():
            self.upstream.start()

    def stop_upstream(self) -> None:
        """Stop the upstream without closing the relay (cluster mode: the lease went to another process)."""
        self.upstream.stop()

    def mirror_state(self, frame: str) -> None:
        """An upstream transition told by the cluster's leader."""
        try:
            state = UpstreamState(json.loads(frame).get("upstream"))
        except ValueError:
            return
        if not (state == self.state == UpstreamState.CONNECTED):
            self.state = state
            self._broadcast(frame)

    def close(self) -> None:
        """Stop the upstream and forget this relay; remaining subscribers are closed."""
        if self._closed:
            return
        self._closed = True
        self.upstream.stop()
        if self.cluster is not None:
            self.cluster.close()
        if self._linger is not None:
            self._linger.cancel()
        for task in list(self._catch_ups):
            task.cancel()
        for subscriber in list(self.subscribers):
            subscriber.finish(1001)
        self.subscribers.clear()
        self.hub.forget(self)
        logger.info("workers.relay.closed", extra={"runtime_id": self.runtime_id, "worker_id": self.worker_id})


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
        max_frames = int(relay_setting("YOI_RELAY_SUBSCRIBER_FRAMES", 2048))
        subscriber = Subscriber(runtime_id, worker_id, after=after, max_frames=max_frames, writer=writer)
        key = (runtime_id, worker_id)
        relay = self._relays.get(key)
        if relay is None:
            relay = WorkerRelay(runtime_id, worker_id, hub=self, loop=loop, last_seq=after)
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
