"""The event relay (docs/architecture.md §4): one upstream per watched worker, fan-out, cursors, repair,
reconnects.

Two kinds of upstream: the embedded runtime (real worker semantics, in-process), and a scripted fake
handle whose streams the test feeds item by item (duplicates, gaps, failures, resets on demand).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.errors import (
    RuntimeDisabled,
    RuntimeNotFound,
    RuntimeTimeout,
    RuntimeUnreachable,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.base import EventSink, RuntimeHandle
from runtimes.models import Runtime
from runtimes.types import StreamReset, WorkerEvent
from tests.workers.ws_helpers import (
    Frame,
    create_worker,
    events_path,
    has_seq,
    is_event,
    open_socket,
    queued_frames,
    runtime_handle,
    send_input,
    seqs,
    stop_worker,
    streams_open,
    subscriber_frames_until,
    subscriber_frames_until_closed,
    wait_until,
    worker_settled,
)
from workers.relay import Subscriber, WorkerRelay, relay_hub
from workers.relay.upstream import _Collector, _Connection
from workers.sockets import live_sockets

pytestmark = pytest.mark.django_db(transaction=True)

Item = WorkerEvent | StreamReset


@pytest.fixture(autouse=True)
async def relay_settings(settings: SettingsWrapper) -> AsyncIterator[SettingsWrapper]:
    """Fast linger and reconnects, no cluster mode; every relay closed at the end, on the test's loop."""
    settings.YOI_RELAY_LINGER_SECONDS = 0.2
    settings.YOI_RELAY_BACKOFF_BASE = 0.01
    settings.YOI_RELAY_BACKOFF_CAP = 0.05
    settings.REDIS_URL = ""
    try:
        yield settings
    finally:
        live_sockets.reset()
        relay_hub.reset()


def the_relay() -> WorkerRelay:
    """The one relay of this process."""
    relays = list(relay_hub.relays())
    assert len(relays) == 1, relays
    return relays[0]


def no_relay() -> bool:
    return not list(relay_hub.relays())


def events_only(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame["type"] == "event"]


def of_type(kind: str, frames: list[Frame | None] | list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame is not None and frame["type"] == kind]


# ------------------------------------------------------------------------------------------- fake upstream


class FakeStream:
    """One scripted live stream: the test puts items (or an error to end it with, or ``None`` to end it);
    each reaches the sink on the loop, as a real stream's bytes would."""

    def __init__(self, after: int | None, *, main: bool, sink: EventSink) -> None:
        self.after = after
        self.main = main  # the relay's upstream (not a catch-up)
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._closed = False

    def __repr__(self) -> str:
        return f"FakeStream(after={self.after}, main={self.main}, closed={self.closed})"

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: Item | YoiError | None) -> None:
        self._loop.call_soon_threadsafe(self._deliver, item)

    def _deliver(self, item: Item | YoiError | None) -> None:
        if self._closed:
            return
        if item is None or isinstance(item, YoiError):
            self._closed = True
            self._sink.event_end(item)
            return
        self._sink.event_item(item)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True


class FakeHandle:
    """A runtime with one worker: a durable log, history that may expire, streams the test drives."""

    kind = "remote"

    def __init__(self, runtime_id: str = "fake", worker_id: str = "w1") -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self.log: list[WorkerEvent] = []
        self.earliest = 1  # events before this seq have expired
        self.streams: list[FakeStream] = []
        self.open_errors: list[YoiError] = []  # raised by the next open_events calls, in order

    def __repr__(self) -> str:
        return f"FakeHandle(runtime_id={self.runtime_id!r})"

    def event(self, seq: int, kind: str = "text_delta") -> WorkerEvent:
        return WorkerEvent(self.runtime_id, self.worker_id, seq, kind, {"i": seq}, ts=1000.0 + seq)

    async def watch_events(self, worker_id: str, *, after: int | None, sink: EventSink) -> FakeStream:
        with self._lock:
            if self.open_errors:
                raise self.open_errors.pop(0)
            if worker_id != self.worker_id:
                raise WorkerNotFound(runtime_id=self.runtime_id, worker_id=worker_id)
            stream = FakeStream(after, main=not isinstance(sink, _Collector), sink=sink)
            if after is not None:
                if after + 1 < self.earliest:
                    stream.put(StreamReset(reason="history_expired", earliest_seq=self.earliest))
                for event in self.log:
                    if event.seq > after and event.seq >= self.earliest:
                        stream.put(event)
            self.streams.append(stream)
            return stream

    def append(self, count: int = 1, kind: str = "text_delta") -> list[WorkerEvent]:
        """Log events without sending them on any open stream (what a dropped connection never saw)."""
        with self._lock:
            events = [self.event(len(self.log) + 1 + i, kind) for i in range(count)]
            self.log.extend(events)
            return events

    def emit(self, count: int = 1, kind: str = "text_delta") -> list[WorkerEvent]:
        """Log events and send them live on every open stream."""
        with self._lock:
            events = [self.event(len(self.log) + 1 + i, kind) for i in range(count)]
            self.log.extend(events)
            for stream in self.streams:
                if not stream.closed:
                    for event in events:
                        stream.put(event)
            return events

    def upstream(self) -> FakeStream:
        """The relay's current upstream."""
        with self._lock:
            mains = [s for s in self.streams if s.main and not s.closed]
        assert mains, self.streams
        return mains[-1]

    def opened_after(self, *, main: bool) -> list[int | None]:
        """The cursors the relay opened streams with (its upstreams, or its catch-ups)."""
        with self._lock:
            return [s.after for s in self.streams if s.main is main]


