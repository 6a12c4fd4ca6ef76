"""``manage.py watch_worker`` against a real Backend: the frames a browser gets, one JSON line each."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay_e2e.conftest import USERNAME, Backend, BackendLauncher, RuntimeEntry
from tests.runtime_process import REPO_ROOT, kill_spawned_since, spawned_count, start_runtime

RUNTIME_ID = "rt-watch"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: tuple[Path, str, str]) -> Iterator[Backend]:
    """One Backend with one real runtime for the module."""
    marker = spawned_count()
    launcher = BackendLauncher(tmp_path_factory.mktemp("relay-e2e-watch"), migrated_sqlite)
    try:
        rt = start_runtime(tmp_path_factory.mktemp("relay-e2e-watch-runtime"), runtime_id=RUNTIME_ID)
        yield launcher.start(runtimes=[RuntimeEntry.of(rt)])
    finally:
        launcher.close()
        kill_spawned_since(marker)


def watch(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command with the Backend's settings (same database and secret key), bounded."""
    command = [sys.executable, str(REPO_ROOT / "manage.py"), "watch_worker", *args]
    return subprocess.run(
        [*command, "--url", backend.base_url, "--user", USERNAME],
        env=backend.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_watch_worker_prints_every_frame_until_the_worker_exits(backend: Backend) -> None:
    worker = backend.create_worker(RUNTIME_ID, {"profile": "builtin:echo", "initial_input": "hello"})
    worker_id = worker["worker_id"]
    response = backend.api("POST", f"runtimes/{RUNTIME_ID}/workers/{worker_id}/stop/")
    assert response.status_code == 200, response.text

    result = watch(backend, RUNTIME_ID, worker_id, "--after", "0")
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    events = [frame for frame in frames if frame["type"] == "event"]
    assert [frame["seq"] for frame in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "worker_exited"
    assert "".join(f["data"]["text"] for f in events if f["event"] == "text_delta") == "echo: hello"
    assert "closed: 1000" in result.stderr


def test_watch_worker_reports_an_error_frame_and_fails(backend: Backend) -> None:
    result = watch(backend, RUNTIME_ID, "w-nobody")
    assert result.returncode == 1
    [frame] = [json.loads(line) for line in result.stdout.splitlines()]
    assert frame["type"] == "error" and frame["error"]["code"] == "worker_not_found"
    assert "4404" in result.stderr
