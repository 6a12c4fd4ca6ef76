"""The relay's fast path under the real server: a browser's frames are written straight to its daphne
connection (workers.transport), not through the consumer's ``send``.

This fails, rather than passing on the slower fallback, when a daphne, Twisted or autobahn version no
longer offers what the direct writer needs: the versions it is tested with are pinned in pyproject.toml.
"""

from __future__ import annotations

from importlib.metadata import version

from tests.conftest import RuntimeFactory
from tests.relay_e2e.conftest import BackendFactory, RuntimeEntry
from tests.relay_e2e.helpers import CONNECTED_TIMEOUT, burst, upstream_is
from tests.relay_e2e.ws_client import WsClient, assert_contiguous

# The versions the direct path is written against (pyproject.toml pins the same).
PINNED = {"daphne": "4.2.3", "twisted": "26.10.0", "autobahn": "26.11.1"}


def test_the_installed_server_stack_is_the_pinned_one() -> None:
    assert {name: version(name) for name in PINNED} == PINNED


async def test_frames_go_straight_to_the_daphne_connection(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-direct")
    backend = backend_factory(runtimes=[RuntimeEntry.of(rt)], env={"YOI_LOG_LEVEL": "INFO"})
    worker = backend.create_worker(rt.runtime_id, burst(200, 0))
    worker_id, start = worker["worker_id"], int(worker["last_seq"])
    client = await WsClient.connect(
        backend.ws_url(rt.runtime_id, worker_id, after=start),
        session_key=backend.session_key,
        origin=backend.origin,
    )
    try:
        await client.wait_for(upstream_is("connected"), timeout=CONNECTED_TIMEOUT, what="upstream connected")
        ack = backend.send_input(rt.runtime_id, worker_id, "go")
        await client.wait_for(
            lambda c: c.has_event("run_end", after_seq=int(ack["event_id"])), timeout=60, what="run_end"
        )
    finally:
        await client.close()
    seqs = client.seqs()
    assert_contiguous(seqs, first=start + 1, last=seqs[-1])
    log = backend.log_text(tail=200_000)
    assert "workers.transport.direct_writes" in log, log[-3000:]
    assert "workers.transport.direct_writes_unavailable" not in log, log[-3000:]
