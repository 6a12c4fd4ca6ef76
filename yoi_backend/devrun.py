"""``make run``: the main job on embedded defaults, on one machine.

Starts the local reference runtime (a real ``yoi-runtime`` process with a generated token), migrates,
creates a demo user when there is none, syncs ``fixtures/runtimes.example.toml``, probes, and serves the
Backend under daphne until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
RUNTIMES_CONFIG = ROOT / "fixtures" / "runtimes.example.toml"
LOCAL_RUNTIME_PORT = 38800  # the base_url of runtime "local" in fixtures/runtimes.example.toml
READY_TIMEOUT = 30.0


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


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait until ``proc`` listens on ``port`` (bounded), or fail if it exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        if not port_free(port):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start listening on {HOST}:{port} within {READY_TIMEOUT:.0f} s")


def main() -> None:
    """Run everything until interrupted."""
    http_port = int(os.environ.get("YOI_HTTP_PORT", "8000"))
    data_dir = Path(os.environ.get("YOI_DATA_DIR", ROOT / "var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "yoi_backend.settings",
        "YOI_DATA_DIR": str(data_dir),
        "YOI_RUNTIMES_CONFIG": str(RUNTIMES_CONFIG),
        # A fresh token for the local runtime each run: only this process tree knows it.
        "YOI_RUNTIME_TOKEN_LOCAL": secrets.token_urlsafe(32),
    }
    for port, what in ((LOCAL_RUNTIME_PORT, "the local runtime"), (http_port, "the Backend")):
        if not port_free(port):
            raise SystemExit(f"port {port} for {what} is in use: stop what listens there and retry")

    children: list[subprocess.Popen[bytes]] = []

    def shutdown(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()

    def on_sigterm(*_: object) -> None:
        shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        say("starting the local reference runtime 'local'")
        runtime = subprocess.Popen(
            [
                sys.executable, "-m", "worker_runtime", "serve",
                "--bind", f"{HOST}:{LOCAL_RUNTIME_PORT}",
                "--store", str(data_dir / "runtime-local"),
                "--runtime-id", "local",
                "--config", str(ROOT / "fixtures" / "runtime.local.toml"),
                "--token-env", "YOI_RUNTIME_TOKEN_LOCAL",
            ],
            env=env,
            cwd=ROOT,
        )  # fmt: skip
        children.append(runtime)
        wait_for_port(LOCAL_RUNTIME_PORT, runtime, "the local runtime")
        say("migrating the database")
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("collectstatic", "--noinput", "-v", "0", env=env)
        manage("ensure_demo_user", env=env)
        say(f"syncing runtimes from {RUNTIMES_CONFIG.relative_to(ROOT)}")
        manage("sync_runtimes", "--file", str(RUNTIMES_CONFIG), env=env)
        say("probing runtimes")
        manage("probe_runtimes", env=env)
        say(f"starting the Backend on http://{HOST}:{http_port}/")
        daphne = [sys.executable, "-m", "yoi_backend.serve", "-b", HOST, "-p", str(http_port)]
        # WebSocket heartbeat: an idle browser socket is pinged every 15 s and dropped after 30 s of silence.
        daphne += ["--ping-interval", "15", "--ping-timeout", "30", "yoi_backend.asgi:application"]
        backend = subprocess.Popen(daphne, env=env, cwd=ROOT)
        children.append(backend)
        wait_for_port(http_port, backend, "the Backend")
        print(
            "\n"
            f"  Console:      http://{HOST}:{http_port}/  (log in as the demo user)\n"
            f"  Browser API:  http://{HOST}:{http_port}/api/v1/runtimes/\n"
            f"  API docs:     http://{HOST}:{http_port}/api/docs/\n"
            f"  Admin:        http://{HOST}:{http_port}/admin/\n"
            f"  Health:       http://{HOST}:{http_port}/healthz\n"
            "  Runtimes:     'embedded' (in the Backend process) and 'local' (a yoi-runtime process)\n"
            "  Stop with Ctrl-C.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        failed = next(child for child in children if child.poll() is not None)
        raise SystemExit(f"a process exited unexpectedly (code {failed.returncode}); shutting down")
    except KeyboardInterrupt:
        say("stopping")
    finally:
        shutdown()


if __name__ == "__main__":
    main()
