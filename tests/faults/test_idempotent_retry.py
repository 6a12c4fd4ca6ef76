"""A browser retries a command whose answer was lost, with the same Idempotency-Key: one effect.

Real processes only: a runtime process, Backends under daphne, and between Backend and runtime a loopback
TCP proxy that forwards bytes both ways but can swallow the runtime's answer to one ``POST …/input``. The
Backend is SIGKILLed while that answer is held (the runtime has done the work, the browser never hears
of it), started again on the same database and data dir, and the browser sends the same request again:
the runtime's transcript holds the input once, and the retry gets the first answer. The embedded runtime
keeps its answered keys in its store across the same crash. Concurrent retries through a real Backend
take effect once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import RuntimeFactory
from tests.faults.conftest import BackendLauncher, FaultBackend, FaultDatabase, RuntimeRow
from tests.runtime_process import wait_until

RUNTIME_ID = "rt-retry"
HOLD_TIMEOUT = 20.0
PUMP_CHUNK = 64 * 1024
ECHO = {"profile": "builtin:echo"}


class HoldingProxy:
    """Forwards loopback TCP connections to ``target_port``; once ``arm()``ed, the runtime's answer on the
    first connection that sends a ``POST …/input`` is swallowed (``held`` is set when it arrives)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.held = threading.Event()
        self._armed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def __repr__(self) -> str:
        return f"HoldingProxy(port={self.port})"

    @property
    def base_url(self) -> str:
        """Where the Backend is told the runtime is."""
        return f"http://127.0.0.1:{self.port}"

    def arm(self) -> None:
        """Swallow the answer to the next input command."""
        self._armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            holding = threading.Event()
            threading.Thread(target=self._pump_requests, args=(client, upstream, holding), daemon=True).start()
            threading.Thread(target=self._pump_answers, args=(upstream, client, holding), daemon=True).start()

    def _pump_requests(self, source: socket.socket, sink: socket.socket, holding: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(PUMP_CHUNK):
                if (
                    self._armed.is_set()
                    and chunk.startswith(b"POST ")
                    and b"/input " in chunk.split(b"\r\n", 1)[0]
                ):
                    self._armed.clear()
                    holding.set()
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _pump_answers(self, source: socket.socket, sink: socket.socket, holding: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(PUMP_CHUNK):
                if holding.is_set():
                    self.held.set()  # the runtime answered; the Backend never gets it
                    continue
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def launcher(tmp_path: Path, fault_db: FaultDatabase) -> Iterator[BackendLauncher]:
    """Starts Backends (and restarts them on their own data dir); every one is killed after the test."""
    started = BackendLauncher(tmp_path, fault_db)
    try:
        yield started
    finally:
        started.close()


def restart(launcher: BackendLauncher, backend: FaultBackend) -> FaultBackend:
    """The same Backend again (its database, data dir and environment) after ``backend`` died."""
    assert not backend.alive()
    return launcher.launch(
        FaultBackend,
        env=backend.env,
        data_dir=backend.data_dir,
        session_key=backend.session_key,
        api_token=backend.api_token,
    )


def post(backend: FaultBackend, path: str, body: dict[str, Any], key: str, **kwargs: Any) -> requests.Response:
    return backend.api("POST", path, body, headers={"Idempotency-Key": key}, **kwargs)


def user_inputs(backend: FaultBackend, runtime_id: str, worker_id: str) -> list[str]:
    page = backend.api("GET", f"runtimes/{runtime_id}/workers/{worker_id}/transcript/?limit=200")
    assert page.status_code == 200, page.text
    return [item["content"] for item in page.json()["items"] if item["role"] == "user"]


def create_worker(backend: FaultBackend, runtime_id: str) -> str:
    response = backend.api("POST", f"runtimes/{runtime_id}/workers/", ECHO)
    assert response.status_code == 201, response.text
    worker_id: str = response.json()["worker_id"]
    return worker_id


def test_a_retry_after_the_backend_died_mid_request_has_one_effect(
    runtime_factory: RuntimeFactory, launcher: BackendLauncher
) -> None:
    rt = runtime_factory(runtime_id=RUNTIME_ID)
    proxy = HoldingProxy(rt.port)
    try:
        rows = [
            RuntimeRow(runtime_id=RUNTIME_ID, base_url=proxy.base_url, token=rt.token, read_timeout=30.0),
            RuntimeRow(runtime_id="embedded", kind="embedded", display_name="Embedded"),
        ]
        backend = launcher.start(rows=rows)
        worker_id = create_worker(backend, RUNTIME_ID)
        path = f"runtimes/{RUNTIME_ID}/workers/{worker_id}/input/"
        key = f"lost-{uuid.uuid4().hex}"
        # The embedded runtime answers before the crash; that answer counts as lost too.
        embedded_worker = create_worker(backend, "embedded")
        embedded_path = f"runtimes/embedded/workers/{embedded_worker}/input/"
        embedded_first = post(backend, embedded_path, {"content": "before the crash"}, key)
        assert embedded_first.status_code == 202, embedded_first.text

        proxy.arm()
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["response"] = post(backend, path, {"content": "sent once"}, key)
            except requests.RequestException as exc:
                outcome["error"] = type(exc).__name__

        browser = threading.Thread(target=send)
        browser.start()
        assert proxy.held.wait(HOLD_TIMEOUT), "the runtime never answered the input"
        backend.kill()  # the answer is lost with the process that was waiting for it
        browser.join(HOLD_TIMEOUT)
        assert not browser.is_alive()
        assert "response" not in outcome, "the browser got an answer it should have lost"

        again = restart(launcher, backend)
        retry = post(again, path, {"content": "sent once"}, key)
        assert retry.status_code == 202, retry.text
        assert retry.json()["transcript_sequence"] == 1  # the first (lost) answer, replayed
        assert retry.json() == post(again, path, {"content": "sent once"}, key).json()
        wait_until(lambda: len(user_inputs(again, RUNTIME_ID, worker_id)) >= 1)
        assert user_inputs(again, RUNTIME_ID, worker_id) == ["sent once"]
        embedded_retry = post(again, embedded_path, {"content": "before the crash"}, key)
        assert (embedded_retry.status_code, embedded_retry.json()) == (202, embedded_first.json())
        assert user_inputs(again, "embedded", embedded_worker) == ["before the crash"]

        other = post(again, path, {"content": "a different input"}, key)
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"

        # Concurrent retries of one submission through a real Backend: one effect, one answer for all.
        race_key = f"race-{uuid.uuid4().hex}"
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda _: post(again, path, {"content": "raced"}, race_key), range(6)))
        assert {a.status_code for a in answers} == {202}
        assert len({a.text for a in answers}) == 1
        assert user_inputs(again, RUNTIME_ID, worker_id).count("raced") == 1
    finally:
        proxy.close()
