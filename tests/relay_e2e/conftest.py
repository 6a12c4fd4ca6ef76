"""Real Backend processes for the relay end-to-end tests: daphne on 127.0.0.1, talking to real runtimes.

``backend_factory`` starts ``daphne yoi_backend.asgi:application`` on a free port with its own SQLite
database and data dir (copied from a database migrated once per session, with a user, an API token and a
session already in it), syncs the given runtimes from a generated TOML file, and waits for ``/healthz``
with a deadline. Two Backends can share one database (``share=``) — what scale-out needs. Every process is
killed in the finalizer; its log is kept in the test's tmp dir and shown when a start fails.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.runtime_process import REPO_ROOT, RuntimeProcess

SECRET_KEY = "relay-e2e-secret-key-not-for-production-4d1c"
USERNAME = "e2e-browser"
READY_TIMEOUT = 40.0
ASGI_APP = "yoi_backend.asgi:application"
HTTP_TIMEOUT = (5, 30)
# Settings every e2e Backend gets unless a test overrides them: quick reconnects, short linger.
DEFAULT_ENV = {
    "YOI_RELAY_LINGER_SECONDS": "0.5",
    "YOI_RELAY_BACKOFF_BASE": "0.2",
    "YOI_RELAY_BACKOFF_CAP": "1.0",
    "YOI_REGISTRY_REFRESH_SECONDS": "1",
    "YOI_LOG_LEVEL": "WARNING",
}
# The script run in the Backend's environment to create the test user, its token and a login session.
SETUP_SCRIPT = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token
user, _ = get_user_model().objects.get_or_create(username=%(username)r)
user.set_unusable_password()
user.save()
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
token, _ = Token.objects.get_or_create(user=user)
print("E2E-SETUP " + json.dumps({"session_key": session.session_key, "token": token.key}))
"""


@dataclass(frozen=True)
class RuntimeEntry:
    """One ``[[runtime]]`` of the generated runtimes file; ``token`` goes in the Backend's environment."""

    runtime_id: str
    base_url: str
    token: str | None
    read_timeout: float = 10.0

    @classmethod
    def of(cls, rt: RuntimeProcess, *, token: str | None = None) -> RuntimeEntry:
        """The entry of a running runtime (``token`` overrides the right one, e.g. to make it wrong)."""
        return cls(rt.runtime_id, rt.base_url, token if token is not None else rt.token)

    @property
    def token_env(self) -> str:
        """The environment variable the row's ``token_ref`` names."""
        return "YOI_E2E_TOKEN_" + "".join(c if c.isalnum() else "_" for c in self.runtime_id).upper()

    def toml(self) -> str:
        """The ``[[runtime]]`` table."""
        return (
            "[[runtime]]\n"
            f"runtime_id = {json.dumps(self.runtime_id)}\n"
            f'display_name = "E2E {self.runtime_id}"\n'
            'kind = "remote"\n'
            f"base_url = {json.dumps(self.base_url)}\n"
            f'token_ref = "env:{self.token_env}"\n'
            "connect_timeout = 2.0\n"
            f"read_timeout = {self.read_timeout}\n"
        )


@dataclass
class Site:
    """What several Backend processes may share: the database, the runtimes, the user's credentials."""

    database_url: str
    runtimes: tuple[RuntimeEntry, ...]
    session_key: str
    api_token: str