class FakeRegistry:
    """Stands in for ``runtimes.registry.registry`` inside the relay: every call goes to one handle."""

    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle
        self.calls = 0

    async def call_async(self, runtime_id: str, operation: Callable[[Any], Awaitable[Any]], **_: Any) -> Any:
        self.calls += 1
        if runtime_id != self.handle.runtime_id:
            raise RuntimeNotFound(runtime_id=runtime_id)
        return await operation(self.handle)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeHandle:
    """A fake runtime ``fake`` with worker ``w1``, reached by the relay instead of the real registry."""
    handle = FakeHandle()
    monkeypatch.setattr("workers.relay.upstream.registry", FakeRegistry(handle))
    return handle


async def connected(subscriber: Subscriber) -> list[Frame]:
    """Read the subscriber's frames until the upstream is reported connected."""
    return await subscriber_frames_until(subscriber, lambda f: f == {"type": "state", "upstream": "connected"})


# ------------------------------------------------------------------------------------------- embedded upstream


async def streams_open_is(handle: RuntimeHandle, count: int) -> bool:
    return await streams_open(handle) == count


async def test_two_subscribers_share_one_upstream_and_it_closes_after_the_linger(
    embedded_runtime: Runtime,
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "fan", profile="builtin:burst", initial_input=None, options={"count": 50})
    first = relay_hub.subscribe("local", "fan", after=0)
    second = relay_hub.subscribe("local", "fan", after=0)
    await send_input(handle, "fan", "go")
    frames = [await subscriber_frames_until(s, is_event("run_end")) for s in (first, second)]
    relay = the_relay()
    assert relay.upstreams_opened == 1
    assert await streams_open(handle) == 1
    expected = list(range(1, seqs(frames[0])[-1] + 1))
    assert seqs(frames[0]) == seqs(frames[1]) == expected
    assert len(expected) >= 50
    assert events_only(frames[0]) == events_only(frames[1])

    relay_hub.unsubscribe(first)
    assert the_relay() is relay  # one browser still watches
    relay_hub.unsubscribe(second)
    await wait_until(no_relay, message="relay closed after the linger")
    await wait_until(lambda: streams_open_is(handle, 0), message="upstream closed on the runtime")


async def test_a_subscriber_returning_within_the_linger_keeps_the_upstream(
    embedded_runtime: Runtime, relay_settings: SettingsWrapper
) -> None:
    relay_settings.YOI_RELAY_LINGER_SECONDS = 60
    handle = await runtime_handle()
    await create_worker(handle, "back", initial_input=None)
    first = relay_hub.subscribe("local", "back", after=0)
    await subscriber_frames_until(first, has_seq(1))
    relay = the_relay()
    relay_hub.unsubscribe(first)
    again = relay_hub.subscribe("local", "back", after=1)
    await send_input(handle, "back", "hello")
    frames = await subscriber_frames_until(again, is_event("text_done"))
    assert the_relay() is relay and relay.upstreams_opened == 1
    assert seqs(frames) == list(range(2, 8))


