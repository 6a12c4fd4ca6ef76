"""``make run``: the main job on embedded defaults, on one machine, supervised.

Starts the local reference runtime (a real ``yoi-runtime`` process with a generated token), migrates,
creates a demo user when there is none, syncs the runtimes file (``fixtures/runtimes.example.toml`` with
runtime ``local`` pointed at this run's port, written into the data dir), probes, and serves the Backend
(``python -m yoi_backend.serve``) until Ctrl-C. Both processes are supervised: one that dies is restarted
with capped exponential backoff, and the other keeps running. Ctrl-C or SIGTERM stops both cleanly.

Ports: ``YOI_HTTP_PORT`` (default 8000) for the Backend, ``YOI_LOCAL_RUNTIME_PORT`` (default 38800) for the
local runtime. ``YOI_METRICS_TOKEN`` is generated when unset, and the command that reads ``/metrics`` is
printed.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from yoi_backend.dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
RUNTIMES_FIXTURE = ROOT / "fixtures" / "runtimes.example.toml"
DEFAULT_HTTP_PORT = 8000
DEFAULT_LOCAL_RUNTIME_PORT = 38800  # the base_url of runtime "local" in fixtures/runtimes.example.toml
LOCAL_TOKEN_ENV = "YOI_RUNTIME_TOKEN_LOCAL"  # noqa: S105 - the variable's name, not a token
READY_TIMEOUT = 30.0
POLL_SECONDS = 0.2
# Restarts wait BACKOFF_BASE, then twice that each time, at most BACKOFF_CAP; a process that stayed up for
# STABLE_SECONDS starts again from BACKOFF_BASE.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
STABLE_SECONDS = 30.0
STOP_TIMEOUT = 15.0
_LOCAL_BASE_URL_RE = re.compile(r'^base_url = "http://127\.0\.0\.1:38800"$', re.MULTILINE)


def say(message: str) -> None:
    """Progress output."""
    print(f"==> {message}", flush=True)


def manage(*args: str, env: dict[str, str]) -> None:
    """Run a manage.py command, failing the whole run when it fails."""
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], check=True, env=env, cwd=ROOT)


def port_free(port: int) -> bool:
    """True when nothing listens on HOST:port."""
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) != 0


def env_port(name: str, default: int) -> int:
    """A TCP port from the environment."""
    raw = os.environ.get(name, "") or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"{name} must be a TCP port number, got {raw!r}")
    return int(raw)


def write_runtimes_file(data_dir: Path, *, local_port: int) -> Path:
    """The example runtimes file with runtime ``local`` on ``local_port``, written into the data dir."""
    text = RUNTIMES_FIXTURE.read_text("utf-8")
    text, count = _LOCAL_BASE_URL_RE.subn(f'base_url = "http://{HOST}:{local_port}"', text)
    if count != 1:
        raise SystemExit(f"{RUNTIMES_FIXTURE.name}: expected one base_url of runtime 'local' to point at the port")
    target = data_dir / "runtimes.toml"
    target.write_text(text, "utf-8")
    return target


@dataclass
class Supervised:
    """A child process kept running: restarted with capped exponential backoff whenever it exits."""

    name: str
    argv: Sequence[str]
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    failures: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    listening: bool = False
    stopping: bool = field(default=False, repr=False)

    def start(self) -> None:
        """Start the process (its output goes to ours)."""
        self.proc = subprocess.Popen(list(self.argv), env=self.env, cwd=ROOT)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.listening = False
        say(f"{self.name} started (pid {self.proc.pid})")

    def wait_listening(self) -> None:
        """Wait until it listens on its port (bounded); fail the run if it exits first."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise SystemExit(f"{self.name} exited with code {code}")
            if not port_free(self.port):
                self.listening = True
                return
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not start listening on {HOST}:{self.port} within {READY_TIMEOUT:.0f} s")

    def supervise(self, now: float) -> None:
        """One look: schedule a restart when it exited, restart when due, say when it listens again."""
        if self.proc is None or self.stopping:
            return
        if self.restart_at is not None:
            if now >= self.restart_at:
                say(f"restarting {self.name}")
                self.start()
            return
        code = self.proc.poll()
        if code is None:
            if not self.listening and not port_free(self.port):
                self.listening = True
                say(f"{self.name} is listening on {HOST}:{self.port}")
            return
        self.failures = 1 if now - self.started_at >= STABLE_SECONDS else self.failures + 1
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self.failures - 1))
        self.restart_at = now + delay
        say(f"{self.name} exited (code {code}); restarting in {delay:.1f} s")

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: the Backend drains, the runtime closes its streams)."""
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait_stopped(self, timeout: float) -> None:
        """Wait for it to end; kill it past ``timeout``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def main() -> None:
    """Run everything until interrupted."""
    load_dotenv()  # the ports and settings of a .env file, under what the environment says
    http_port = env_port("YOI_HTTP_PORT", DEFAULT_HTTP_PORT)
    runtime_port = env_port("YOI_LOCAL_RUNTIME_PORT", DEFAULT_LOCAL_RUNTIME_PORT)
    data_dir = Path(os.environ.get("YOI_DATA_DIR", ROOT / "var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    runtimes_file = write_runtimes_file(data_dir, local_port=runtime_port)
    metrics_token = os.environ.get("YOI_METRICS_TOKEN") or secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "yoi_backend.settings",
        "YOI_DATA_DIR": str(data_dir),
        "YOI_RUNTIMES_CONFIG": str(runtimes_file),
        "YOI_METRICS_TOKEN": metrics_token,
        # A fresh token for the local runtime each run: only this process tree knows it (kept across restarts).
        LOCAL_TOKEN_ENV: secrets.token_urlsafe(32),
    }
    for port, what in ((runtime_port, "the local runtime"), (http_port, "the Backend")):
        if not port_free(port):
            raise SystemExit(f"port {port} for {what} is in use: stop what listens there and retry")

    runtime = Supervised(
        "local runtime",
        [
            sys.executable, "-m", "worker_runtime", "serve",
            "--bind", f"{HOST}:{runtime_port}",
            "--store", str(data_dir / "runtime-local"),
            "--runtime-id", "local",
            "--config", str(ROOT / "fixtures" / "runtime.local.toml"),
            "--token-env", LOCAL_TOKEN_ENV,
        ],
        runtime_port,
        env,
    )  # fmt: skip
    # WebSocket heartbeat: an idle browser socket is pinged every 15 s and dropped after 30 s of silence.
    backend = Supervised(
        "Backend",
        [
            *(sys.executable, "-m", "yoi_backend.serve", "-b", HOST, "-p", str(http_port)),
            *("--ping-interval", "15", "--ping-timeout", "30", "yoi_backend.asgi:application"),
        ],
        http_port,
        env,
    )
    children = [runtime, backend]

    def on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        say("starting the local reference runtime 'local'")
        runtime.start()
        runtime.wait_listening()
        say("migrating the database")
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("collectstatic", "--noinput", "-v", "0", env=env)
        manage("ensure_demo_user", env=env)
        say(f"syncing runtimes from {RUNTIMES_FIXTURE.relative_to(ROOT)} (local runtime on port {runtime_port})")
        manage("sync_runtimes", "--file", str(runtimes_file), env=env)
        say("probing runtimes")
        manage("probe_runtimes", env=env)
        say(f"starting the Backend on http://{HOST}:{http_port}/")
        backend.start()
        backend.wait_listening()
        base = f"http://{HOST}:{http_port}"
        print(
            "\n"
            f"  Console:      {base}/  (log in as the demo user)\n"
            f"  Browser API:  {base}/api/v1/runtimes/\n"
            f"  API docs:     {base}/api/docs/\n"
            f"  Admin:        {base}/admin/\n"
            f"  Health:       {base}/livez  {base}/readyz\n"
            f"  Metrics:      curl -H 'Authorization: Bearer {metrics_token}' {base}/metrics\n"
            "  Runtimes:     'embedded' (in the Backend process) and 'local' (a yoi-runtime process)\n"
            "  Both processes are restarted if they die. Stop with Ctrl-C.\n",
            flush=True,
        )
        while True:
            now = time.monotonic()
            for child in children:
                child.supervise(now)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            child.wait_stopped(STOP_TIMEOUT)


if __name__ == "__main__":
    main()
