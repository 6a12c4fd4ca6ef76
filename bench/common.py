"""What every benchmark shares: processes on 127.0.0.1, readiness waits, load generators, stats and output.

Every child (runtime, daphne, manage.py) is started through ``Processes``, which always kills what it
started: on a normal exit, an exception, Ctrl-C or SIGTERM (and, on Linux, the kernel kills them if this
process dies: ``PR_SET_PDEATHSIG``). Children write to log files in the run's work directory, never to
pipes that could fill up and stall them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = "127.0.0.1"
RUNTIME_TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_RUNTIME"
READY_RE = re.compile(r"^yoi-runtime: runtime (\S+) listening on http://(\S+):(\d+) ")
BENCH_USER = "bench"
# Set by bench.all so that every script reuses one collectstatic output and one migrated database.
CACHE_ENV = "YOI_BENCH_CACHE"
PR_SET_PDEATHSIG = 1
_T0 = time.monotonic()


def log(message: str) -> None:
    """A progress line on stderr (stdout carries only the JSON result and the ratio line)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- processes


def raise_fd_limit(target: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (children inherit it) to ``target`` or the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it if the bench process dies.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    """A process this benchmark started, with its combined stdout/stderr in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while it runs."""
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of its output (for error messages)."""
        try:
            return self.log.read_text("utf-8", "replace")[-chars:]
        except OSError:
            return ""

    def rss_kb(self) -> int:
        """Resident set size in KiB (0 once it ended)."""
        return rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far."""
        return cpu_seconds(self.pid)


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc (0 when it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (NaN when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def self_cpu_seconds() -> float:
    """CPU time of this process (all threads): the load generator's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Processes:
    """Starts children and always stops them: SIGTERM to each process group, then SIGKILL after a grace."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path = REPO_ROOT) -> Child:
        """Start ``argv`` in its own session, output to ``<log_dir>/<name>.log``."""
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        child = Child(name=name, proc=proc, log=log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> None:
        """Stop one child (its whole process group)."""
        _signal_group(child.proc, signal.SIGTERM)
        try:
            child.proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(child.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)
        # The group may hold grandchildren that outlived the leader.
        _signal_group(child.proc, signal.SIGKILL, even_if_ended=True)

    def stop_all(self) -> None:
        """Stop every child still running, newest first."""
        for child in reversed(self.children):
            self.stop(child)
        self.children.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int, *, even_if_ended: bool = False) -> None:
    if proc.poll() is not None and not even_if_ended:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_for_line(child: Child, pattern: re.Pattern[str], *, timeout: float) -> re.Match[str]:
    """The first line of the child's log matching ``pattern``; raises when it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in child.log.read_text("utf-8", "replace").splitlines():
            match = pattern.match(line)
            if match:
                return match
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready within {timeout}s:\n{child.log_tail()}")


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned); raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment minus Django/Yoi settings that could leak in, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "YOI_", "DATABASE_URL", "REDIS"))}
    if CACHE_ENV in os.environ:
        env[CACHE_ENV] = os.environ[CACHE_ENV]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------- runtime


@dataclass
class RuntimeProc:
    """A running reference runtime."""

    runtime_id: str
    base_url: str
    token: str
    child: Child

    @property
    def port(self) -> int:
        """Its TCP port."""
        return int(urlsplit(self.base_url).port or 0)

    def headers(self) -> dict[str, str]:
        """The bearer header."""
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> HttpClient:
        """A new keep-alive HTTP client for this runtime (one per thread)."""
        return HttpClient(self.base_url, self.headers())

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request with a fresh connection; raises unless 2xx."""
        response = requests.request(
            method, self.base_url + path, headers=self.headers(), json=body, timeout=(5, 30)
        )
        if response.status_code // 100 != 2:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def create_worker(self, profile: str, options: dict[str, Any] | None = None) -> str:
        """Create a builtin worker directly on the runtime; return its id."""
        body: dict[str, Any] = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": profile}}
        if options:
            body["options"] = options
        return str(self.call("POST", "/v1/workers", body)["worker"]["worker_id"])

    def last_seq(self, worker_id: str) -> int:
        """The worker's last event seq."""
        return int(self.call("GET", f"/v1/workers/{worker_id}")["worker"]["last_seq"] or 0)

    def send_input(self, worker_id: str, content: str = "go") -> None:
        """POST an input directly to the runtime."""
        self.call("POST", f"/v1/workers/{worker_id}/input", {"kind": "user", "content": content})

    def streams_open(self) -> int:
        """``event_streams_open`` of the runtime summary."""
        return int(self.call("GET", "/v1/runtime")["runtime"].get("event_streams_open") or 0)


def start_runtime(procs: Processes, workdir: Path, *, runtime_id: str, memory: bool = True) -> RuntimeProc:
    """Start ``python -m worker_runtime serve`` on a free port and wait for its ready line."""
    token = secrets.token_urlsafe(24)
    argv = [PY, "-m", "worker_runtime", "serve", "--bind", f"{HOST}:0", "--runtime-id", runtime_id]
    argv += ["--token-env", RUNTIME_TOKEN_ENV]
    if memory:
        argv.append("--memory")
    else:
        store = workdir / f"store-{runtime_id}"
        argv += ["--store", str(store)]
    child = procs.spawn(f"runtime-{runtime_id}", argv, env=child_env({RUNTIME_TOKEN_ENV: token}))
    match = wait_for_line(child, READY_RE, timeout=30)
    return RuntimeProc(
        runtime_id=runtime_id, base_url=f"http://{match.group(2)}:{match.group(3)}", token=token, child=child
    )


# --------------------------------------------------------------------------------------------- backend


@dataclass(frozen=True)
class RemoteSpec:
    """One ``[[runtime]]`` entry of the generated runtimes config."""

    runtime_id: str
    base_url: str
    token_env: str
    connect_timeout: float = 2.0
    read_timeout: float = 10.0

    def toml(self) -> str:
        """The TOML table."""
        return (
            "[[runtime]]\n"
            f'runtime_id = "{self.runtime_id}"\n'
            f'display_name = "Bench {self.runtime_id}"\n'
            'kind = "remote"\n'
            f'base_url = "{self.base_url}"\n'
            f'token_ref = "env:{self.token_env}"\n'
            f"connect_timeout = {self.connect_timeout}\n"
            f"read_timeout = {self.read_timeout}\n"
            "enabled = true\n"
        )


@dataclass
class Backend:
    """A running Backend (daphne) with a logged-in session."""

    base_url: str
    child: Child
    env: dict[str, str]
    session_id: str
    csrf_token: str

    @property
    def origin(self) -> str:
        """The Origin a browser on this Backend sends."""
        return self.base_url

    def cookie(self) -> str:
        """The Cookie header of the logged-in browser."""
        return f"sessionid={self.session_id}; csrftoken={self.csrf_token}"

    def headers(self) -> dict[str, str]:
        """Session auth headers (the CSRF header is what unsafe methods need; harmless on GET)."""
        return {"Cookie": self.cookie(), "X-CSRFToken": self.csrf_token}

    def client(self) -> HttpClient:
        """A new keep-alive HTTP client carrying the session (one per thread)."""
        return HttpClient(self.base_url, self.headers())

    def ws_url(self, runtime_id: str, worker_id: str, *, after: int | None) -> str:
        """The event socket URL of a worker."""
        base = self.base_url.replace("http://", "ws://", 1)
        query = f"?after={after}" if after is not None else ""
        return f"{base}/ws/runtimes/{runtime_id}/workers/{worker_id}/events/{query}"

    def manage(self, *args: str, timeout: float = 120) -> str:
        """Run ``manage.py`` with the Backend's environment; return its stdout (raise on failure)."""
        return run_manage(self.env, *args, timeout=timeout)


def run_manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``python manage.py <args>`` with ``env``; raise with its output when it fails."""
    done = subprocess.run(
        [PY, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def _cache_dir(workdir: Path) -> Path:
    root = os.environ.get(CACHE_ENV)
    path = Path(root) if root else workdir / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def backend_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The Backend's environment: production mode, SQLite in ``workdir``, shared static files, no command rate."""
    cache = _cache_dir(workdir)
    return child_env(
        {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "YOI_DATA_DIR": str(workdir / "data"),
            "DJANGO_STATIC_ROOT": str(cache / "static"),
            # Benchmarks measure the proxy, not the per-user command rate (a load generator would meet it).
            "YOI_RATE_COMMANDS": "0",
            # The fan-out benches open 1,000 event sockets as one user: no per-user cap.
            "YOI_MAX_SOCKETS_PER_USER": "0",
            **(extra or {}),
        }
    )


def _prepare_database(env: dict[str, str], workdir: Path) -> str:
    """Migrate + create the bench user once per cache, copy that database for this Backend; the password."""
    import fcntl

    cache = _cache_dir(workdir)
    template = cache / "template.sqlite3"
    password_file = cache / "password.txt"
    with (cache / ".template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            password = secrets.token_urlsafe(16)
            building = cache / "building.sqlite3"
            build_env = {**env, "DATABASE_URL": f"sqlite:///{building}"}
            run_manage(build_env, "migrate", "--noinput", "-v", "0")
            run_manage(
                {
                    **build_env,
                    "DJANGO_SUPERUSER_USERNAME": BENCH_USER,
                    "DJANGO_SUPERUSER_PASSWORD": password,
                    "DJANGO_SUPERUSER_EMAIL": "bench@example.invalid",
                },
                "createsuperuser",
                "--noinput",
            )
            password_file.write_text(password, "utf-8")
            building.rename(template)
        if not (cache / "static" / ".collected").exists():
            run_manage(env, "collectstatic", "--noinput", "-v", "0")
            (cache / "static" / ".collected").touch()
    shutil.copyfile(template, workdir / "db.sqlite3")
    return password_file.read_text("utf-8")


def start_backend(
    procs: Processes,
    workdir: Path,
    *,
    runtimes: Sequence[RemoteSpec],
    tokens: dict[str, str],
    extra_env: dict[str, str] | None = None,
    name: str = "backend",
) -> Backend:
    """Migrate, collect static files, sync the runtimes config, start daphne, log a browser in."""
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    env = backend_env(workdir, {**tokens, **(extra_env or {})})
    log(f"{name}: preparing the database")
    password = _prepare_database(env, workdir)
    config = workdir / "runtimes.toml"
    config.write_text("\n".join(spec.toml() for spec in runtimes), "utf-8")
    if runtimes:
        log(f"{name}: sync_runtimes ({len(runtimes)} runtimes)")
        run_manage(env, "sync_runtimes", "--file", str(config))
    log(f"{name}: starting daphne")
    child, base_url = start_daphne(procs, "yoi_backend.asgi:application", env=env, name=name)
    log(f"{name}: ready at {base_url}")
    session_id, csrf = login(base_url, BENCH_USER, password)
    return Backend(base_url=base_url, child=child, env=env, session_id=session_id, csrf_token=csrf)


def start_runtime_and_backend(
    procs: Processes, workdir: Path, *, runtime_id: str, token_env: str
) -> tuple[RuntimeProc, Backend]:
    """One reference runtime (memory store) and a Backend that has it registered as a remote runtime."""
    rt = start_runtime(procs, workdir, runtime_id=runtime_id)
    backend = start_backend(
        procs, workdir, runtimes=[RemoteSpec(runtime_id, rt.base_url, token_env)], tokens={token_env: rt.token}
    )
    return rt, backend


def start_daphne(procs: Processes, app: str, *, env: dict[str, str], name: str) -> tuple[Child, str]:
    """Run ``python -m daphne`` on a free port (retrying a port race); wait until it answers HTTP."""
    for _attempt in range(3):
        port = free_port()
        child = procs.spawn(name, [PY, "-m", "daphne", "-b", HOST, "-p", str(port), app], env=env)
        base_url = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and child.alive():
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                conn.request("GET", "/api/v1/runtimes/")
                conn.getresponse().read()
                conn.close()
                return child, base_url
            time.sleep(0.1)
        if child.alive():
            procs.stop(child)
            raise RuntimeError(f"{name} did not answer within 40s:\n{child.log_tail()}")
        if "Address already in use" not in child.log_tail():
            raise RuntimeError(f"{name} exited with {child.proc.returncode}:\n{child.log_tail()}")
    raise RuntimeError(f"{name}: no free port after 3 attempts")


def login(base_url: str, username: str, password: str) -> tuple[str, str]:
    """Log in through /admin/login/ like a browser; return (sessionid, csrftoken)."""
    with requests.Session() as session:
        url = f"{base_url}/admin/login/"
        page = session.get(url, timeout=10)
        page.raise_for_status()
        csrf = session.cookies.get("csrftoken")
        if not csrf:
            raise RuntimeError("login page set no csrftoken cookie")
        answer = session.post(
            url,
            data={"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"},
            headers={"Referer": url},
            allow_redirects=False,
            timeout=10,
        )
        session_id = session.cookies.get("sessionid")
        if answer.status_code != 302 or not session_id:
            raise RuntimeError(f"login failed: {answer.status_code}")
        return session_id, session.cookies.get("csrftoken") or csrf


# --------------------------------------------------------------------------------------------- HTTP client


class HttpClient:
    """A minimal keep-alive HTTP/1.1 client (stdlib ``http.client``): light, so it adds little to latency.

    Not thread-safe: one per load-generating thread.
    """

    def __init__(self, base_url: str, headers: dict[str, str], *, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or HOST
        self.port = int(parts.port or 80)
        self.headers = dict(headers)
        self.timeout = timeout
        self.reconnects = 0
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.connect()
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Send one request (``body`` is JSON-encoded); return (status, body bytes)."""
        payload = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.close()
                self.reconnects += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------------------------- stats


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0-100) of sorted values, linearly interpolated; NaN when empty."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, mean, max of latency samples (same unit as given), rounded."""
    values = sorted(samples)
    if not values:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(sum(values) / len(values), 3),
        "max": round(values[-1], 3),
    }


def ratio(value: float, base: float) -> float:
    """value / base, NaN when the base is zero or missing."""
    if not base or math.isnan(base) or math.isnan(value):
        return math.nan
    return round(value / base, 3)


# --------------------------------------------------------------------------------------------- load generators

Call = Callable[[], None]


def timed_ms(call: Call) -> float:
    """Run ``call`` once; its duration in milliseconds."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000.0


def warm_up(calls: dict[str, Call], *, count: int) -> None:
    """Run every call ``count`` times, results discarded (connections, caches, lazy imports)."""
    for _ in range(count):
        for call in calls.values():
            call()


def alternating_sequential(calls: dict[str, Call], *, count: int, block: int = 50) -> dict[str, list[float]]:
    """Sequential latencies of every call, run in alternating blocks so that drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    while any(len(values) < count for values in samples.values()):
        for name, call in calls.items():
            todo = min(block, count - len(samples[name]))
            samples[name].extend(timed_ms(call) for _ in range(todo))
    return samples


@dataclass
class LoadResult:
    """The outcome of a closed-loop run."""

    clients: int
    duration: float
    latencies_ms: list[float]
    errors: int

    def to_json(self) -> dict[str, Any]:
        """Throughput (requests/s), latency summary and errors."""
        return {
            "clients": self.clients,
            "throughput_rps": round(len(self.latencies_ms) / self.duration, 1) if self.duration else math.nan,
            "latency_ms": summarize(self.latencies_ms),
            "errors": self.errors,
        }


def closed_loop(factory: Callable[[], Call], *, clients: int, duration: float, warmup: float = 0.5) -> LoadResult:
    """``clients`` threads, each with its own call from ``factory``, back to back for ``duration`` seconds."""
    barrier = threading.Barrier(clients + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    window: list[float] = [0.0, 0.0]

    def worker() -> None:
        call = factory()
        mine: list[float] = []
        failed = 0
        barrier.wait()
        warm_until = window[0]
        while time.perf_counter() < warm_until:
            with contextlib.suppress(Exception):
                call()
        end = window[1]
        while True:
            started = time.perf_counter()
            if started >= end:
                break
            try:
                call()
            except Exception:
                failed += 1
                continue
            finished = time.perf_counter()
            if finished <= end:
                mine.append((finished - started) * 1000.0)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window[0], window[1] = now + warmup, now + warmup + duration
    barrier.wait()
    for thread in threads:
        thread.join(duration + warmup + 60)
    return LoadResult(clients=clients, duration=duration, latencies_ms=latencies, errors=errors[0])


def checked(client: HttpClient, method: str, path: str, body: Any = None, ok: Sequence[int] = (200,)) -> Call:
    """A call that sends one request and raises unless the status is in ``ok``."""

    def call() -> None:
        status, data = client.request(method, path, body)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: {status} {data[:200]!r}")

    return call


# --------------------------------------------------------------------------------------------- stub listeners


@dataclass
class StubServers:
    """Listeners on 127.0.0.1 that stand in for runtimes, served by one asyncio loop on a thread.

    - *healthy*: answers ``GET /v1/runtime`` with a summary naming its runtime_id (and 404 otherwise);
    - *blackhole*: accepts connections and never answers (requests hang until the client's read timeout);
    - *refusing*: accepts and at once resets the connection (the client sees a connection reset).

    Every request and every connection a dead listener accepted is counted, so a benchmark can assert
    "no upstream call".
    """

    healthy: dict[str, int] = field(default_factory=dict)
    blackholes: dict[str, int] = field(default_factory=dict)
    refusing: dict[str, int] = field(default_factory=dict)
    requests_seen: int = 0
    blackhole_accepts: int = 0
    refusing_accepts: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _servers: list[asyncio.base_events.Server] = field(default_factory=list)
    _held: list[asyncio.StreamWriter] = field(default_factory=list)

    def start(
        self, *, healthy: Sequence[str] = (), blackholes: Sequence[str] = (), refusing: Sequence[str] = ()
    ) -> None:
        """Open the listeners (returns once they listen)."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="stub-servers")
        self._thread.start()
        ready.wait(10)
        future = asyncio.run_coroutine_threadsafe(self._open(healthy, blackholes, refusing), self._loop)
        future.result(30)

    def url(self, runtime_id: str) -> str:
        """The base URL of a stub runtime."""
        port = self.healthy.get(runtime_id) or self.blackholes.get(runtime_id) or self.refusing[runtime_id]
        return f"http://{HOST}:{port}"

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    async def _listen(self, handler: Callable[..., Any]) -> int:
        server = await asyncio.start_server(handler, HOST, 0, backlog=512)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _open(self, healthy: Sequence[str], blackholes: Sequence[str], refusing: Sequence[str]) -> None:
        for runtime_id in healthy:
            self.healthy[runtime_id] = await self._listen(
                lambda r, w, rid=runtime_id: self._serve_runtime(rid, r, w)
            )
        for runtime_id in blackholes:
            self.blackholes[runtime_id] = await self._listen(self._hold)
        for runtime_id in refusing:
            self.refusing[runtime_id] = await self._listen(self._reset)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.blackhole_accepts += 1
        self._held.append(writer)  # never read, never answered, closed only at shutdown

    async def _reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.refusing_accepts += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _serve_runtime(
        self, runtime_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests_seen += 1
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                if method == "GET" and path.split("?")[0] == "/v1/runtime":
                    status, body = "200 OK", {"runtime": stub_summary(runtime_id)}
                else:
                    status, body = "404 Not Found", {"error": {"code": "worker_not_found", "message": "stub"}}
                payload = json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def calls(self) -> int:
        """Requests answered plus connections accepted by dead listeners (each is an upstream call)."""
        return self.requests_seen + self.blackhole_accepts + self.refusing_accepts

    def stop(self) -> None:
        """Close every listener and held connection, stop the loop."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            for writer in self._held:
                writer.close()
            for server in self._servers:
                server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None


def stub_summary(runtime_id: str) -> dict[str, Any]:
    """A protocol v1 RuntimeSummary for a stub runtime."""
    return {
        "runtime_id": runtime_id,
        "display_name": f"Stub {runtime_id}",
        "backend": "memory",
        "status": "running",
        "worker_count": 0,
        "active_worker_count": 0,
        "stopped_worker_count": 0,
        "cancelled_worker_count": 0,
        "limits": {"max_transcript_projection_items": 256, "max_input_bytes": 1048576},
        "profiles": [
            {"name": "builtin:echo", "description": "echo"},
            {"name": "builtin:burst", "description": "burst"},
        ],
        "protocol_version": "1",
        "event_streams_open": 0,
    }


# ---------------------------------------------------------------------------------- WebSocket / SSE watchers


@dataclass
class StreamTally:
    """What one event-stream consumer saw of a run: seqs, per-event latency, resets, errors."""

    seqs: set[int] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: int = 0
    resets: int = 0
    reset_floor: int = 0
    errors: list[str] = field(default_factory=list)
    first_recv: float = 0.0
    last_recv: float = 0.0
    last_seq: int = 0
    frames: int = 0

    def record_event(self, seq: int, ts: float | None, now: float) -> None:
        """One event frame received at ``now`` (wall clock)."""
        self.frames += 1
        if seq in self.seqs:
            self.duplicates += 1
            return
        if seq < self.last_seq:
            self.out_of_order += 1
        self.seqs.add(seq)
        self.last_seq = max(self.last_seq, seq)
        if not self.first_recv:
            self.first_recv = now
        self.last_recv = now
        if ts is not None:
            self.latencies_ms.append((now - ts) * 1000.0)

    def record_reset(self, earliest_seq: int) -> None:
        """A reset: events before ``earliest_seq`` that did not arrive were skipped on purpose."""
        self.resets += 1
        self.reset_floor = max(self.reset_floor, earliest_seq)

    def lost(self, first: int, last: int) -> int:
        """Events in ``first..last`` neither received nor covered by a reset."""
        return sum(1 for s in range(first, last + 1) if s not in self.seqs and s >= self.reset_floor)

    def skipped(self, first: int, last: int) -> int:
        """Events in ``first..last`` not received but covered by a reset."""
        return sum(1 for s in range(first, last + 1) if s not in self.seqs and s < self.reset_floor)


class WsWatcher:
    """One browser on a worker's event socket (websockets, asyncio); counts into a ``StreamTally``.

    ``connected`` is set by the first ``state: connected`` frame; ``done`` once an event of kind
    ``done_event`` with a seq above ``after`` arrives (or the socket closes).
    """

    def __init__(
        self, url: str, *, cookie: str | None, origin: str, after: int, done_event: str = "run_end"
    ) -> None:
        self.url = url
        self.cookie = cookie
        self.origin = origin
        self.after = after
        self.done_event = done_event
        self.tally = StreamTally()
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.close_code: int | None = None
        self.ws: Any = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, *, timeout: float = 30.0) -> None:
        """Handshake, then start reading on a task."""
        from websockets.asyncio.client import connect

        headers = [("Cookie", self.cookie)] if self.cookie else []
        self.ws = await connect(
            self.url,
            origin=self.origin,  # type: ignore[arg-type]
            additional_headers=headers,
            ping_interval=None,  # daphne pings; the library answers
            open_timeout=timeout,
            max_queue=4096,
            max_size=2**22,
        )
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        tally = self.tally
        loads = json.loads
        try:
            async for message in self.ws:
                now = time.time()
                frame = loads(message)
                kind = frame.get("type")
                if kind == "event":
                    seq = frame["seq"]
                    tally.record_event(seq, frame.get("ts"), now)
                    if frame.get("event") == self.done_event and seq > self.after:
                        self.done.set()
                elif kind == "state":
                    if frame.get("upstream") == "connected":
                        self.connected.set()
                elif kind == "reset":
                    tally.record_reset(int(frame.get("earliest_seq") or 0))
                elif kind == "error":
                    tally.errors.append(str(frame.get("error", {}).get("code")))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = getattr(self.ws, "close_code", None)
            self.connected.set()
            self.done.set()

    async def send(self, payload: dict[str, Any]) -> None:
        """Send a JSON text frame (only the bare benchmark app listens)."""
        await self.ws.send(json.dumps(payload))

    async def close(self) -> None:
        """Close the socket and stop reading."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def open_watchers(watchers: Sequence[WsWatcher], *, parallel: int = 32, timeout: float = 60.0) -> None:
    """Open every watcher, at most ``parallel`` handshakes at a time (daphne's listen backlog is finite)."""
    gate = asyncio.Semaphore(parallel)

    async def one(watcher: WsWatcher) -> None:
        async with gate:
            await watcher.open(timeout=timeout)

    await asyncio.gather(*(one(w) for w in watchers))


async def close_watchers(watchers: Sequence[WsWatcher]) -> None:
    """Close every watcher (in parallel)."""
    await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)


async def wait_all(events: Sequence[asyncio.Event], *, timeout: float) -> int:
    """Wait until every event is set or ``timeout`` passes; return how many are set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout)
    return sum(1 for e in events if e.is_set())


# --------------------------------------------------------------------------------------------- targets and output


@dataclass(frozen=True)
class Target:
    """One target of docs/performance.md: ``value <op> limit``."""

    name: str
    value: float
    op: str  # "<=" or ">="
    limit: float

    @property
    def met(self) -> bool:
        """Whether the measured value meets the target (NaN never does)."""
        if math.isnan(self.value):
            return False
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def tag(self) -> str:
        """``[target <name> <op> <limit>: MET]``."""
        return f"[target {self.name} {self.op} {self.limit:g}: {'MET' if self.met else 'MISSED'}]"

    def to_json(self) -> dict[str, Any]:
        """For the JSON output."""
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit, "met": self.met}


@dataclass
class BenchOptions:
    """Command-line options every script takes."""

    quick: bool
    workdir: Path
    json_out: Path | None
    keep: bool


def machine() -> dict[str, Any]:
    """Where this ran."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        # Other work on the machine skews every figure: the 1-minute load average when the script began.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def fmt(value: float, digits: int = 2) -> str:
    """A number for the ratio line (``nan`` stays readable)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def signed_ms(value: float) -> str:
    """``+1.9 ms`` / ``-0.3 ms``."""
    return "n/a" if math.isnan(value) else f"{value:+.2f} ms"


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM handler that unwinds like Ctrl-C does, so every ``finally`` (teardown) runs."""
    raise SystemExit(128 + signum)


def bench_main(
    name: str,
    run: Callable[[BenchOptions, Processes], tuple[dict[str, Any], str]],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse options, run one benchmark with a work directory and process set, print JSON then the ratios."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=f"The {name} benchmark.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, noisier figures)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix=f"yoi-bench-{name}-"))
    options = BenchOptions(quick=args.quick, workdir=workdir, json_out=args.json_out, keep=args.keep)
    started = time.monotonic()
    info = machine()
    try:
        with Processes(workdir) as procs:
            result, line = run(options, procs)
    except (KeyboardInterrupt, SystemExit):
        print(f"bench.{name}: interrupted (processes stopped); logs in {workdir}", file=sys.stderr)
        return 130
    except BaseException:
        print(f"bench.{name}: failed (processes stopped); logs in {workdir}", file=sys.stderr)
        raise
    info["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result = {"bench": name, "quick": args.quick, "machine": info, **result}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2, sort_keys=False, default=_json_default)
    print(text)
    if args.json_out:
        args.json_out.write_text(text, "utf-8")
    print(line, flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@contextlib.contextmanager
def stubs(**kwargs: Sequence[str]) -> Iterator[StubServers]:
    """``StubServers`` started with ``kwargs`` and always stopped."""
    servers = StubServers()
    try:
        servers.start(**kwargs)
        yield servers
    finally:
        servers.stop()