async def test_a_late_subscriber_gets_missed_events_from_the_buffer(embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "late", profile="builtin:burst", initial_input=None, options={"count": 30})
    early = relay_hub.subscribe("local", "late", after=0)
    await send_input(handle, "late", "go")
    await subscriber_frames_until(early, is_event("run_end"))
    last = the_relay().last_seq
    late = relay_hub.subscribe("local", "late", after=5)
    frames = await subscriber_frames_until(late, has_seq(last))
    assert seqs(frames) == list(range(6, last + 1))
    assert await streams_open(handle) == 1  # no catch-up stream was needed

    await send_input(handle, "late", "again")
    more = [await subscriber_frames_until(s, is_event("run_end")) for s in (early, late)]
    assert seqs(more[0]) == seqs(more[1]) == list(range(last + 1, seqs(more[0])[-1] + 1))
    assert the_relay().upstreams_opened == 1


async def test_a_late_subscriber_behind_the_buffer_catches_up_from_the_runtime(
    embedded_runtime: Runtime, relay_settings: SettingsWrapper
) -> None:
    relay_settings.YOI_RELAY_BUFFER_EVENTS = 5
    handle = await runtime_handle()
    await create_worker(handle, "old", profile="builtin:burst", initial_input=None, options={"count": 30})
    early = relay_hub.subscribe("local", "old", after=0)
    await send_input(handle, "old", "go")
    await subscriber_frames_until(early, is_event("run_end"))
    relay = the_relay()
    assert len(relay.buffer) == 5
    last = relay.last_seq
    late = relay_hub.subscribe("local", "old", after=2)
    frames = await subscriber_frames_until(late, has_seq(last))
    assert seqs(frames) == list(range(3, last + 1))
    assert of_type("reset", frames) == []
    await wait_until(lambda: streams_open_is(handle, 1), message="the catch-up stream closed")
    assert relay.upstreams_opened == 1


async def test_a_late_subscriber_catches_up_while_events_keep_coming(
    embedded_runtime: Runtime, relay_settings: SettingsWrapper
) -> None:
    relay_settings.YOI_RELAY_BUFFER_EVENTS = 5
    handle = await runtime_handle()
    options = {"count": 120, "rate": 600}
    await create_worker(handle, "busy", profile="builtin:burst", initial_input=None, options=options)
    early = relay_hub.subscribe("local", "busy", after=0)
    await send_input(handle, "busy", "go")
    head = await subscriber_frames_until(early, has_seq(20))
    late = relay_hub.subscribe("local", "busy", after=2)
    tails = [await subscriber_frames_until(s, is_event("run_end")) for s in (early, late)]
    early_seqs = seqs(head + tails[0])
    assert early_seqs == list(range(1, early_seqs[-1] + 1))
    assert seqs(tails[1]) == list(range(3, early_seqs[-1] + 1))


async def test_a_finished_workers_relay_closes_its_subscribers_after_worker_exited(
    embedded_runtime: Runtime,
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "bye")
    await worker_settled(handle, "bye", transcript_len=2)
    watching = relay_hub.subscribe("local", "bye", after=0)
    await subscriber_frames_until(watching, has_seq(7))
    await stop_worker(handle, "bye")
    frames = await subscriber_frames_until_closed(watching)
    assert watching.close_code == 1000
    assert events_only(frames)[-1]["event"] == "worker_exited"
    relay = the_relay()
    assert relay.final_seq == seqs(frames)[-1]

    # Joining the finished relay: the whole history from the buffer, then the close.
    joining = relay_hub.subscribe("local", "bye", after=0)
    replay = await subscriber_frames_until_closed(joining)
    assert seqs(replay) == list(range(1, relay.final_seq + 1))
    assert joining.close_code == 1000
    assert relay.upstreams_opened == 1

    relay_hub.unsubscribe(watching)
    relay_hub.unsubscribe(joining)
    await wait_until(no_relay, message="relay closed after the linger")
    await wait_until(lambda: streams_open_is(handle, 0), message="no stream left on the runtime")


# ------------------------------------------------------------------------------------------- scripted upstream


async def test_duplicates_from_the_upstream_are_dropped(fake: FakeHandle) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    one, two, three = (fake.event(seq) for seq in (1, 2, 3))
    fake.log.extend([one, two, three])
    for item in (one, two, two, one, three, two):
        fake.upstream().put(item)
    frames = await subscriber_frames_until(subscriber, has_seq(3))
    assert seqs(frames) == [1, 2, 3]

    relay = the_relay()
    assert relay.upstream.current is not None
    relay.upstream.current.event_item(two)  # the current upstream repeating itself
    _Connection(relay.upstream).event_item(fake.event(4))  # a stream that is not the current one: ignored
    assert subscriber.queue.empty()
    assert relay.last_seq == 3
    fake.emit()
    frames = await subscriber_frames_until(subscriber, has_seq(4))
    assert seqs(frames) == [4]


