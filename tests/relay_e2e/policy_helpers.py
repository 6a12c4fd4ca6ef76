"""What the socket-policy end-to-end tests share: embedded runtime rows, users with sessions, timed closes.

``make_users`` creates users (each with a login session, some in groups, one superuser) and restricts
runtimes to groups, in one ``manage.py shell`` run against a Backend's database. ``closes_within`` opens
nothing itself: it makes a change and measures how long the given sockets take to get their error frame
and close, which is the figure the policy tests report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.relay_e2e.conftest import USERNAME, Backend, BackendLauncher
from tests.relay_e2e.ws_client import WsClient, close_all
from tests.runtime_process import RuntimeProcess, create_worker, kill_spawned_since, spawned_count

# Within this of a change that Django sees (or the registry of a Backend does), a socket must be closed.
PROMPT_CLOSE = 5.0
CONNECTED_TIMEOUT = 20.0
CHANGE_TIMEOUT = 120.0

USERS_SCRIPT = """
import json
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from runtimes.models import Runtime
spec = json.loads(%(spec)r)
def login(user, expiry):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]  # the model backend (axes is first)
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    if expiry:
        session.set_expiry(expiry)
    session.create()
    return session.session_key, session.get_expiry_date().timestamp()
out = {}
for name, info in spec["users"].items():
    user = User.objects.create_user(name, is_staff=info.get("admin", False), is_superuser=info.get("admin", False))
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in info.get("groups", [])])
    key, expires = login(user, info.get("expiry"))
    out[name] = {"id": user.pk, "session_key": key, "expires": expires}
# The suite's API user creates the workers, on restricted runtimes too.
User.objects.filter(username=spec["api_user"]).update(is_staff=True)
for runtime_id, groups in spec["runtime_groups"].items():
    Runtime.objects.get(runtime_id=runtime_id).groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
ids = {
    "runtimes": dict(Runtime.objects.values_list("runtime_id", "pk")),
    "groups": dict(Group.objects.values_list("name", "pk")),
}
print("USERS " + json.dumps({"users": out, "ids": ids}))
"""


@dataclass(frozen=True)
class EmbeddedEntry:
    """An ``embedded`` ``[[runtime]]`` of a generated runtimes file (no address, no token)."""

    runtime_id: str
    token: str | None = None

    @property
    def token_env(self) -> str:
        """Unused: an embedded runtime has no token."""
        return ""

    def toml(self) -> str:
        """The ``[[runtime]]`` table."""
        rid = self.runtime_id
        return f'[[runtime]]\nruntime_id = "{rid}"\ndisplay_name = "E2E {rid}"\nkind = "embedded"\n'


@dataclass(frozen=True)
class Login:
    """A user made by ``make_users``: its id, a session cookie value and when that session expires (epoch)."""

    user_id: int
    session_key: str
    expires: float = 0.0


@dataclass(frozen=True)
class People:
    """What ``make_users`` made: logins by username, and the admin's ids of runtime rows and groups."""

    users: dict[str, Login]
    runtime_pks: dict[str, int]
    group_pks: dict[str, int]


def make_users(
    backend: Backend, users: Mapping[str, Mapping[str, Any]], runtime_groups: Mapping[str, Sequence[str]]
) -> People:
    """Create ``users`` (``{"groups": [...], "admin": bool, "expiry": seconds}``) with a session each, and
    limit runtimes to groups; the suite's API user (which creates workers) becomes staff."""
    spec = json.dumps({"users": users, "runtime_groups": runtime_groups, "api_user": USERNAME})
    result = backend.manage("shell", "-c", USERS_SCRIPT % {"spec": spec})
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("USERS "))
    data = json.loads(line.removeprefix("USERS "))
    return People(
        users={
            name: Login(int(info["id"]), str(info["session_key"]), float(info["expires"]))
            for name, info in data["users"].items()
        },
        runtime_pks={key: int(pk) for key, pk in data["ids"]["runtimes"].items()},
        group_pks={key: int(pk) for key, pk in data["ids"]["groups"].items()},
    )


def relaying(client: WsClient) -> bool:
    """The socket is relaying: it has an event (a process following another's upstream learns that it is
    connected only from the next live event), or the upstream is up."""
    return bool(client.events()) or any(f.get("upstream") == "connected" for f in client.of_type("state"))


async def watch(backend: Backend, runtime_id: str, worker_id: str, login: Login, *, name: str) -> WsClient:
    """A relaying browser socket of ``login`` on a worker (from its first event)."""
    client = await open_watch(backend, runtime_id, worker_id, login, name=name)
    await client.wait_for(relaying, timeout=CONNECTED_TIMEOUT, what="relaying")
    return client


async def open_watch(backend: Backend, runtime_id: str, worker_id: str, login: Login, *, name: str) -> WsClient:
    """A browser socket of ``login`` on a worker from its first event, as soon as it is accepted."""
    url = backend.ws_url(runtime_id, worker_id, after=0)
    return await WsClient.connect(url, session_key=login.session_key, origin=backend.origin, name=name)


