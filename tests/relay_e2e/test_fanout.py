"""Fan-out through a real Backend: many browsers on one worker share ONE upstream (docs/architecture.md §4).

A browser that stops reading (a 4 KiB kernel receive buffer, a tiny websockets queue, and no reads until
the fast ones are done) must get a ``slow_consumer`` reset while the others are unaffected. Loopback still
absorbs ~3 MB in the kernel before the Backend's write buffer fills, hence the large burst for that test.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RuntimeFactory
from tests.relay_e2e.conftest import BackendFactory, RuntimeEntry
from tests.relay_e2e.helpers import (
    CONNECTED_TIMEOUT,
    StreamSampler,
    burst,
    durable_events,
    relayed,
    upstream_is,
    wait_all,
    wait_streams_open,
)
from tests.relay_e2e.ws_client import WsClient, assert_contiguous, close_all, connect_many

BROWSERS = 50
COUNT, RATE = 500, 500
LINGER = 0.5


async def test_fifty_browsers_share_one_upstream_and_get_every_event_in_order(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-fanout")
    backend = backend_factory(runtimes=[RuntimeEntry.of(rt)], env={"YOI_RELAY_LINGER_SECONDS": str(LINGER)})
    worker = backend.create_worker(rt.runtime_id, burst(COUNT, RATE))
    worker_id, start = worker["worker_id"], int(worker["last_seq"])
    url = backend.ws_url(rt.runtime_id, worker_id, after=start)

    clients = await connect_many(BROWSERS, url, session_key=backend.session_key, origin=backend.origin)
    try:
        await wait_all(clients, upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")
        with StreamSampler(rt) as sampler:
            await wait_streams_open(rt, lambda n: n >= 1, timeout=5, what=">= 1")
            ack = backend.send_input(rt.runtime_id, worker_id, "burst please")
            await wait_all(
                clients,
                lambda c: c.has_event("run_end", after_seq=int(ack["event_id"])),
                timeout=60,
                what="run_end",
            )
        print(f"\nfan-out: {BROWSERS} browsers, event_streams_open samples while watching: {set(sampler.samples)}")
        assert sampler.samples and set(sampler.samples) == {1}, sampler.samples

        last = clients[0].last_seq()
        assert last is not None
        expected = durable_events(rt, worker_id, after=start, last=last)
        assert len(expected) >= COUNT
        for client in clients:
            assert_contiguous(client.seqs(), first=start + 1, last=last, who=client.name)
            assert relayed(client) == expected, client.name
            assert client.of_type("reset") == [] and client.of_type("error") == []
            assert {f["upstream"] for f in client.of_type("state")} == {"connected"}
    finally:
        await close_all(clients)

    # The last browser left: the upstream closes after the linger (plus a margin for the runtime to notice).
    await wait_streams_open(rt, lambda n: n == 0, timeout=LINGER + 5, what="0 after the last browser left")


SLOW_COUNT = 50_000
SUBSCRIBER_FRAMES = 200
FAST_READERS = 2


def segments(client: WsClient) -> list[tuple[dict[str, Any] | None, list[int]]]:
    """The event seqs between resets: ``[(reset frame before it or None, [seq, ...]), ...]``."""
    parts: list[tuple[dict[str, Any] | None, list[int]]] = [(None, [])]
    for frame in client.frames:
        if frame.get("type") == "reset":
            parts.append((frame, []))
        elif frame.get("type") == "event":
            parts[-1][1].append(int(frame["seq"]))
    return parts


@pytest.mark.slow  # 50,000 events to three sockets: ~10 s on an idle 2-core machine
async def test_browser_that_stops_reading_gets_a_reset_and_the_others_everything(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-slow")
    backend = backend_factory(
        runtimes=[RuntimeEntry.of(rt)],
        env={"YOI_RELAY_SUBSCRIBER_FRAMES": str(SUBSCRIBER_FRAMES)},
        # The slow browser answers no ping while it does not read: daphne must not drop it meanwhile.
        daphne_args=["--ping-interval", "300", "--ping-timeout", "300"],
    )
    worker = backend.create_worker(rt.runtime_id, burst(count=SLOW_COUNT, rate=0))
    worker_id, start = worker["worker_id"], int(worker["last_seq"])
    url = backend.ws_url(rt.runtime_id, worker_id, after=start)
    auth = {"session_key": backend.session_key, "origin": backend.origin}
    fast = [await WsClient.connect(url, name=f"fast-{i}", **auth) for i in range(FAST_READERS)]
    slow = await WsClient.connect(url, name="slow", reading=False, max_queue=4, rcvbuf=4096, **auth)
    try:
        await wait_all(fast, upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")
        backend.send_input(rt.runtime_id, worker_id, "a big burst")
        await wait_all(fast, lambda c: c.has_event("run_end"), timeout=60, what="run_end")
        last = fast[0].last_seq()
        assert last is not None and last >= start + SLOW_COUNT
        for client in fast:
            assert client.of_type("reset") == [], f"{client.name} was reset: {client.of_type('reset')[:3]}"
            assert_contiguous(client.seqs(), first=start + 1, last=last, who=client.name)

        slow.start_reading()  # it finally reads: what was buffered, a reset, then where the stream went on
        await slow.wait_for(lambda c: c.last_seq() == last, timeout=60, what=f"seq {last}")
        parts = segments(slow)
        resets = [reset for reset, _ in parts[1:]]
        assert resets, "the slow browser was never reset"
        assert {reset["reason"] for reset in resets if reset} == {"slow_consumer"}
        first_seqs = parts[0][1]
        assert_contiguous(first_seqs, first=start + 1, last=first_seqs[-1], who="slow, before its first reset")
        for reset, seqs in parts[1:]:
            assert reset is not None and seqs, parts
            assert_contiguous(seqs, first=int(reset["earliest_seq"]), last=seqs[-1], who="slow, after a reset")
        first_reset = parts[1][0]["earliest_seq"] if parts[1][0] else None
        print(f"\nslow browser: {len(resets)} resets; first at seq {first_reset} after {len(first_seqs)} events")
    finally:
        await close_all([*fast, slow])