async def test_a_gap_is_repaired_from_the_runtime_before_later_events(fake: FakeHandle) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    fake.emit(2)
    await subscriber_frames_until(subscriber, has_seq(2))
    fake.append(2)  # 3 and 4: logged, but the upstream skips them
    (five,) = fake.append()
    fake.upstream().put(five)
    frames = await subscriber_frames_until(subscriber, has_seq(5))
    assert seqs(frames) == [3, 4, 5]
    assert fake.opened_after(main=False) == [2]  # one catch-up, from the subscriber's cursor
    fake.emit()
    assert seqs(await subscriber_frames_until(subscriber, has_seq(6))) == [6]
    assert of_type("reset", frames) == []


async def test_a_gap_the_runtime_cannot_fill_is_told_as_a_reset(fake: FakeHandle) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    fake.emit(2)
    await subscriber_frames_until(subscriber, has_seq(2))
    fake.append(2)
    fake.open_errors.append(RuntimeUnreachable(runtime_id="fake"))  # the catch-up fails
    (five,) = fake.append()
    fake.upstream().put(five)
    frames = await subscriber_frames_until(subscriber, has_seq(5))
    assert frames == [
        {"type": "reset", "reason": "history_unavailable", "earliest_seq": 5},
        events_only(frames)[0],
    ]
    assert seqs(frames) == [5]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (RuntimeUnreachable(runtime_id="fake"), "runtime_unreachable"),
        (RuntimeTimeout(runtime_id="fake"), "runtime_timeout"),
        (None, "stream_ended"),
    ],
)
async def test_an_upstream_failure_reconnects_without_losing_or_repeating_events(
    fake: FakeHandle, failure: YoiError | None, reason: str
) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    fake.emit(3)
    await subscriber_frames_until(subscriber, has_seq(3))
    fake.append(2)  # logged while the connection was dying: the upstream never sends them
    fake.upstream().put(failure)
    frames = await subscriber_frames_until(subscriber, has_seq(5))
    fake.emit()
    frames += await subscriber_frames_until(subscriber, has_seq(6))

    states = of_type("state", frames)
    assert [s["upstream"] for s in states] == ["reconnecting", "connected"]
    assert states[0]["reason"] == reason
    assert isinstance(states[0]["retry_in"], float | int) and 0 <= states[0]["retry_in"] <= 0.05
    assert set(states[0]) == {"type", "upstream", "reason", "retry_in"}
    assert frames.index(states[1]) < frames.index(events_only(frames)[0])
    assert seqs(frames) == [4, 5, 6]
    assert fake.opened_after(main=True) == [0, 3]  # resumed after the last seq it delivered
    assert the_relay().upstreams_opened == 2


async def test_three_failures_in_a_row_are_reported_unavailable(fake: FakeHandle) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    fake.emit()
    await subscriber_frames_until(subscriber, has_seq(1))
    fake.open_errors += [RuntimeUnreachable(runtime_id="fake"), RuntimeUnreachable(runtime_id="fake")]
    fake.upstream().put(RuntimeUnreachable(runtime_id="fake"))
    frames = await connected(subscriber)
    assert [f["upstream"] for f in of_type("state", frames)] == [
        "reconnecting",
        "reconnecting",
        "unavailable",
        "connected",
    ]
    assert all(f["reason"] == "runtime_unreachable" for f in frames[:3])
    fake.emit()
    frames = await subscriber_frames_until(subscriber, has_seq(2))
    assert seqs(frames) == [2]
    assert fake.opened_after(main=True) == [0, 1]  # the two failed opens never made a stream
    relay = the_relay()
    assert relay.failures == 0 and relay.upstreams_opened == 4