async def watch_new_worker(
    backend: Backend, rt: RuntimeProcess | None, runtime_id: str, login: Login, *, name: str
) -> WsClient:
    """Create an echo worker (on the runtime process, or through the Backend for an embedded runtime) and
    watch it."""
    if rt is not None:
        worker_id = str((await asyncio.to_thread(create_worker, rt))["worker_id"])
    else:
        response = await asyncio.to_thread(
            backend.api, "POST", f"runtimes/{runtime_id}/workers/", {"profile": "builtin:echo"}
        )
        assert response.status_code == 201, response.text
        worker_id = str(response.json()["worker_id"])
    return await watch(backend, runtime_id, worker_id, login, name=name)


@dataclass(frozen=True)
class TimedClose:
    """How a socket ended after a change: its close code, the error it was told, seconds after the change."""

    code: int | None
    error_code: str | None
    seconds: float


async def closes_within(
    clients: Sequence[WsClient],
    change: Callable[[], Awaitable[object]],
    *,
    timeout: float = PROMPT_CLOSE,
    from_end: bool = False,
    changed_at: Callable[[], Awaitable[float]] | None = None,
) -> list[TimedClose]:
    """Make ``change``; wait for every client to close; each one's close, timed from the start of the change.

    A change made by another process is timed from when it was made: ``changed_at`` says when (the epoch
    time, read after the fact, e.g. a row's ``updated_at``), or with ``from_end`` from when ``change``
    returned (a command commits just before it exits, and its start-up is not part of the change).
    """
    started = time.time()
    closed_at: dict[int, float] = {}

    async def one(index: int, client: WsClient) -> None:
        # Bounded below, from the end of the change (which may take a while: another process starting).
        await client.wait_closed(timeout=CHANGE_TIMEOUT + timeout)
        closed_at[index] = time.time()

    waiters = [asyncio.create_task(one(index, client)) for index, client in enumerate(clients)]
    await change()
    if changed_at is not None:
        origin = await changed_at()
    else:
        origin = time.time() if from_end else started
    done, pending = await asyncio.wait(waiters, timeout=max(0.0, origin + timeout - time.time()))
    for task in pending:
        task.cancel()
    for task in done:
        task.result()
    results = []
    for index, client in enumerate(clients):
        errors = client.of_type("error")
        error_code = errors[-1]["error"]["code"] if errors else None
        seconds = closed_at[index] - origin if index in closed_at else float("inf")
        results.append(TimedClose(client.close_code, error_code, seconds))
    return results


UPDATED_AT_SCRIPT = """
from runtimes.models import Runtime
print("UPDATED", Runtime.objects.get(runtime_id=%(runtime_id)r).updated_at.timestamp())
"""


def row_updated_at(backend: Backend, runtime_id: str) -> Callable[[], Awaitable[float]]:
    """When a runtime row was last saved (its ``updated_at``, epoch seconds): the time of a change that
    another process made to it."""

    async def read() -> float:
        result = await asyncio.to_thread(
            backend.manage, "shell", "-c", UPDATED_AT_SCRIPT % {"runtime_id": runtime_id}
        )
        assert result.returncode == 0, result.stderr
        return float(next(line for line in result.stdout.splitlines() if line.startswith("UPDATED ")).split()[1])

    return read


def report(row: str, closes: Sequence[TimedClose]) -> None:
    """Print a row's figure (seen with ``-s``; the closing note quotes them)."""
    worst = max(close.seconds for close in closes)
    print(f"\npolicy close: {row}: {len(closes)} socket(s), slowest {worst:.3f} s after the change")


async def expect_closed(
    clients: Sequence[WsClient],
    change: Callable[[], object],
    *,
    row: str,
    code: int,
    error: str,
    changed_at: Callable[[], Awaitable[float]] | None = None,
) -> list[TimedClose]:
    """``change`` (a blocking call, run off the loop) closes every client within PROMPT_CLOSE, each with
    one ``error`` frame and ``code``; the clients are closed afterwards whatever happened."""
    try:
        closes = await closes_within(clients, lambda: asyncio.to_thread(change), changed_at=changed_at)
    finally:
        await close_all(clients)
    report(row, closes)
    assert [(c.code, c.error_code) for c in closes] == [(code, error)] * len(clients)
    assert all(c.seconds < PROMPT_CLOSE for c in closes)
    return closes


@contextlib.contextmanager
def module_site(
    tmp_path_factory: pytest.TempPathFactory, template: tuple[Path, str, str], name: str
) -> Iterator[tuple[BackendLauncher, Path]]:
    """A launcher of Backends for one module and a directory for its runtimes; every process started
    meanwhile (Backends and runtimes) is killed at the end."""
    marker = spawned_count()
    launcher = BackendLauncher(tmp_path_factory.mktemp(name), template)
    try:
        yield launcher, tmp_path_factory.mktemp(f"{name}-runtimes")
    finally:
        launcher.close()
        kill_spawned_since(marker)
