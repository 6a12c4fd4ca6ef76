"""Start the Backend as a real process (``python -m yoi_backend.serve``, daphne with a graceful stop) on 127.0.0.1.

``backend_env`` is the environment of a Backend process or a ``manage.py`` run: this one minus the test
run's own Django/Yoi/database settings, plus the Backend's. ``manage``/``run_manage`` run ``manage.py``
in it; ``sync_runtimes`` writes a runtimes file and syncs it. ``start_backend`` serves it under daphne on a
free port and waits (with a deadline) for ``/readyz``; the ``BackendProcess`` handle stops or kills it
and shows the end of its log. Suites that need more on the handle subclass it, start the process with
``spawn_daphne`` and call ``wait_ready`` themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import requests

from tests.runtime_process import REPO_ROOT

ASGI_APP = "yoi_backend.asgi:application"
SERVER_MODULE = "yoi_backend.serve"
# Long enough for a first start that collects the static files (yoi_backend/static_collect.py) on a busy machine.
READY_TIMEOUT = 90.0
# Collected static files shared by every test Backend of this checkout: the server collects them before it
# listens when they are missing or out of date (yoi_backend/static_collect.py), so only the first start of a
# run after a change pays for collectstatic.
TEST_STATIC_ROOT = REPO_ROOT / "var" / "test-static"
MANAGE_TIMEOUT = 120.0
# Quick upstream reconnects and a short linger, so relay tests do not wait on production timings.
QUICK_RELAY_ENV = {
    "YOI_RELAY_LINGER_SECONDS": "0.5",
    "YOI_RELAY_BACKOFF_BASE": "0.2",
    "YOI_RELAY_BACKOFF_CAP": "1.0",
    "YOI_REGISTRY_REFRESH_SECONDS": "1",
    "YOI_LOG_LEVEL": "WARNING",
}
# Creates (or finds) the test user, its API token and a login session; prints them on a marked line.
LOGIN_SCRIPT = """
import json
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token
user, _ = get_user_model().objects.get_or_create(username=%(username)r)
user.set_unusable_password()
user.save()
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
token, _ = Token.objects.get_or_create(user=user)
print("LOGIN-SETUP " + json.dumps({"session_key": session.session_key, "token": token.key}))
"""
MIGRATE_SCRIPT = """
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
"""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (bound, then released: connecting is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RuntimeToken(Protocol):
    """A runtimes-file row whose token the Backend reads from the environment variable ``token_env``."""

    @property
    def token(self) -> str | None: ...

    @property
    def token_env(self) -> str: ...


def backend_env(
    *,
    secret_key: str,
    data_dir: Path,
    database_url: str | None = None,
    defaults: Mapping[str, str] | None = None,
    runtimes: Iterable[RuntimeToken] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This environment without Django/Yoi/database settings, plus the Backend's own: ``DJANGO_DEBUG=0``,
    data in ``data_dir``, the shared static files, ``database_url`` when given, then ``defaults``, the
    runtimes' tokens and ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "YOI_")) and key not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "yoi_backend.settings",
            "DJANGO_SECRET_KEY": secret_key,
            "DJANGO_DEBUG": "0",
            "YOI_DATA_DIR": str(data_dir),
            "DJANGO_STATIC_ROOT": str(TEST_STATIC_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(defaults or {})
    env.update({row.token_env: row.token for row in runtimes if row.token is not None})
    env.update(extra or {})
    return env


def manage_command(*args: str) -> list[str]:
    """The command line of ``manage.py ARGS`` run by this Python."""
    return [sys.executable, str(REPO_ROOT / "manage.py"), *args]


def run_manage(
    *args: str, env: Mapping[str, str], timeout: float = MANAGE_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` with ``env`` (bounded); the completed process, whatever its exit code."""
    return subprocess.run(
        manage_command(*args),
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def manage(*args: str, env: Mapping[str, str], timeout: float = MANAGE_TIMEOUT) -> str:
    """Run ``manage.py`` with ``env``; its stdout (fails with its output unless it exits 0)."""
    result = run_manage(*args, env=env, timeout=timeout)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def sync_runtimes(toml_text: str, *, data_dir: Path, env: Mapping[str, str]) -> Path:
    """Write ``data_dir/runtimes.toml`` and run ``sync_runtimes`` on it; the file."""
    config = data_dir / "runtimes.toml"
    config.write_text(toml_text, "utf-8")
    manage("sync_runtimes", "--file", str(config), env=env)
    return config


def create_login(env: Mapping[str, str], username: str, *, migrate: bool = False) -> tuple[str, str]:
    """A fresh login session and the API token of ``username`` (created if missing) in the database ``env``
    points at, migrating it first in the same Django start-up when ``migrate``: ``(session_key, token)``."""
    script = (MIGRATE_SCRIPT if migrate else "") + LOGIN_SCRIPT % {"username": username}
    out = manage("shell", "-c", script, env=env)
    line = next(line for line in out.splitlines() if line.startswith("LOGIN-SETUP "))
    data = json.loads(line.removeprefix("LOGIN-SETUP "))
    return str(data["session_key"]), str(data["token"])


def copy_sqlite(template: Path, data_dir: Path) -> str:
    """Copy a migrated SQLite file into ``data_dir``; the copy's ``DATABASE_URL``."""
    shutil.copyfile(template, data_dir / "db.sqlite3")
    return f"sqlite:///{data_dir / 'db.sqlite3'}"


def backend_data_dir(path: Path) -> Path:
    """Create a Backend data dir with its ``static`` dir (STATIC_ROOT: WhiteNoise warns on every request
    without it); ``path``."""
    (path / "static").mkdir(parents=True)
    return path


def spawn_daphne(
    *, env: Mapping[str, str], log_path: Path, port: int, daphne_args: Sequence[str] = (), append_log: bool = False
) -> subprocess.Popen[bytes]:
    """Start daphne serving the Backend on ``127.0.0.1:port``, its output (both streams) in ``log_path``."""
    command = [sys.executable, "-m", SERVER_MODULE, "-b", "127.0.0.1", "-p", str(port), *daphne_args, ASGI_APP]
    with log_path.open("ab" if append_log else "wb") as log:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


@dataclass
class BackendProcess:
    """A daphne process serving the Backend on ``127.0.0.1:port``."""

    port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(repr=False)
    log_path: Path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """An Origin header the Backend's AllowedHostsOriginValidator accepts."""
        return self.base_url

    def alive(self) -> bool:
        """The process has not exited."""
        return self.proc.poll() is None

    def log_text(self, tail: int = 6000) -> str:
        """The end of the process's output (stdout and stderr)."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text("utf-8", errors="replace")[-tail:]
        return ""

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``manage.py`` against this Backend's database and settings, whatever its exit code."""
        return run_manage(*args, env=self.env)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``/readyz`` until it answers 200; otherwise kill the process and fail with its output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"daphne exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base_url}/readyz", timeout=(1, 5)).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"daphne not ready within {timeout:g}s:\n{self.log_text()}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it lingers past ``timeout``."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL (every socket drops at once, as in a crash) and reap it."""
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def start_backend(
    *,
    env: Mapping[str, str],
    log_path: Path,
    port: int | None = None,
    daphne_args: Sequence[str] = (),
    append_log: bool = False,
    ready_timeout: float = READY_TIMEOUT,
) -> BackendProcess:
    """Serve the Backend under daphne on ``port`` (a free one by default) and wait until it is ready."""
    port = port or free_port()
    proc = spawn_daphne(env=env, log_path=log_path, port=port, daphne_args=daphne_args, append_log=append_log)
    backend = BackendProcess(port=port, proc=proc, env=dict(env), log_path=log_path)
    backend.wait_ready(ready_timeout)
    return backend


def kill_all(backends: Iterable[BackendProcess]) -> None:
    """SIGKILL every one of ``backends`` that still runs."""
    for backend in backends:
        backend.kill()


B = TypeVar("B", bound=BackendProcess)


class DaphneLauncher(Generic[B]):
    """Starts Backends (handles of type ``B``) in numbered data dirs under ``root``; ``close()`` kills them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[B] = []

    def next_data_dir(self) -> Path:
        """A fresh data dir (with ``static``) for the next Backend."""
        return backend_data_dir(self.root / f"backend-{len(self.started)}")

    def launch(
        self,
        cls: type[B],
        *,
        env: Mapping[str, str],
        data_dir: Path,
        daphne_args: Sequence[str] = (),
        **fields: Any,
    ) -> B:
        """Serve under daphne on a free port (log in ``data_dir/daphne.log``); the ready handle, made as
        ``cls(port=, proc=, env=, log_path=, **fields)``."""
        port = free_port()
        log_path = data_dir / "daphne.log"
        proc = spawn_daphne(env=env, log_path=log_path, port=port, daphne_args=daphne_args)
        backend = cls(port=port, proc=proc, env=dict(env), log_path=log_path, **fields)
        self.started.append(backend)
        backend.wait_ready()
        return backend

    def close(self) -> None:
        """SIGKILL every Backend started here."""
        kill_all(self.started)