@dataclass
class Backend:
    """A running daphne process serving the Backend."""

    port: int
    site: Site
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """An Origin header the Backend's AllowedHostsOriginValidator accepts."""
        return self.base_url

    @property
    def session_key(self) -> str:
        """The test user's session cookie value."""
        return self.site.session_key

    def ws_url(self, runtime_id: str, worker_id: str, *, after: int | None = None) -> str:
        """The worker's event socket URL."""
        query = f"?after={after}" if after is not None else ""
        return f"ws://127.0.0.1:{self.port}/ws/runtimes/{runtime_id}/workers/{worker_id}/events/{query}"

    def api(self, method: str, path: str, body: Any = None) -> requests.Response:
        """A REST call under /api/v1/ with the test user's API token."""
        return requests.request(
            method,
            f"{self.base_url}/api/v1/{path.lstrip('/')}",
            json=body,
            headers={"Authorization": f"Token {self.site.api_token}"},
            timeout=HTTP_TIMEOUT,
            allow_redirects=False,
        )

    def create_worker(self, runtime_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a worker through the Backend; its JSON."""
        response = self.api("POST", f"runtimes/{runtime_id}/workers/", body)
        assert response.status_code == 201, response.text
        worker: dict[str, Any] = response.json()
        return worker

    def send_input(self, runtime_id: str, worker_id: str, content: str = "go") -> dict[str, Any]:
        """POST an input through the Backend; the ack."""
        response = self.api("POST", f"runtimes/{runtime_id}/workers/{worker_id}/input/", {"content": content})
        assert response.status_code == 202, response.text
        ack: dict[str, Any] = response.json()
        return ack

    def worker(self, runtime_id: str, worker_id: str) -> dict[str, Any]:
        """GET a worker through the Backend."""
        response = self.api("GET", f"runtimes/{runtime_id}/workers/{worker_id}/")
        assert response.status_code == 200, response.text
        worker: dict[str, Any] = response.json()
        return worker

    def log_text(self, tail: int = 6000) -> str:
        """The end of the process's output (stdout and stderr)."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text("utf-8", errors="replace")[-tail:]
        return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


BackendFactory = Callable[..., Backend]


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def backend_env(
    *, data_dir: Path, database_url: str | None, runtimes: Sequence[RuntimeEntry], extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a Backend process: this one minus Django/Yoi/database settings, plus ours."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "YOI_")) and key not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "yoi_backend.settings",
            "DJANGO_SECRET_KEY": SECRET_KEY,
            "DJANGO_DEBUG": "0",
            "YOI_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            **DEFAULT_ENV,
        }
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    for entry in runtimes:
        if entry.token is not None:
            env[entry.token_env] = entry.token
    env.update(extra)
    return env


def manage(*args: str, env: Mapping[str, str], timeout: float = 120) -> str:
    """Run ``manage.py`` with ``env``; its stdout (fails with its output when it fails)."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), *args],
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def prepare_database(*, data_dir: Path, database_url: str | None) -> tuple[str, str]:
    """Migrate and create the test user; its ``(session_key, api_token)``."""
    env = backend_env(data_dir=data_dir, database_url=database_url, runtimes=(), extra={})
    manage("migrate", "--noinput", "-v", "0", env=env)
    return create_login(env)


def create_login(env: Mapping[str, str]) -> tuple[str, str]:
    """A fresh session (and the API token) of the test user, in the database ``env`` points at."""
    out = manage("shell", "-c", SETUP_SCRIPT % {"username": USERNAME}, env=env)
    line = next(line for line in out.splitlines() if line.startswith("E2E-SETUP "))
    data = json.loads(line.removeprefix("E2E-SETUP "))
    return str(data["session_key"]), str(data["token"])


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A migrated SQLite file with the test user, made once per session: ``(path, session_key, token)``."""
    data_dir = tmp_path_factory.mktemp("relay-e2e-template")
    session_key, token = prepare_database(data_dir=data_dir, database_url=None)
    return data_dir / "db.sqlite3", session_key, token


class BackendLauncher:
    """Starts Backends under ``root`` (see the module docstring) and kills them all in ``close()``."""

    def __init__(self, root: Path, template: tuple[Path, str, str]) -> None:
        self.root = root
        self.template = template
        self.started: list[Backend] = []

    def start(
        self,
        *,
        runtimes: Sequence[RuntimeEntry] = (),
        env: Mapping[str, str] | None = None,
        share: Backend | None = None,
        database_url: str | None = None,
        daphne_args: Sequence[str] = (),
    ) -> Backend:
        """A ready Backend with ``runtimes`` synced; ``share`` reuses another's database, runtimes and login.

        ``daphne_args`` go to daphne's command line (e.g. ``--ping-interval``).
        """
        data_dir = self.root / f"backend-{len(self.started)}"
        (data_dir / "static").mkdir(parents=True)  # STATIC_ROOT: WhiteNoise warns on every request without it
        if share is not None:
            site = share.site
        else:
            if database_url:
                session_key, token = prepare_database(data_dir=data_dir, database_url=database_url)
            else:
                template, session_key, token = self.template
                shutil.copyfile(template, data_dir / "db.sqlite3")
                database_url = f"sqlite:///{data_dir / 'db.sqlite3'}"
            site = Site(database_url, tuple(runtimes), session_key, token)
        proc_env = backend_env(
            data_dir=data_dir, database_url=site.database_url, runtimes=site.runtimes, extra=env or {}
        )
        if share is None and site.runtimes:
            config = data_dir / "runtimes.toml"
            config.write_text("\n".join(entry.toml() for entry in site.runtimes), "utf-8")
            manage("sync_runtimes", "--file", str(config), env=proc_env)
        port = free_port()
        log_path = data_dir / "daphne.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), *daphne_args, ASGI_APP],
                cwd=REPO_ROOT,
                env=proc_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        backend = Backend(port=port, site=site, proc=proc, log_path=log_path, env=proc_env)
        self.started.append(backend)
        wait_ready(backend)
        return backend

    def close(self) -> None:
        """SIGKILL every Backend started here."""
        for backend in self.started:
            if backend.proc.poll() is None:
                backend.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                backend.proc.wait(10)


@pytest.fixture
def backend_factory(tmp_path: Path, migrated_sqlite: tuple[Path, str, str]) -> Iterator[BackendFactory]:
    """Start Backends: ``factory(runtimes=[RuntimeEntry...], env={...}, share=<Backend>, database_url=...,
    daphne_args=[...])``."""
    launcher = BackendLauncher(tmp_path, migrated_sqlite)
    try:
        yield launcher.start
    finally:
        launcher.close()


def wait_ready(backend: Backend) -> None:
    """Poll ``/healthz`` until it answers 200 (bounded); fail with the process's output otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if backend.proc.poll() is not None:
            raise AssertionError(f"daphne exited with {backend.proc.returncode}:\n{backend.log_text()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{backend.base_url}/healthz", timeout=(1, 5)).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"daphne not ready within {READY_TIMEOUT}s:\n{backend.log_text()}")
