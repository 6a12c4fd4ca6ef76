"""Fault-suite fixtures: a real Backend under daphne and misbehaving runtimes, all on 127.0.0.1.

* ``fault_db``: a database migrated once per session, with a user, its API token and a login session
  (a throwaway SQLite file copied per Backend, or the ``DATABASE_URL`` of the environment).
* ``fault_backend_factory``: start ``daphne yoi_backend.asgi:application`` on a free port with runtimes
  synced from a generated TOML file; every process is killed in the finalizer, its log kept in tmp.
* ``FakeRuntimeServer``: one threaded HTTP server playing many runtimes, one per path prefix
  (``base_url = http://127.0.0.1:PORT/<runtime_id>``). Each answers ``/v1/runtime`` with its own identity
  (or misbehaves there) and misbehaves on worker routes as its ``Behaviour`` says: 401, 500, non-JSON,
  a 50 MB body, a slow drip, a hang, an SSE stream cut mid-event.
* ``BlackholeListener`` accepts connections and never answers; ``RefusedPort`` is a bound port that does
  not listen (a connect is refused at once, and no other process can take the port meanwhile).
* ``fault_site``: one Backend for the whole session with a runtime row per fault (each runtime has its
  own circuit breaker, so tests do not disturb each other) plus the embedded runtime.

Slow tests (``@pytest.mark.slow``) run only with ``YOI_RUN_SLOW=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.backend_process import (
    QUICK_RELAY_ENV,
    BackendProcess,
    DaphneLauncher,
    backend_env,
    copy_sqlite,
    create_login,
    sync_runtimes,
)

SLOW_ENV = "YOI_RUN_SLOW"
SECRET_KEY = "fault-suite-secret-key-not-for-production-7b2e"
USERNAME = "fault-browser"
FAKE_TOKEN = "fake-runtime-token-5e0c1d"
FAKE_WORKER_ID = "w-0001"
HTTP_TIMEOUT = (5.0, 30.0)
# How long a fake may keep a connection hanging or dripping before it gives up on its own.
FAKE_MAX_STALL = 60.0
HUGE_BODY_BYTES = 50 * 1024 * 1024
DRIP_INTERVAL = 0.1
# The environment of this suite's Backends and manage.py runs: quick relay settings, the runtimes' tokens.
fault_env = functools.partial(backend_env, secret_key=SECRET_KEY, defaults=QUICK_RELAY_ENV)


def slow_enabled() -> bool:
    """True when the slow fault tests should run (``YOI_RUN_SLOW=1``)."""
    return os.environ.get(SLOW_ENV, "") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this directory's slow tests unless ``YOI_RUN_SLOW=1``: ``make test`` keeps the quick ones."""
    if slow_enabled():
        return
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason=f"slow fault test: set {SLOW_ENV}=1 (.ci/run does)")
    for item in items:
        if item.get_closest_marker("slow") and here in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------- runtimes rows


@dataclass(frozen=True)
class RuntimeRow:
    """One ``[[runtime]]`` of a generated runtimes file; a remote row's token goes in the Backend's env."""

    runtime_id: str
    kind: str = "remote"
    base_url: str = ""
    token: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    enabled: bool = True
    display_name: str | None = None
    max_in_flight: int | None = None

    @property
    def token_env(self) -> str:
        """The environment variable named by the row's ``token_ref``."""
        return "YOI_RUNTIME_TOKEN_FAULT_" + "".join(c if c.isalnum() else "_" for c in self.runtime_id).upper()

    def toml(self) -> str:
        """The ``[[runtime]]`` table."""
        lines = [
            "[[runtime]]",
            f"runtime_id = {json.dumps(self.runtime_id)}",
            f"display_name = {json.dumps(self.display_name or f'Fault {self.runtime_id}')}",
            f"kind = {json.dumps(self.kind)}",
            f"enabled = {'true' if self.enabled else 'false'}",
        ]
        if self.kind == "remote":
            lines += [
                f"base_url = {json.dumps(self.base_url)}",
                f'token_ref = "env:{self.token_env}"',
                f"connect_timeout = {self.connect_timeout}",
                f"read_timeout = {self.read_timeout}",
            ]
        if self.max_in_flight is not None:
            lines.append(f"max_in_flight = {self.max_in_flight}")
        return "\n".join(lines) + "\n"


