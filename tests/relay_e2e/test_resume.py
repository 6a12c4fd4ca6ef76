"""Gapless resume through a real Backend: a runtime killed mid-stream, a browser reconnecting with ``?after=``."""

from __future__ import annotations

from tests.conftest import RuntimeFactory
from tests.relay_e2e.conftest import BackendFactory, RuntimeEntry
from tests.relay_e2e.helpers import (
    CONNECTED_TIMEOUT,
    burst,
    durable_events,
    relayed,
    upstream_is,
    wait_all,
    wait_streams_open,
)
from tests.relay_e2e.ws_client import WsClient, assert_contiguous, close_all, connect_many

GAP_STATES = {"reconnecting", "unavailable"}


def frames_around_the_gap(client: WsClient) -> tuple[list[str], int]:
    """The upstream states told after the first gap state up to the next event, and how many events preceded."""
    gap = next(i for i, f in enumerate(client.frames) if f.get("upstream") in GAP_STATES)
    before = sum(1 for f in client.frames[:gap] if f.get("type") == "event")
    states: list[str] = []
    for frame in client.frames[gap:]:
        if frame.get("type") == "event":
            break
        if frame.get("type") == "state":
            states.append(str(frame["upstream"]))
    return states, before


async def test_runtime_killed_mid_stream_and_restarted_loses_and_repeats_nothing(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-resume")
    backend = backend_factory(runtimes=[RuntimeEntry.of(rt)])
    worker = backend.create_worker(rt.runtime_id, burst(count=400, rate=200))
    worker_id, start = worker["worker_id"], int(worker["last_seq"])
    url = backend.ws_url(rt.runtime_id, worker_id, after=start)
    clients = await connect_many(5, url, session_key=backend.session_key, origin=backend.origin)
    late: WsClient | None = None
    try:
        await wait_all(clients, upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")
        backend.send_input(rt.runtime_id, worker_id, "first burst")
        await wait_all(clients, lambda c: len(c.events()) >= 60, timeout=30, what="events flowing")

        rt.kill()  # SIGKILL mid-burst: no goodbye on the SSE stream
        await wait_all(
            clients,
            lambda c: any(f.get("upstream") in GAP_STATES for f in c.of_type("state")),
            timeout=15,
            what="a reconnecting/unavailable state",
        )
        cut_at = max(c.last_seq() or 0 for c in clients)
        rt = rt.restart()  # same port, store and token: the Backend's row is unchanged
        await wait_all(
            clients,
            lambda c: frames_around_the_gap(c)[0][-1:] == ["connected"],
            timeout=30,
            what="connected again after the gap",
        )

        # The killed run is gone; a new input starts another burst on the recovered worker.
        ack = backend.send_input(rt.runtime_id, worker_id, "second burst")
        second = int(ack["event_id"])
        assert second > cut_at
        await wait_all(clients, lambda c: len(c.events()) >= 30 and c.has_event("text_delta", after_seq=second),
                       timeout=30, what="second burst flowing")  # fmt: skip

        # A browser that joins mid-second-burst from an old cursor is repaired from the buffer / runtime.
        late = await WsClient.connect(url, session_key=backend.session_key, origin=backend.origin, name="late")
        everyone = [*clients, late]
        await wait_all(everyone, lambda c: c.has_event("run_end", after_seq=second), timeout=60, what="run_end")
        last = clients[0].last_seq()
        assert last is not None
        expected = durable_events(rt, worker_id, after=start, last=last)
        for client in everyone:
            assert_contiguous(client.seqs(), first=start + 1, last=last, who=client.name)
            assert relayed(client) == expected, client.name
            assert client.of_type("reset") == [] and client.of_type("error") == []
        for client in clients:
            states, before = frames_around_the_gap(client)
            assert before > 0, "the gap came mid-stream"
            assert states[0] in GAP_STATES and states[-1] == "connected", states
    finally:
        await close_all([*clients, *([late] if late else [])])


async def test_browser_reconnecting_with_after_resumes_exactly(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-after")
    backend = backend_factory(runtimes=[RuntimeEntry.of(rt)])
    worker = backend.create_worker(rt.runtime_id, burst(count=600, rate=400))
    worker_id, start = worker["worker_id"], int(worker["last_seq"])

    def url(after: int) -> str:
        return backend.ws_url(rt.runtime_id, worker_id, after=after)

    async def connect(after: int, name: str) -> WsClient:
        auth = {"session_key": backend.session_key, "origin": backend.origin}
        return await WsClient.connect(url(after), name=name, **auth)

    steady = await connect(start, "steady")
    leaver = await connect(start, "leaver")
    opened = [steady, leaver]
    try:
        await wait_all(opened, upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")
        ack = backend.send_input(rt.runtime_id, worker_id, "burst")
        await leaver.wait_for(lambda c: len(c.events()) >= 100, timeout=30, what="100 events")
        await leaver.close()  # the browser goes away mid-stream (a page reload)...
        first_part = leaver.seqs()
        cursor = first_part[-1]
        back = await connect(cursor, "back")  # ...and comes back from the last seq it saw
        opened.append(back)
        await wait_all([steady, back], lambda c: c.has_event("run_end"), timeout=60, what="run_end")
        last = steady.last_seq()
        assert last is not None and last > int(ack["event_id"])
        assert_contiguous(first_part + back.seqs(), first=start + 1, last=last, who="leaver + back")
        assert_contiguous(steady.seqs(), first=start + 1, last=last, who="steady")

        # With nobody watching the relay closes; a cursor of 0 then replays the whole log from the runtime.
        await close_all(opened)
        await wait_streams_open(rt, lambda n: n == 0, timeout=10, what="0 with nobody watching")
        replay = await connect(0, "replay")
        opened.append(replay)
        await replay.wait_for(lambda c: c.last_seq() == last, timeout=30, what=f"seq {last}")
        assert_contiguous(replay.seqs(), first=1, last=last, who="replay")
        assert relayed(replay) == durable_events(rt, worker_id, after=0, last=last)
    finally:
        await close_all(opened)


async def test_browser_far_behind_catches_up_without_a_reset(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    """A cursor thousands of events back (more than a browser's frame queue holds) still replays exactly."""
    rt = runtime_factory(runtime_id="rt-far")
    backend = backend_factory(runtimes=[RuntimeEntry.of(rt)])
    worker = backend.create_worker(rt.runtime_id, burst(count=6000, rate=0))
    worker_id = worker["worker_id"]
    auth = {"session_key": backend.session_key, "origin": backend.origin}
    live = await WsClient.connect(backend.ws_url(rt.runtime_id, worker_id), name="live", **auth)
    behind: WsClient | None = None
    try:
        await live.wait_for(upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")
        backend.send_input(rt.runtime_id, worker_id, "burst")
        await live.wait_for(lambda c: c.has_event("run_end"), timeout=60, what="run_end")
        last = live.last_seq()
        assert last is not None
        # The relay is still up (live watches): the old part comes from the runtime, the rest from the buffer.
        behind = await WsClient.connect(backend.ws_url(rt.runtime_id, worker_id, after=0), name="behind", **auth)
        await behind.wait_for(lambda c: c.last_seq() == last, timeout=60, what=f"seq {last}")
        assert behind.of_type("reset") == [], behind.of_type("reset")[:3]
        assert_contiguous(behind.seqs(), first=1, last=last, who="behind")
    finally:
        await close_all([live, *([behind] if behind else [])])
