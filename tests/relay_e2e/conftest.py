"""Real Backend processes for the relay end-to-end tests: daphne on 127.0.0.1, talking to real runtimes.

``backend_factory`` starts ``daphne yoi_backend.asgi:application`` on a free port with its own SQLite
database and data dir (copied from a database migrated once per session, with a user, an API token and a
session already in it), syncs the given runtimes from a generated TOML file, and waits for ``/readyz``
with a deadline. Two Backends can share one database (``share=``) — what scale-out needs. Every process is
killed in the finalizer; its log is kept in the test's tmp dir and shown when a start fails.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    manage,
    sync_runtimes,
)
from tests.runtime_process import RuntimeProcess

SECRET_KEY = "relay-e2e-secret-key-not-for-production-4d1c"
USERNAME = "e2e-browser"
HTTP_TIMEOUT = (5, 30)
# The environment of this suite's Backends and manage.py runs: quick relay settings, the runtimes' tokens.
relay_env = functools.partial(backend_env, secret_key=SECRET_KEY, defaults=QUICK_RELAY_ENV)


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
        return "YOI_RUNTIME_TOKEN_E2E_" + "".join(c if c.isalnum() else "_" for c in self.runtime_id).upper()

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
class Backend(BackendProcess):
    """A running daphne process serving the Backend, with its site's credentials."""

    site: Site

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


BackendFactory = Callable[..., Backend]


def prepare_database(*, data_dir: Path, database_url: str | None) -> tuple[str, str]:
    """Migrate and create the test user; its ``(session_key, api_token)``."""
    env = relay_env(data_dir=data_dir, database_url=database_url)
    manage("migrate", "--noinput", "-v", "0", env=env)
    return create_login(env, USERNAME)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A migrated SQLite file with the test user, made once per session: ``(path, session_key, token)``."""
    data_dir = tmp_path_factory.mktemp("relay-e2e-template")
    session_key, token = prepare_database(data_dir=data_dir, database_url=None)
    return data_dir / "db.sqlite3", session_key, token


class BackendLauncher(DaphneLauncher[Backend]):
    """Starts Backends under ``root`` (see the module docstring) and kills them all in ``close()``."""

    def __init__(self, root: Path, template: tuple[Path, str, str]) -> None:
        super().__init__(root)
        self.template = template

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
        data_dir = self.next_data_dir()
        if share is not None:
            site = share.site
        else:
            if database_url:
                session_key, token = prepare_database(data_dir=data_dir, database_url=database_url)
            else:
                template, session_key, token = self.template
                database_url = copy_sqlite(template, data_dir)
            site = Site(database_url, tuple(runtimes), session_key, token)
        proc_env = relay_env(data_dir=data_dir, database_url=site.database_url, runtimes=site.runtimes, extra=env)
        if share is None and site.runtimes:
            toml = "\n".join(entry.toml() for entry in site.runtimes)
            sync_runtimes(toml, data_dir=data_dir, env=proc_env)
        return self.launch(Backend, env=proc_env, data_dir=data_dir, daphne_args=daphne_args, site=site)


@pytest.fixture
def backend_factory(tmp_path: Path, migrated_sqlite: tuple[Path, str, str]) -> Iterator[BackendFactory]:
    """Start Backends: ``factory(runtimes=[RuntimeEntry...], env={...}, share=<Backend>, database_url=...,
    daphne_args=[...])``."""
    launcher = BackendLauncher(tmp_path, migrated_sqlite)
    try:
        yield launcher.start
    finally:
        launcher.close()