def runtimes_toml(rows: Sequence[RuntimeRow]) -> str:
    """A whole runtimes file."""
    return "\n".join(row.toml() for row in rows)


# --------------------------------------------------------------------------------------------- database


@dataclass(frozen=True)
class FaultDatabase:
    """A migrated database with the test user: a SQLite template to copy, or a shared ``database_url``."""

    sqlite_template: Path | None
    database_url: str | None
    session_key: str
    api_token: str


@pytest.fixture(scope="session")
def fault_db(tmp_path_factory: pytest.TempPathFactory) -> FaultDatabase:
    """Migrate once per session and create the user, its token and a session."""
    data_dir = tmp_path_factory.mktemp("fault-db")
    shared_url = os.environ.get("DATABASE_URL") or None
    database_url = shared_url or f"sqlite:///{data_dir / 'db.sqlite3'}"
    env = fault_env(data_dir=data_dir, database_url=database_url)
    session_key, api_token = create_login(env, USERNAME, migrate=True)
    return FaultDatabase(
        sqlite_template=None if shared_url else data_dir / "db.sqlite3",
        database_url=shared_url,
        session_key=session_key,
        api_token=api_token,
    )


# --------------------------------------------------------------------------------------------- Backend


@dataclass
class FaultBackend(BackendProcess):
    """A running daphne serving the Backend, with the test user's credentials."""

    session_key: str = field(repr=False)
    api_token: str = field(repr=False)

    @property
    def data_dir(self) -> Path:
        """The Backend's data dir (where its log lives)."""
        return self.log_path.parent

    def auth(self) -> dict[str, str]:
        """The API token header."""
        return {"Authorization": f"Token {self.api_token}"}

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: tuple[float, float] = HTTP_TIMEOUT,
        session: requests.Session | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """A call under ``/api/v1/`` with the token (``body`` sent as JSON when not None)."""
        headers = {**self.auth(), **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["json"] = body
        sender = session or requests
        return sender.request(
            method,
            f"{self.base_url}/api/v1/{path.lstrip('/')}",
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            **kwargs,
        )

    def raw(
        self,
        method: str,
        raw_path: str,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send ``raw_path`` byte for byte (no client-side normalisation of ``..`` or ``%2e``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            all_headers = {**self.auth(), **(headers or {})}
            if body is not None:
                all_headers.setdefault("Content-Type", "application/json")
            conn.putrequest(method, raw_path, skip_accept_encoding=True)
            for name, value in all_headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def proc_status_kb(self, key: str) -> int:
        """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
        raise AssertionError(f"{key} not in /proc/{self.proc.pid}/status")


BackendFactory = Callable[..., FaultBackend]


class BackendLauncher(DaphneLauncher[FaultBackend]):
    """Starts Backends under one directory and kills them all in ``close()``."""

    def __init__(self, root: Path, db: FaultDatabase) -> None:
        super().__init__(root)
        self.db = db

    def start(self, *, rows: Sequence[RuntimeRow] = (), env: Mapping[str, str] | None = None) -> FaultBackend:
        """A migrated Backend with ``rows`` synced, serving on a free port, ready (``/readyz`` answers)."""
        data_dir = self.next_data_dir()
        if self.db.sqlite_template is not None:
            database_url = copy_sqlite(self.db.sqlite_template, data_dir)
        else:
            assert self.db.database_url is not None
            database_url = self.db.database_url
        proc_env = fault_env(data_dir=data_dir, database_url=database_url, runtimes=rows, extra=env)
        if rows:
            sync_runtimes(runtimes_toml(rows), data_dir=data_dir, env=proc_env)
        return self.launch(
            FaultBackend,
            env=proc_env,
            data_dir=data_dir,
            session_key=self.db.session_key,
            api_token=self.db.api_token,
        )


@pytest.fixture
def fault_backend_factory(tmp_path: Path, fault_db: FaultDatabase) -> Iterator[BackendFactory]:
    """``factory(rows=[RuntimeRow...], env={...})`` -> a running Backend; all killed after the test."""
    launcher = BackendLauncher(tmp_path, fault_db)
    try:
        yield launcher.start
    finally:
        launcher.close()


# --------------------------------------------------------------------------------------------- fake runtimes


@dataclass(frozen=True)
class Behaviour:
    """How one fake runtime misbehaves: on ``/v1/runtime`` (``summary``) and on worker routes (``worker``).

    Faults: ``None`` (answer correctly), ``"401"``, ``"500"``, ``"not_json"``, ``"huge"`` (50 MB, no
    Content-Length), ``"huge_declared"`` (50 MB with its Content-Length), ``"drip"`` (a byte every 0.1 s),
    ``"hang"`` (never answer), ``"sse_cut"`` (the event stream ends inside an event; other routes are fine).
    """

    summary: str | None = None
    worker: str | None = None


def _runtime_summary(runtime_id: str) -> dict[str, Any]:
    return {
        "runtime": {
            "runtime_id": runtime_id,
            "display_name": f"Fake {runtime_id}",
            "backend": "fake",
            "status": "running",
            "worker_count": 1,
            "active_worker_count": 1,
            "limits": {"max_transcript_projection_items": 256, "max_input_bytes": 1048576},
            "profiles": [{"name": "builtin:echo", "description": "Echo."}],
            "default_profile": "builtin:echo",
            "protocol_version": "1",
        }
    }


def _worker(runtime_id: str, worker_id: str) -> dict[str, Any]:
    return {
        "worker_ref": {"runtime_id": runtime_id, "worker_id": worker_id},
        "status": "running",
        "profile": "builtin:echo",
        "intent": {"kind": "assistant"},
        "created_at": 1760000000.5,
        "updated_at": 1760000001.25,
        "transcript_len": 0,
        "last_seq": 0,
    }


# One complete event, then the stream stops in the middle of the next one's data line.
SSE_CUT_BODY = (
    b"id: 1\nevent: status\n"
    b'data: {"seq":1,"worker_id":"w-0001","event":"status","data":{"status":"running"},"ts":1760000000.5}\n\n'
    b"id: 2\nevent: text_delta\n"
    b'data: {"seq":2,"worker_id":"w-0001","event":"text_de'
)


class _FakeHandler(BaseHTTPRequestHandler):
    """Serves ``/<runtime_id>/v1/...`` as the ``Behaviour`` registered for that runtime id says."""

    protocol_version = "HTTP/1.1"
    timeout = 30.0  # an idle keep-alive connection is dropped after this, so closing the server is bounded
    server: _FakeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is for the tests."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        _, _, rest = self.path.partition("/")
        runtime_id, _, route = rest.partition("/")
        route = "/" + route.split("?", 1)[0]
        fake = self.server.fake
        fake.record(runtime_id, self.command, route)
        behaviour = fake.behaviours.get(runtime_id)
        if behaviour is None:
            self._json(404, {"error": {"code": "route_not_found", "message": "no such runtime"}})
            return
        if self.headers.get("Authorization") != f"Bearer {FAKE_TOKEN}":
            self._json(401, {"error": {"code": "unauthorized", "message": "authentication required"}})
            return
        is_summary = route == "/v1/runtime"
        fault = behaviour.summary if is_summary else behaviour.worker
        if fault == "sse_cut" and not route.endswith("/events"):
            fault = None
        if fault is not None:
            self._misbehave(fault)
            return
        self._answer(runtime_id, route)

    def _answer(self, runtime_id: str, route: str) -> None:
        parts = route.strip("/").split("/")  # ["v1", "workers", <id>, <action>]
        if parts == ["v1", "runtime"]:
            self._json(200, _runtime_summary(runtime_id))
        elif parts == ["v1", "workers"] and self.command == "GET":
            self._json(200, {"workers": [_worker(runtime_id, FAKE_WORKER_ID)]})
        elif parts == ["v1", "workers"] and self.command == "POST":
            self._json(201, {"worker": _worker(runtime_id, FAKE_WORKER_ID)})
        elif len(parts) == 4 and parts[3] == "transcript" and self.command == "GET":
            page = {"worker_ref": {"runtime_id": runtime_id, "worker_id": parts[2]}, "start": 0, "limit": 50}
            self._json(200, {"transcript": {**page, "total_items": 0, "items": [], "next_start": None}})
        elif len(parts) == 3 and parts[1] == "workers":
            self._json(200, {"worker": _worker(runtime_id, parts[2])})
        elif len(parts) == 4 and parts[3] in {"input", "stop", "cancel"} and self.command == "POST":
            ack = {"worker_ref": {"runtime_id": runtime_id, "worker_id": parts[2]}, "status": "running"}
            self._json(200, {"ack": ack})
        else:
            self._json(404, {"error": {"code": "route_not_found", "message": "no such route"}})

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _misbehave(self, fault: str) -> None:
        stop = self.server.fake.stopping
        try:
            if fault == "401":
                self._json(401, {"error": {"code": "unauthorized", "message": "bad token"}})
            elif fault == "500":
                self._json(500, {"error": {"code": "internal_error", "message": "Traceback in /srv/yoi/core.py"}})
            elif fault == "not_json":
                self._raw_body(200, b"<html><body>definitely not JSON</body></html>", "text/html")
            elif fault in {"huge", "huge_declared"}:
                self._huge(declared=fault == "huge_declared")
            elif fault == "drip":
                self._drip()
            elif fault == "hang":
                stop.wait(FAKE_MAX_STALL)
                self.close_connection = True
            elif fault == "sse_cut":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(SSE_CUT_BODY)
                self.wfile.flush()
                self.close_connection = True
            else:
                raise AssertionError(f"unknown fault {fault!r}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the Backend gave up on us: that is the point

    def _raw_body(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _huge(self, *, declared: bool) -> None:
        """50 MB of a JSON string: with its Content-Length, or delimited by closing the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if declared:
            self.send_header("Content-Length", str(HUGE_BODY_BYTES))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        chunk = b"x" * (1024 * 1024)
        self.wfile.write(b'"')
        sent = 1
        while sent < HUGE_BODY_BYTES - 1 and not self.server.fake.stopping.is_set():
            piece = chunk[: HUGE_BODY_BYTES - 1 - sent]
            self.wfile.write(piece)
            sent += len(piece)
        self.wfile.write(b'"')
        self.server.fake.huge_bytes_sent.append(sent + 1)

    def _drip(self) -> None:
        """A valid head, then one byte of body every DRIP_INTERVAL: never silent long enough to time out a read."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + FAKE_MAX_STALL
        while time.monotonic() < deadline and not self.server.fake.stopping.wait(DRIP_INTERVAL):
            self.wfile.write(b" ")
            self.wfile.flush()
        self.close_connection = True


class _FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    fake: FakeRuntimeServer


class FakeRuntimeServer:
    """Many fake runtimes behind one threaded HTTP server on 127.0.0.1 (one per path prefix)."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.stopping = threading.Event()
        self.huge_bytes_sent: list[int] = []
        self._requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = _FakeHTTPServer(("127.0.0.1", 0), _FakeHandler)
        self._server.fake = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-runtimes", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"FakeRuntimeServer(port={self.port}, runtimes={sorted(self.behaviours)})"

    def add(self, runtime_id: str, behaviour: Behaviour, *, connect_timeout: float = 2.0) -> RuntimeRow:
        """Register a fake runtime; its row for the runtimes file (read timeout 1 s)."""
        self.behaviours[runtime_id] = behaviour
        return RuntimeRow(
            runtime_id=runtime_id,
            base_url=f"http://127.0.0.1:{self.port}/{runtime_id}",
            token=FAKE_TOKEN,
            connect_timeout=connect_timeout,
            read_timeout=1.0,
        )

    def record(self, runtime_id: str, method: str, route: str) -> None:
        """Remember a request (for call-count assertions)."""
        with self._lock:
            self._requests.append((runtime_id, method, route))

    def requests_to(self, runtime_id: str) -> list[tuple[str, str]]:
        """``(method, route)`` of every request a fake runtime got, in order."""
        with self._lock:
            return [(m, r) for rid, m, r in self._requests if rid == runtime_id]

    def close(self) -> None:
        """Release hanging and dripping handlers, stop serving, join the threads."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class BlackholeListener:
    """Accepts TCP connections on 127.0.0.1 and never reads or answers; the connections are held open."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"BlackholeListener(port={self.port}, accepted={self.accepted})"

    @property
    def accepted(self) -> int:
        """How many connections it has accepted."""
        return len(self._conns)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)

    def row(self, runtime_id: str) -> RuntimeRow:
        """A row pointing at the blackhole (read timeout 1 s)."""
        return RuntimeRow(
            runtime_id=runtime_id, base_url=f"http://127.0.0.1:{self.port}", token=FAKE_TOKEN, read_timeout=1.0
        )

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for conn in self._conns:
            conn.close()


class RefusedPort:
    """A loopback port that is bound but not listening: every connect is refused, and the port stays ours."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

    def __repr__(self) -> str:
        return f"RefusedPort(port={self.port})"

    def row(self, runtime_id: str) -> RuntimeRow:
        """A row pointing at the refused port (read timeout 1 s)."""
        return RuntimeRow(
            runtime_id=runtime_id, base_url=f"http://127.0.0.1:{self.port}", token=FAKE_TOKEN, read_timeout=1.0
        )

    def close(self) -> None:
        """Release the port."""
        self._sock.close()


@pytest.fixture(scope="session")
def fake_runtimes() -> Iterator[FakeRuntimeServer]:
    """The fake runtime server (runtimes are added by whoever needs them)."""
    server = FakeRuntimeServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[BlackholeListener]:
    """A listener that accepts and never answers."""
    listener = BlackholeListener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(scope="session")
def refused_port() -> Iterator[RefusedPort]:
    """A port where connecting is refused."""
    port = RefusedPort()
    try:
        yield port
    finally:
        port.close()


# Every fake runtime of the shared site: id -> behaviour. One runtime per fault, so breakers stay apart.
SITE_FAKES: dict[str, Behaviour] = {
    "ok": Behaviour(),
    "sync-remote": Behaviour(),
    "auth-worker": Behaviour(worker="401"),
    "auth-summary": Behaviour(summary="401"),
    "err500-worker": Behaviour(worker="500"),
    "err500-summary": Behaviour(summary="500"),
    "notjson-worker": Behaviour(worker="not_json"),
    "notjson-summary": Behaviour(summary="not_json"),
    "huge-worker": Behaviour(worker="huge"),
    "huge-declared-worker": Behaviour(worker="huge_declared"),
    "huge-summary": Behaviour(summary="huge"),
    "drip-worker": Behaviour(worker="drip"),
    "drip-summary": Behaviour(summary="drip"),
    "hang-worker": Behaviour(worker="hang"),
    "ssecut": Behaviour(worker="sse_cut"),
}
# The slow drip's total deadline is connect + read timeout: a short connect timeout keeps the test quick.
SITE_CONNECT_TIMEOUTS = {"drip-worker": 0.5, "drip-summary": 0.5}
SITE_BLACKHOLES = ("blackhole", "blackhole-load")
SITE_REFUSED = ("refused",)
# Embedded rows for test_sync_while_serving: one that stays disabled, and a disabled sentinel per test.
SITE_DISABLED = ("sync-disabled", "sync-sentinel-1", "sync-sentinel-2")


@dataclass
class FaultSite:
    """The shared Backend and what its runtime rows point at."""

    backend: FaultBackend
    fakes: FakeRuntimeServer
    blackhole: BlackholeListener
    refused: RefusedPort
    rows: dict[str, RuntimeRow]


@pytest.fixture(scope="session")
def fault_site(
    tmp_path_factory: pytest.TempPathFactory,
    fault_db: FaultDatabase,
    fake_runtimes: FakeRuntimeServer,
    blackhole: BlackholeListener,
    refused_port: RefusedPort,
) -> Iterator[FaultSite]:
    """One Backend for the session: the embedded runtime plus a remote row per fault (read timeout 1 s)."""
    rows = [RuntimeRow(runtime_id="embedded", kind="embedded", display_name="Embedded")]
    rows += [RuntimeRow(runtime_id=runtime_id, kind="embedded", enabled=False) for runtime_id in SITE_DISABLED]
    rows += [
        fake_runtimes.add(runtime_id, behaviour, connect_timeout=SITE_CONNECT_TIMEOUTS.get(runtime_id, 2.0))
        for runtime_id, behaviour in SITE_FAKES.items()
    ]
    rows += [blackhole.row(runtime_id) for runtime_id in SITE_BLACKHOLES]
    rows += [refused_port.row(runtime_id) for runtime_id in SITE_REFUSED]
    launcher = BackendLauncher(tmp_path_factory.mktemp("fault-site"), fault_db)
    try:
        backend = launcher.start(rows=rows)
        yield FaultSite(
            backend=backend,
            fakes=fake_runtimes,
            blackhole=blackhole,
            refused=refused_port,
            rows={row.runtime_id: row for row in rows},
        )
    finally:
        launcher.close()