@pytest.mark.parametrize(
    ("error", "close_code"),
    [
        (WorkerNotFound(runtime_id="fake", worker_id="w1"), 4404),
        (RuntimeNotFound(runtime_id="fake"), 4404),
        (RuntimeDisabled(runtime_id="fake"), 4503),
    ],
)
async def test_a_terminal_error_mid_stream_closes_every_subscriber(
    fake: FakeHandle, error: YoiError, close_code: int
) -> None:
    first = relay_hub.subscribe("fake", "w1", after=0)
    second = relay_hub.subscribe("fake", "w1", after=0)
    await connected(first)
    fake.emit()
    fake.upstream().put(error)
    for subscriber in (first, second):
        frames = await subscriber_frames_until_closed(subscriber)
        assert frames[-1] == {"type": "error", "error": error.to_json()}
        assert subscriber.close_code == close_code
        assert seqs(frames) == [1]
    assert no_relay()
    assert fake.opened_after(main=True) == [0]  # no reconnect after a terminal error


async def test_a_terminal_error_closes_the_browser_socket_with_its_code(
    fake: FakeHandle, user: User, embedded_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the consumer: the lookup succeeds on the embedded runtime, the relay's upstream then fails."""
    handle = await runtime_handle()
    await create_worker(handle, "w1", initial_input=None)
    fake.runtime_id = "local"
    socket_ = await open_socket(events_path("local", "w1", "after=0"), user=user)
    try:
        assert socket_.accepted
        await socket_.read_until(lambda f: f["type"] == "state")
        fake.emit()
        await socket_.read_until(has_seq(1))
        fake.upstream().put(WorkerNotFound(runtime_id="local", worker_id="w1"))
        assert await socket_.read_until_closed() == 4404
    finally:
        await socket_.disconnect()
    error = socket_.frames[-1]
    assert error["type"] == "error" and error["error"]["code"] == "worker_not_found"
    assert no_relay()


async def test_a_stream_reset_tells_only_the_subscribers_behind_it(fake: FakeHandle) -> None:
    fake.append(10)
    fake.earliest = 6
    # Subscribed in one go: all three are attached before the upstream's first item is handled.
    behind = relay_hub.subscribe("fake", "w1", after=0)
    also_behind = relay_hub.subscribe("fake", "w1", after=3)
    ahead = relay_hub.subscribe("fake", "w1", after=7)
    frames = {s: await subscriber_frames_until(s, has_seq(10)) for s in (behind, also_behind, ahead)}
    for subscriber in (behind, also_behind):
        assert of_type("reset", frames[subscriber]) == [
            {"type": "reset", "reason": "history_expired", "earliest_seq": 6}
        ]
        assert seqs(frames[subscriber]) == [6, 7, 8, 9, 10]
    assert of_type("reset", frames[ahead]) == []
    assert seqs(frames[ahead]) == [8, 9, 10]


async def test_a_catch_up_into_expired_history_is_told_as_a_reset(
    fake: FakeHandle, relay_settings: SettingsWrapper
) -> None:
    relay_settings.YOI_RELAY_BUFFER_EVENTS = 3
    fake.append(5)
    fake.earliest = 4
    watching = relay_hub.subscribe("fake", "w1", after=5)
    await connected(watching)
    fake.emit(5)
    await subscriber_frames_until(watching, has_seq(10))
    late = relay_hub.subscribe("fake", "w1", after=0)  # wants 1..10; the runtime has 4.., the buffer 8..
    frames = await subscriber_frames_until(late, has_seq(10))
    assert of_type("reset", frames) == [{"type": "reset", "reason": "history_expired", "earliest_seq": 4}]
    assert seqs(frames) == list(range(4, 11))


async def test_a_slow_subscriber_is_reset_and_the_others_get_everything(
    fake: FakeHandle, relay_settings: SettingsWrapper
) -> None:
    relay_settings.YOI_RELAY_SUBSCRIBER_FRAMES = 5
    fast = relay_hub.subscribe("fake", "w1", after=0)
    slow = relay_hub.subscribe("fake", "w1", after=0)
    await connected(fast)
    frames: list[Frame] = []
    for seq in range(1, 41):  # the fast browser takes each event as it comes; the slow one never reads
        fake.emit()
        frames += await subscriber_frames_until(fast, has_seq(seq))
    assert seqs(frames) == list(range(1, 41))
    assert of_type("reset", frames) == []

    # Each event reached both subscribers in the same step, so the slow one's queue is complete now.
    backlog = queued_frames(slow)
    assert len(backlog) <= 5
    resets = of_type("reset", backlog)
    assert resets and all(r["reason"] == "slow_consumer" for r in resets)
    assert slow.resets >= 1
    after_reset = backlog[backlog.index(resets[-1]) + 1 :]
    assert seqs([f for f in after_reset if f is not None]) == list(range(resets[-1]["earliest_seq"], 41))
    assert not slow.closed

    # The slow browser catches up with what it is sent from now on.
    fake.emit()
    assert seqs(await subscriber_frames_until(slow, has_seq(41))) == [41]
    assert seqs(await subscriber_frames_until(fast, has_seq(41))) == [41]


async def test_closing_the_relay_stops_its_upstream(fake: FakeHandle) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    upstream = fake.upstream()
    relay_hub.unsubscribe(subscriber)
    await wait_until(no_relay, message="relay closed after the linger")
    assert upstream.closed
    assert queued_frames(subscriber) == []  # it had left: nothing more was queued for it


async def test_the_relay_repr_names_ids_only(fake: FakeHandle) -> None:
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)
    text = repr(relay_hub) + repr(the_relay()) + repr(subscriber) + repr(list(relay_hub.relays()))
    assert "fake" in text and "w1" in text
    assert "http" not in text and "token" not in text
    started = time.monotonic()
    relay_hub.reset()
    assert no_relay() and time.monotonic() - started < 1.0


