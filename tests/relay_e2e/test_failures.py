"""Failures on the event socket of a real Backend: one error frame, then close 4000 + status
(docs/architecture.md §4, §5).

One Backend serves the module, with three runtime rows: a real runtime whose token the Backend gets
wrong (it answers 401), a port nothing listens on, and a healthy runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.backend_process import free_port
from tests.relay_e2e.conftest import Backend, BackendLauncher, RuntimeEntry
from tests.relay_e2e.ws_client import WsClient
from tests.runtime_process import (
    RuntimeProcess,
    create_worker,
    kill_spawned_since,
    spawned_count,
    start_runtime,
)

WRONG_TOKEN = "not-the-runtime-token-5e0a91"
CLOSE_TIMEOUT = 15.0


@dataclass
class Stage:
    """The module's Backend and its runtimes."""

    backend: Backend
    healthy: RuntimeProcess
    wrong_token: RuntimeProcess


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: tuple[Path, str, str]) -> Iterator[Stage]:
    """A Backend with rows ``rt-auth`` (answers 401), ``rt-dead`` (nothing listens) and ``rt-ok``."""
    marker = spawned_count()
    launcher = BackendLauncher(tmp_path_factory.mktemp("relay-e2e-failures"), migrated_sqlite)
    try:
        root = tmp_path_factory.mktemp("relay-e2e-failure-runtimes")
        healthy = start_runtime(root / "ok", runtime_id="rt-ok")
        wrong_token = start_runtime(root / "auth", runtime_id="rt-auth")
        dead = RuntimeEntry("rt-dead", f"http://127.0.0.1:{free_port()}", "dead-runtime-token")
        backend = launcher.start(
            runtimes=[RuntimeEntry.of(healthy), RuntimeEntry.of(wrong_token, token=WRONG_TOKEN), dead]
        )
        yield Stage(backend, healthy, wrong_token)
    finally:
        launcher.close()
        kill_spawned_since(marker)


async def open_socket(backend: Backend, runtime_id: str, worker_id: str, name: str) -> WsClient:
    """A logged-in browser socket."""
    return await WsClient.connect(
        backend.ws_url(runtime_id, worker_id), session_key=backend.session_key, origin=backend.origin, name=name
    )


async def expect_error(backend: Backend, runtime_id: str, worker_id: str, *, code: str, close: int) -> None:
    """The socket gets exactly one error frame with ``code``, then closes with ``close``."""
    client = await open_socket(backend, runtime_id, worker_id, name=code)
    try:
        assert await client.wait_closed(timeout=CLOSE_TIMEOUT) == close
        assert len(client.frames) == 1, client.frames
        error = client.frames[0]
        assert error["type"] == "error" and error["error"]["code"] == code, error
        assert error["error"]["runtime_id"] == runtime_id
    finally:
        await client.close()
    text = str(client.frames)
    assert "127.0.0.1:" not in text and WRONG_TOKEN not in text  # no upstream address or credential


async def test_runtime_answering_401_is_runtime_auth_failed_4502(stage: Stage) -> None:
    worker = create_worker(stage.wrong_token)  # directly, with the right token: it exists
    await expect_error(stage.backend, "rt-auth", worker["worker_id"], code="runtime_auth_failed", close=4502)


async def test_unreachable_runtime_is_runtime_unreachable_4502(stage: Stage) -> None:
    await expect_error(stage.backend, "rt-dead", "w-anything", code="runtime_unreachable", close=4502)


async def test_unknown_worker_is_worker_not_found_4404(stage: Stage) -> None:
    await expect_error(stage.backend, "rt-ok", "w-does-not-exist", code="worker_not_found", close=4404)


async def test_unknown_runtime_is_runtime_not_found_4404(stage: Stage) -> None:
    await expect_error(stage.backend, "rt-nowhere", "w-anything", code="runtime_not_found", close=4404)


async def test_anonymous_socket_is_refused_without_a_frame(stage: Stage) -> None:
    worker = create_worker(stage.healthy)
    url = stage.backend.ws_url("rt-ok", worker["worker_id"])
    try:
        client = await WsClient.connect(url, session_key=None, origin=stage.backend.origin, name="anonymous")
    except InvalidStatus as refused:
        assert refused.response.status_code == 403  # refused at the handshake (daphne's answer to a close)
        return
    try:  # or accepted and closed at once with 4401, still without a frame
        assert await client.wait_closed(timeout=CLOSE_TIMEOUT) == 4401
        assert client.frames == []
    finally:
        await client.close()


async def test_healthy_row_of_the_same_backend_still_relays(stage: Stage) -> None:
    worker = create_worker(stage.healthy, initial_input="hi")
    client = await open_socket(stage.backend, "rt-ok", worker["worker_id"], name="healthy")
    try:
        await client.wait_for(lambda c: any(f.get("upstream") == "connected" for f in c.frames), timeout=15)
        assert client.of_type("error") == []
    finally:
        await client.close()


async def test_foreign_origin_is_refused_at_the_handshake(stage: Stage) -> None:
    worker = create_worker(stage.healthy)
    url = stage.backend.ws_url("rt-ok", worker["worker_id"])
    with pytest.raises(InvalidStatus) as refused:
        await WsClient.connect(url, session_key=stage.backend.session_key, origin="http://evil.example")
    assert refused.value.response.status_code == 403
