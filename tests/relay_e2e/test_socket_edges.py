"""Edges of the event socket on a real Backend: unknown paths, the bounded lookup, the exact Origin, SIGTERM.

One Backend serves most of the module, with a healthy runtime and one whose address accepts connections
and never answers (a listening socket nobody reads). Its socket lookup may take 7 s — longer than daphne's
5 s handshake timeout — to show that the lookup runs after the accept and cannot race the handshake.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import RuntimeFactory
from tests.relay_e2e.conftest import Backend, BackendFactory, RuntimeEntry
from tests.relay_e2e.helpers import wait_streams_open
from tests.relay_e2e.policy_helpers import module_site
from tests.relay_e2e.ws_client import WsClient, connect_many
from tests.runtime_process import RuntimeProcess, create_worker, start_runtime

LOOKUP_TIMEOUT = 7.0  # above daphne's 5 s handshake timeout
TRUSTED_ORIGIN = "https://console.example.invalid"
CLOSE_TIMEOUT = 15.0


@dataclass
class Stage:
    """The module's Backend and its healthy runtime."""

    backend: Backend
    healthy: RuntimeProcess


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: tuple[Path, str, str]) -> Iterator[Stage]:
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with module_site(tmp_path_factory, migrated_sqlite, "socket-edges") as (launcher, root):
            blackhole.bind(("127.0.0.1", 0))
            blackhole.listen(64)  # the kernel completes the connections; nobody ever reads them
            healthy = start_runtime(root / "ok", runtime_id="rt-ok")
            silent = RuntimeEntry(
                "rt-silent", f"http://127.0.0.1:{blackhole.getsockname()[1]}", "t", read_timeout=30
            )
            env = {
                "YOI_SOCKET_LOOKUP_TIMEOUT_SECONDS": str(LOOKUP_TIMEOUT),
                "DJANGO_CSRF_TRUSTED_ORIGINS": TRUSTED_ORIGIN,
            }
            yield Stage(launcher.start(runtimes=[RuntimeEntry.of(healthy), silent], env=env), healthy)
    finally:
        blackhole.close()


async def socket_at(backend: Backend, path: str, *, origin: str | None = None) -> WsClient:
    """A logged-in socket on any path."""
    url = f"ws://127.0.0.1:{backend.port}{path}"
    return await WsClient.connect(url, session_key=backend.session_key, origin=origin or backend.origin, name=path)


async def closed_with_one_error(client: WsClient) -> tuple[int | None, dict[str, object]]:
    """Wait for the close; the close code and the only frame's error object."""
    await client.wait_closed(timeout=CLOSE_TIMEOUT)
    assert len(client.frames) == 1 and client.frames[0]["type"] == "error", client.frames
    return client.close_code, client.frames[0]["error"]


# ------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    [
        "/ws/",
        "/ws/nope/",
        "/ws/runtimes/rt-ok/",
        "/ws/runtimes/rt-ok/workers/w1/",
        "/ws/runtimes/rt-ok/workers/w1/events/x/",
        "/other/",
    ],
)
async def test_unknown_paths_are_accepted_and_closed_4404_without_a_traceback(stage: Stage, path: str) -> None:
    client = await socket_at(stage.backend, path)
    code, error = await closed_with_one_error(client)
    assert (code, error["code"]) == (4404, "not_found")
    assert "Traceback" not in stage.backend.log_text(tail=200_000)
    assert "Exception inside application" not in stage.backend.log_text(tail=200_000)


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/ws/runtimes/a%2Fb/workers/w1/events/", {"runtime_id"}),
        ("/ws/runtimes/rt-ok/workers/a%2F..%2Fb/events/", {"worker_id"}),
        ("/ws/runtimes//workers/w1/events/", {"runtime_id"}),
        ("/ws/runtimes/rt-ok/workers/w%20x/events/", {"worker_id"}),
    ],
)
async def test_malformed_ids_are_closed_4400(stage: Stage, path: str, fields: set[str]) -> None:
    client = await socket_at(stage.backend, path)
    code, error = await closed_with_one_error(client)
    assert (code, error["code"]) == (4400, "invalid_request")
    assert set(error["fields"]) == fields  # type: ignore[arg-type]
    assert "Traceback" not in stage.backend.log_text(tail=200_000)


# ------------------------------------------------------------------------------------------- the lookup


