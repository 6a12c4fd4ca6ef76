"""Start the reference worker-runtime as a real process on 127.0.0.1 for tests, and read its SSE streams.

``start_runtime`` runs ``python -m worker_runtime serve`` with the token in an environment variable, waits
(with a deadline) for the startup line and parses the port from it. Every process started here is
remembered, so a fixture finalizer can kill what a test left behind (``kill_spawned_since``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_AGENT = REPO_ROOT / "fixtures" / "agents" / "example_agent.py"
DEFAULT_TOKEN = "test-token-3f9c2a71d4e8b605"
TOKEN_ENV = "YOI_TEST_RUNTIME_TOKEN"
READY_RE = re.compile(r"^yoi-runtime: runtime (\S+) listening on (https?)://(\S+):(\d+) \(store: (\S+)\)$")
# One line of the runtime's own request log (``--access-log``, uvicorn's access format).
REQUEST_LINE_RE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+) HTTP/[\d.]+" (\d{3})')

_spawned: list[subprocess.Popen[str]] = []
_spawned_lock = threading.Lock()


def example_config(*, event_retention: int | None = None, extra: str = "") -> str:
    """A runtime config with the ``example-agent`` profile (fixtures/agents/example_agent.py, this Python)."""
    lines = ['display_name = "Test runtime"']
    if event_retention is not None:
        lines.append(f"event_retention = {event_retention}")
    lines += [
        extra,
        "[[profile]]",
        'name = "example-agent"',
        'description = "The example agent of fixtures/agents"',
        f"command = [{json.dumps(sys.executable)}, {json.dumps(str(EXAMPLE_AGENT))}]",
        "stop_grace_seconds = 5.0",
    ]
    return "\n".join(lines) + "\n"


class _OutputReader:
    """Collects a pipe's lines on a thread; lets a caller wait for a matching line with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str] | None:
        """The first line matching ``pattern`` before ``deadline``; None at EOF or timeout."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                return None
            match = pattern.match(line)
            if match:
                return match
        return None

    def text(self, timeout: float = 2.0) -> str:
        """Everything read so far (after waiting briefly for the pipe to end)."""
        self._thread.join(timeout)
        return "\n".join(self.lines)


@dataclass
class RuntimeProcess:
    """A running ``worker_runtime`` process; ``stop``/``kill`` it, or ``restart`` it on the same port."""

    runtime_id: str
    base_url: str
    token: str | None
    store: Path
    config_path: Path | None
    port: int
    proc: subprocess.Popen[str]
    extra_args: tuple[str, ...] = ()
    ready_timeout: float = 20.0
    stdout: _OutputReader | None = field(default=None, repr=False)
    stderr: _OutputReader | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        """The absolute URL of a path like ``/v1/runtime``."""
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        """The Authorization header (empty without a token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL and raise if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"runtime did not stop within {timeout}s after SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL and wait."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> RuntimeProcess:
        """A new process on the same port, store, token and config (this one must have ended)."""
        if self.proc.poll() is None:
            raise RuntimeError("stop or kill the runtime before restarting it")
        return _spawn(
            runtime_id=self.runtime_id,
            store=self.store,
            config_path=self.config_path,
            token=self.token,
            port=self.port,
            extra_args=self.extra_args,
            ready_timeout=self.ready_timeout,
        )

    def stderr_text(self) -> str:
        """What the process wrote on stderr so far."""
        return self.stderr.text(0.5) if self.stderr else ""

    def requests_logged(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request in the runtime's own log so far (``--access-log``)."""
        lines = list(self.stdout.lines) if self.stdout else []
        found = [REQUEST_LINE_RE.search(line) for line in lines]
        return [(match.group(1), match.group(2), int(match.group(3))) for match in found if match]


def start_runtime(
    tmp_dir: Path,
    *,
    runtime_id: str = "rt-test",
    token: str | None = DEFAULT_TOKEN,
    config_text: str | None = None,
    port: int = 0,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 20,
) -> RuntimeProcess:
    """Start a runtime with its store in ``tmp_dir/store`` (and config in ``tmp_dir/runtime.toml``)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config_text is not None:
        config_path = tmp_dir / "runtime.toml"
        config_path.write_text(config_text, "utf-8")
    return _spawn(
        runtime_id=runtime_id,
        store=tmp_dir / "store",
        config_path=config_path,
        token=token,
        port=port,
        extra_args=tuple(extra_args),
        ready_timeout=ready_timeout,
    )


def serve_command(
    *, runtime_id: str, store: Path, config_path: Path | None, token: str | None, port: int, extra: Sequence[str]
) -> list[str]:
    """The command line of a test runtime."""
    command = [sys.executable, "-m", "worker_runtime", "serve", "--bind", f"127.0.0.1:{port}"]
    command += ["--store", str(store), "--runtime-id", runtime_id]
    if config_path is not None:
        command += ["--config", str(config_path)]
    command += ["--token-env", TOKEN_ENV] if token is not None else ["--insecure-no-auth"]
    return command + list(extra)


def runtime_env(token: str | None) -> dict[str, str]:
    """The environment of a test runtime: this one, plus the token variable."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(
    *,
    runtime_id: str,
    store: Path,
    config_path: Path | None,
    token: str | None,
    port: int,
    extra_args: tuple[str, ...],
    ready_timeout: float,
) -> RuntimeProcess:
    command = serve_command(
        runtime_id=runtime_id, store=store, config_path=config_path, token=token, port=port, extra=extra_args
    )
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=runtime_env(token),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _spawned_lock:
        _spawned.append(proc)
    stdout, stderr = _OutputReader(proc.stdout), _OutputReader(proc.stderr)
    match = stdout.wait_for(READY_RE, time.monotonic() + ready_timeout)
    if match is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        raise RuntimeError(
            f"runtime did not become ready (exit {proc.returncode}); stderr:\n{stderr.text()[-4000:]}"
        )
    scheme, host, bound_port = match.group(2), match.group(3), int(match.group(4))
    return RuntimeProcess(
        runtime_id=runtime_id,
        base_url=f"{scheme}://{host}:{bound_port}",
        token=token,
        store=store,
        config_path=config_path,
        port=bound_port,
        proc=proc,
        extra_args=extra_args,
        ready_timeout=ready_timeout,
        stdout=stdout,
        stderr=stderr,
    )


def spawned_count() -> int:
    """How many processes this module has started (a marker for ``kill_spawned_since``)."""
    with _spawned_lock:
        return len(_spawned)


def kill_spawned_since(marker: int) -> None:
    """SIGKILL every process started after ``marker`` that is still running."""
    with _spawned_lock:
        procs = _spawned[marker:]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


# --------------------------------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SseFrame:
    """One parsed SSE frame; ``comment`` frames (``: ping``) have no event."""

    id: str | None
    event: str | None
    data: str | None
    comment: str | None = None

    @property
    def seq(self) -> int:
        """The frame's id as an int."""
        assert self.id is not None
        return int(self.id)

    def json(self) -> Any:
        """The data line, parsed."""
        assert self.data is not None
        return json.loads(self.data)


class SseReader:
    """Parses frames from a streaming ``requests`` response (opened with ``stream=True`` and a read timeout)."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self._chunks: Iterator[bytes] = response.iter_content(chunk_size=None)
        self._buffer = b""
        self.closed = False

    def next_frame(self) -> SseFrame | None:
        """The next frame, or None when the server closed the stream (raises on a read timeout)."""
        while b"\n\n" not in self._buffer:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.closed = True
                return None
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n\n", 1)
        fields: dict[str, str] = {}
        comment = None
        for line in raw.decode("utf-8").split("\n"):
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        return SseFrame(id=fields.get("id"), event=fields.get("event"), data=fields.get("data"), comment=comment)

    def events(self, *, count: int | None = None, until: str | None = None, timeout: float = 10) -> list[SseFrame]:
        """Event frames (pings skipped) until ``count`` were read, an ``until`` kind arrived, or the stream
        closed; fails when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        frames: list[SseFrame] = []
        if count is not None and count <= 0:
            return frames
        while time.monotonic() < deadline:
            frame = self.next_frame()
            if frame is None:
                return frames
            if frame.event is None:
                continue
            frames.append(frame)
            if (count is not None and len(frames) >= count) or (until is not None and frame.event == until):
                return frames
        raise AssertionError(f"SSE: timed out after {len(frames)} events")

    def close(self) -> None:
        """Drop the connection."""
        self.response.close()


# --------------------------------------------------------------------------------------------- HTTP

HTTP_TIMEOUT = (5, 30)
ECHO_CREATE: dict[str, Any] = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "echo"}}


