"""Scale-out: two Backend processes on one Redis channel layer and one database serve one worker's browsers.

Needs a Redis server: set ``YOI_TEST_REDIS_URL`` (``.ci/with-redis.sh`` starts a throwaway one and sets it).
The database is one SQLite file both processes open, or PostgreSQL when ``DATABASE_URL`` is set.
"""

from __future__ import annotations

import os

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
from tests.relay_e2e.ws_client import assert_contiguous, close_all, connect_many

REDIS_URL = os.environ.get("YOI_TEST_REDIS_URL", "")
PER_BACKEND = 10
COUNT, RATE = 500, 500

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not REDIS_URL, reason="set YOI_TEST_REDIS_URL (see .ci/with-redis.sh)"),
]


async def test_two_backends_on_one_channel_layer_deliver_every_event_once_in_order(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-scale")
    env = {"REDIS_URL": REDIS_URL}
    first = backend_factory(
        runtimes=[RuntimeEntry.of(rt)], env=env, database_url=os.environ.get("DATABASE_URL") or None
    )
    second = backend_factory(share=first, env=env)
    worker = first.create_worker(rt.runtime_id, burst(COUNT, RATE))
    worker_id, start = worker["worker_id"], int(worker["last_seq"])

    clients = []
    for index, backend in enumerate((first, second)):
        url = backend.ws_url(rt.runtime_id, worker_id, after=start)
        clients += await connect_many(
            PER_BACKEND, url, session_key=backend.session_key, origin=backend.origin, prefix=f"backend{index}"
        )
    try:
        # Warm-up burst: every process joins the worker's group and learns the upstream is up.
        ack = first.send_input(rt.runtime_id, worker_id, "warm-up")
        await wait_all(clients, lambda c: c.has_event("run_end", after_seq=int(ack["event_id"])), timeout=60,
                       what="first run_end")  # fmt: skip
        await wait_all(clients, upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")

        with StreamSampler(rt) as sampler:
            ack = second.send_input(rt.runtime_id, worker_id, "measured")
            await wait_all(clients, lambda c: c.has_event("run_end", after_seq=int(ack["event_id"])), timeout=60,
                           what="second run_end")  # fmt: skip
        upstreams = max(sampler.samples)
        seen = sorted(set(sampler.samples))
        print(f"\nscale-out: 2 Backends x {PER_BACKEND} browsers; event_streams_open samples {seen}")
        assert 1 <= upstreams <= 2, sampler.samples

        last = clients[0].last_seq()
        assert last is not None
        expected = durable_events(rt, worker_id, after=start, last=last)
        for client in clients:
            assert_contiguous(client.seqs(), first=start + 1, last=last, who=client.name)
            assert relayed(client) == expected, client.name
            assert client.of_type("error") == []
    finally:
        await close_all(clients)
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="0 after every browser left")