async def test_a_lookup_slower_than_the_handshake_timeout_ends_with_runtime_timeout_4504(stage: Stage) -> None:
    started = time.monotonic()
    client = await socket_at(stage.backend, "/ws/runtimes/rt-silent/workers/w1/events/")
    accepted_after = time.monotonic() - started
    code, error = await closed_with_one_error(client)
    elapsed = time.monotonic() - started
    print(f"\nslow lookup: accepted after {accepted_after:.3f} s, runtime_timeout + {code} after {elapsed:.2f} s")
    assert (code, error["code"], error["runtime_id"]) == (4504, "runtime_timeout", "rt-silent")
    assert accepted_after < 2.0  # the handshake does not wait on the runtime
    assert LOOKUP_TIMEOUT - 0.5 < elapsed < LOOKUP_TIMEOUT + 5  # bounded, and past daphne's 5 s without a 1006


# ------------------------------------------------------------------------------------------- origin


async def test_the_sites_own_origin_and_a_trusted_origin_are_accepted(stage: Stage) -> None:
    worker = create_worker(stage.healthy)
    path = f"/ws/runtimes/rt-ok/workers/{worker['worker_id']}/events/?after=0"
    for origin in (stage.backend.origin, TRUSTED_ORIGIN):
        client = await socket_at(stage.backend, path, origin=origin)
        try:
            await client.wait_for(lambda c: bool(c.of_type("state")), timeout=CLOSE_TIMEOUT, what="relaying")
        finally:
            await client.close()


def near_misses(port: int) -> list[str]:
    """Origins that differ from ``http://127.0.0.1:PORT`` in exactly one way (or are no origin at all)."""
    return [
        "http://localhost:1",
        "https://127.0.0.1",
        f"https://127.0.0.1:{port}",
        f"http://127.0.0.1:{port + 1}",
        "http://127.0.0.1",
        f"http://localhost:{port}",
        f"ws://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}.evil.example",
        "https://evil.console.example.invalid",
        f"{TRUSTED_ORIGIN}:443",
        "null",
    ]


async def test_every_other_origin_is_refused_at_the_handshake(stage: Stage) -> None:
    worker = create_worker(stage.healthy)
    url = stage.backend.ws_url("rt-ok", worker["worker_id"])
    refused = []
    for origin in near_misses(stage.backend.port):
        with pytest.raises(InvalidStatus) as failure:
            await WsClient.connect(url, session_key=stage.backend.session_key, origin=origin, name=origin)
        refused.append((origin, failure.value.response.status_code))
    print(f"\nrefused origins: {refused}")
    # 403 from the Origin check; autobahn itself answers 400 to an Origin it cannot parse.
    assert {status for _, status in refused} <= {400, 403}, refused
    cookie = [("Cookie", f"sessionid={stage.backend.session_key}")]
    with pytest.raises(InvalidStatus) as failure:
        await connect(url, additional_headers=cookie, open_timeout=10)  # no Origin header at all
    assert failure.value.response.status_code == 403


# ------------------------------------------------------------------------------------------- SIGTERM


async def test_sigterm_closes_every_socket_with_1001(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt = runtime_factory(runtime_id="rt-drain")
    backend = backend_factory(
        runtimes=[RuntimeEntry.of(rt)], env={"YOI_DRAIN_DELAY_SECONDS": "0.2", "YOI_DRAIN_GRACE_SECONDS": "5"}
    )
    workers = [create_worker(rt)["worker_id"] for _ in range(3)]
    clients = []
    for worker_id in workers:
        url = backend.ws_url(rt.runtime_id, worker_id, after=0)
        clients += await connect_many(4, url, session_key=backend.session_key, origin=backend.origin)
    await asyncio.gather(
        *(c.wait_for(lambda c: bool(c.of_type("state")), timeout=CLOSE_TIMEOUT, what="relaying") for c in clients)
    )
    started = time.monotonic()
    backend.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(client.wait_closed(timeout=CLOSE_TIMEOUT) for client in clients))
    closed_after = time.monotonic() - started
    assert set(codes) == {1001}, codes
    exit_code = await asyncio.to_thread(backend.proc.wait, 20)
    print(f"\nSIGTERM: {len(clients)} sockets closed 1001 within {closed_after:.2f} s (drain delay 0.2 s)")
    assert exit_code == 0, backend.log_text()
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="the upstreams closed")