def api_get(rt: RuntimeProcess, path: str, **kwargs: Any) -> requests.Response:
    """GET with the runtime's token (``headers=`` adds to it) and bounded timeouts."""
    headers = {**rt.headers(), **kwargs.pop("headers", {})}
    return requests.get(rt.url(path), headers=headers, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs)


def api_post(rt: RuntimeProcess, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
    """POST a JSON body (None: no body) with the runtime's token and bounded timeouts."""
    headers = {**rt.headers(), **kwargs.pop("headers", {})}
    if body is not None:
        kwargs["json"] = body
    return requests.post(rt.url(path), headers=headers, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs)


def create_worker(rt: RuntimeProcess, body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Create a worker (echo by default) and return its detail."""
    response = api_post(rt, "/v1/workers", {**(body or ECHO_CREATE), **extra})
    assert response.status_code == 201, response.text
    worker: dict[str, Any] = response.json()["worker"]
    return worker


def worker_detail(rt: RuntimeProcess, worker_id: str) -> dict[str, Any]:
    """GET a worker's detail."""
    response = api_get(rt, f"/v1/workers/{worker_id}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()["worker"]
    return detail


def runtime_summary(rt: RuntimeProcess) -> dict[str, Any]:
    """GET the runtime summary."""
    response = api_get(rt, "/v1/runtime")
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()["runtime"]
    return summary


def open_events(
    rt: RuntimeProcess,
    worker_id: str,
    *,
    after: int | None = None,
    last_event_id: int | str | None = None,
    read_timeout: float = 10,
) -> SseReader:
    """Open a worker's event stream (``after`` as query, ``last_event_id`` as header); checks the 200."""
    headers = rt.headers()
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    params = {"after": str(after)} if after is not None else None
    response = requests.get(
        rt.url(f"/v1/workers/{worker_id}/events"),
        headers=headers,
        params=params,
        stream=True,
        timeout=(5, read_timeout),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return SseReader(response)


def wait_until(predicate: Any, *, timeout: float = 10, interval: float = 0.02, message: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s {message}".strip())
        time.sleep(interval)
