"""``make run`` (python -m yoi_backend.devrun) on free ports: it restarts a killed runtime and keeps the
Backend up, then stops everything on SIGINT (Ctrl-C)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.backend_process import free_port
from tests.runtime_process import REPO_ROOT

pytestmark = pytest.mark.slow

STARTED_RE = re.compile(r"^==> local runtime started \(pid (\d+)\)$")
BANNER = "Both processes are restarted if they die."
METRICS_RE = re.compile(r"Metrics:\s+curl -H 'Authorization: Bearer (\S+)' (\S+)/metrics$")


class Output:
    """The lines a process prints, read on a thread; ``wait_for`` a matching line with a deadline."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, predicate: object, *, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("not printed in time; output so far:\n" + "\n".join(self.lines[-60:]))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.lines.append(line)
            if predicate(line):  # type: ignore[operator]
                return line


@pytest.fixture
def devrun(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, int, int]]:
    http_port, runtime_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "YOI_")) and k != "DATABASE_URL"}
    env.update(
        {
            "YOI_HTTP_PORT": str(http_port),
            "YOI_LOCAL_RUNTIME_PORT": str(runtime_port),
            "YOI_DATA_DIR": str(tmp_path / "var"),
            "YOI_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "yoi_backend.devrun"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc, Output(proc.stdout), http_port, runtime_port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)
    except requests.ConnectionError:
        return False
    return True


def test_make_run_restarts_a_killed_runtime_and_stops_cleanly(
    devrun: tuple[subprocess.Popen[str], Output, int, int],
) -> None:
    proc, output, http_port, runtime_port = devrun
    first = STARTED_RE.match(output.wait_for(STARTED_RE.match, timeout=60))
    assert first is not None
    output.wait_for(lambda line: BANNER in line, timeout=120)
    metrics_line = next(line for line in output.lines if METRICS_RE.search(line))
    metrics = METRICS_RE.search(metrics_line)
    assert metrics is not None and metrics.group(2) == f"http://127.0.0.1:{http_port}"
    assert requests.get(f"http://127.0.0.1:{http_port}/livez", timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{http_port}/metrics", timeout=5).status_code == 401
    scraped = requests.get(
        f"http://127.0.0.1:{http_port}/metrics", headers={"Authorization": f"Bearer {metrics.group(1)}"}, timeout=5
    )
    assert scraped.status_code == 200 and 'yoi_runtime_up{runtime_id="local"} 1.0' in scraped.text

    os.kill(int(first.group(1)), signal.SIGKILL)
    output.wait_for(lambda line: line.startswith("==> local runtime exited (code -9); restarting in "), timeout=10)
    second = STARTED_RE.match(output.wait_for(STARTED_RE.match, timeout=20))
    assert second is not None and second.group(1) != first.group(1)
    output.wait_for(lambda line: line == f"==> local runtime is listening on 127.0.0.1:{runtime_port}", timeout=30)
    assert proc.poll() is None
    assert (
        requests.get(f"http://127.0.0.1:{http_port}/livez", timeout=5).status_code == 200
    )  # the Backend stayed up

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    assert proc.wait(timeout=30) == 0, "\n".join(output.lines[-40:])
    assert not listening(http_port) and not listening(runtime_port)