async def test_a_flood_from_the_upstream_does_not_reset_subscribers_that_keep_up(
    fake: FakeHandle, relay_settings: SettingsWrapper
) -> None:
    """The upstream thread may not run ahead of the loop: a reader that drains its queue never overflows."""
    relay_settings.YOI_RELAY_SUBSCRIBER_FRAMES = 100
    subscriber = relay_hub.subscribe("fake", "w1", after=0)
    await connected(subscriber)

    fake.emit(5000)  # all queued on the upstream at once: the reader thread could hand them over in one go
    frames = await subscriber_frames_until(subscriber, has_seq(5000), timeout=30)
    assert of_type("reset", frames) == []
    assert seqs(frames) == list(range(1, 5001))
    assert subscriber.resets == 0


async def test_a_subscriber_far_behind_is_repaired_in_steps_without_a_reset(
    fake: FakeHandle, relay_settings: SettingsWrapper
) -> None:
    """More missed events than a queue holds: sent half a queue at a time, never a slow_consumer reset."""
    relay_settings.YOI_RELAY_SUBSCRIBER_FRAMES = 80
    relay_settings.YOI_RELAY_BUFFER_EVENTS = 200
    live = relay_hub.subscribe("fake", "w1", after=0)
    await connected(live)
    fake.emit(500)
    assert seqs(await subscriber_frames_until(live, has_seq(500))) == list(range(1, 501))
    behind = relay_hub.subscribe("fake", "w1", after=0)  # 1..300 only on the runtime, 301..500 in the buffer
    frames = await subscriber_frames_until(behind, has_seq(500))
    assert of_type("reset", frames) == [] and behind.resets == 0
    assert seqs(frames) == list(range(1, 501))
    assert fake.opened_after(main=False) == list(range(0, 300, 40))  # catch-ups of half a queue each
    fake.emit()
    for subscriber in (live, behind):
        assert seqs(await subscriber_frames_until(subscriber, has_seq(501))) == [501]


async def test_watched_workers_cost_no_thread_each(embedded_runtime: Runtime) -> None:
    """Every upstream is read on the event loop: watching 30 workers starts no thread per worker."""
    handle = await runtime_handle()
    ids = [f"many-{i}" for i in range(30)]
    for worker_id in ids:
        await create_worker(handle, worker_id, profile="builtin:burst", initial_input=None, options={"count": 3})
    before = {thread.ident for thread in threading.enumerate()}
    subscribers = [relay_hub.subscribe("local", worker_id, after=0) for worker_id in ids]
    for worker_id in ids:
        await send_input(handle, worker_id, "go")
    for subscriber in subscribers:
        assert seqs(await subscriber_frames_until(subscriber, is_event("run_end")))[-1] >= 4
    assert len(list(relay_hub.relays())) == 30
    assert all(relay.upstreams_opened == 1 for relay in relay_hub.relays())
    started = [thread.name for thread in threading.enumerate() if thread.ident not in before]
    # Opening an embedded stream takes one hop to asyncio's default executor (a bounded pool, reused); the
    # rest are the runtime's own burst executors: no thread is a relay's.
    relay_threads = [name for name in started if not name.startswith(("asyncio_", "worker-run"))]
    assert relay_threads == [], started
