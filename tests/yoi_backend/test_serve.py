"""The server entry point (yoi_backend/serve.py) as a real process: SIGTERM drains and exits cleanly."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_process import (
    BackendProcess,
    backend_data_dir,
    backend_env,
    create_login,
    start_backend,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def backend(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BackendProcess]:
    delay = getattr(request, "param", "0.2")
    data_dir = backend_data_dir(tmp_path / "backend")
    env = backend_env(
        secret_key="serve-test-secret",
        data_dir=data_dir,
        extra={"YOI_DRAIN_DELAY_SECONDS": delay, "YOI_DRAIN_GRACE_SECONDS": "5"},
    )
    create_login(env, "serve-user", migrate=True)
    process = start_backend(env=env, log_path=data_dir / "daphne.log")
    yield process
    process.kill()


def test_sigterm_drains_then_exits_zero(backend: BackendProcess) -> None:
    backend.proc.send_signal(signal.SIGTERM)
    try:
        code = backend.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the Backend did not exit after SIGTERM:\n{backend.log_text()}")
    assert code == 0, backend.log_text()
    assert "yoi_backend.lifecycle.draining" in backend.log_text()


@pytest.mark.parametrize("backend", ["600"], indirect=True)
def test_second_signal_stops_at_once(backend: BackendProcess) -> None:
    # A ten-minute drain delay: only the second signal can end the process within the wait below.
    backend.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "yoi_backend.lifecycle.draining" not in backend.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    backend.proc.send_signal(signal.SIGINT)
    assert backend.proc.wait(timeout=15) == 0, backend.log_text()
