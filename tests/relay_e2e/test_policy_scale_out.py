"""Socket policy across Backend processes on one Redis channel layer (and one database).

Two Backends serve the same users. Their registry refresh and periodic revalidation are set to a minute,
so a socket closed within seconds was told over the channel layer: by the process that made the change
(the admin, the console's logout) or by a ``manage.py`` command in a third process. The per-user socket
cap counts the sockets of both processes.

Needs a Redis server: set ``YOI_TEST_REDIS_URL`` (``.ci/with-redis.sh`` starts a throwaway one and sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence

import pytest

from tests.conftest import RuntimeFactory
from tests.relay_e2e.admin_client import AdminBrowser
from tests.relay_e2e.conftest import Backend, BackendFactory, RuntimeEntry
from tests.relay_e2e.helpers import wait_all, wait_streams_open
from tests.relay_e2e.policy_helpers import (
    PROMPT_CLOSE,
    People,
    expect_closed,
    make_users,
    open_watch,
    row_updated_at,
)
from tests.relay_e2e.ws_client import WsClient, close_all
from tests.runtime_process import RuntimeProcess, create_worker
from workers.sockets import SOCKET_KEY_PREFIX

REDIS_URL = os.environ.get("YOI_TEST_REDIS_URL", "")
WARM_UP_TIMEOUT = 60.0
CAP = 3

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not REDIS_URL, reason="set YOI_TEST_REDIS_URL (see .ci/with-redis.sh)"),
]

USERS = {"u-one": {}, "u-two": {}, "u-cap": {}, "operator": {"admin": True}}


def two_backends(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> tuple[RuntimeProcess, Backend, Backend, People]:
    """A runtime and two Backends on one Redis and one database, with the module's users."""
    rt = runtime_factory(runtime_id="rt-cluster")
    env = {
        "REDIS_URL": REDIS_URL,
        "DJANGO_DEBUG": "1",  # the admin renders without collected static files
        "YOI_REGISTRY_REFRESH_SECONDS": "60",
        "YOI_SOCKET_REVALIDATE_SECONDS": "60",
        "YOI_MAX_SOCKETS_PER_USER": str(CAP),
    }
    first = backend_factory(
        runtimes=[RuntimeEntry.of(rt)], env=env, database_url=os.environ.get("DATABASE_URL") or None
    )
    second = backend_factory(share=first, env=env)
    return rt, first, second, make_users(first, USERS, {})


async def both_sides(rt: RuntimeProcess, backends: Sequence[Backend], people: People, user: str) -> list[WsClient]:
    """A relaying socket of ``user`` on each Backend, on the same worker."""
    worker_id = str((await asyncio.to_thread(create_worker, rt))["worker_id"])
    login = people.users[user]
    clients = [
        await open_watch(b, rt.runtime_id, worker_id, login, name=f"{user}@{i}") for i, b in enumerate(backends)
    ]
    # A socket relays a moment after its accept (the lookup runs after it), and a process that follows
    # another's upstream relays from the next live event on: inputs until every socket has had one.
    deadline = time.monotonic() + WARM_UP_TIMEOUT
    while not all(client.events() for client in clients):
        assert time.monotonic() < deadline, [repr(c) for c in clients]
        await asyncio.to_thread(backends[0].send_input, rt.runtime_id, worker_id, "warm-up")
        with contextlib.suppress(AssertionError):
            await wait_all(clients, lambda c: bool(c.events()), timeout=2, what="an event")
    return clients


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    """Each test's Backends have a database of their own (user ids start again) but share the Redis
    server: forget the socket counts earlier tests' killed Backends left behind."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        for key in client.scan_iter(match=f"{SOCKET_KEY_PREFIX}*"):
            client.delete(key)
    finally:
        client.close()


def counted_sockets(user_id: int) -> int:
    """The user's open sockets as every process counts them (the shared sorted set in Redis)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        return int(client.zcard(f"{SOCKET_KEY_PREFIX}{user_id}"))
    finally:
        client.close()


async def wait_counted(user_id: int, expected: int, timeout: float = 10.0) -> None:
    """Poll the shared count until it is ``expected``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (count := await asyncio.to_thread(counted_sockets, user_id)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"shared count {count}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_logout_on_one_backend_closes_the_sessions_socket_on_the_other(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt, first, second, people = two_backends(runtime_factory, backend_factory)
    clients = await both_sides(rt, (first, second), people, "u-one")
    browser = AdminBrowser(first.base_url, people.users["u-one"].session_key)
    browser.csrf()
    await expect_closed(
        clients, browser.logout, row="logout, two Backends on Redis", code=4401, error="not_authenticated"
    )


async def test_an_admin_change_on_one_backend_closes_sockets_on_both(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt, first, second, people = two_backends(runtime_factory, backend_factory)
    clients = await both_sides(rt, (first, second), people, "u-two")
    admin = AdminBrowser(second.base_url, people.users["operator"].session_key)
    path = f"/admin/auth/user/{people.users['u-two'].user_id}/change/"
    fields = admin.form(path, {"is_active": False})
    await expect_closed(
        clients,
        lambda: admin.submit(path, fields),
        row="user deactivated (admin), two Backends on Redis",
        code=4401,
        error="not_authenticated",
    )


async def test_a_runtime_disabled_by_sync_runtimes_closes_sockets_on_both_backends(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt, first, second, people = two_backends(runtime_factory, backend_factory)
    clients = await both_sides(rt, (first, second), people, "u-one")
    clients += await both_sides(rt, (second, first), people, "operator")
    config = first.log_path.parent / "disable.toml"
    config.write_text(RuntimeEntry.of(rt).toml() + "enabled = false\n", "utf-8")

    def sync() -> None:
        # A third process: its signal reaches both Backends over Redis.
        result = first.manage("sync_runtimes", "--file", str(config))
        assert result.returncode == 0, result.stdout + result.stderr

    row = "runtime disabled (sync_runtimes), two Backends on Redis"
    changed_at = row_updated_at(first, rt.runtime_id)
    await expect_closed(clients, sync, row=row, code=4503, error="runtime_disabled", changed_at=changed_at)
    await wait_streams_open(rt, lambda n: n == 0, timeout=15, what="every upstream closed")


async def test_the_socket_cap_counts_both_backends(
    runtime_factory: RuntimeFactory, backend_factory: BackendFactory
) -> None:
    rt, first, second, people = two_backends(runtime_factory, backend_factory)
    login = people.users["u-cap"]
    open_ = await both_sides(rt, (first, second, first), people, "u-cap")
    try:
        worker_id = str(open_[0].events()[0]["worker_id"])
        for backend in (second, first):
            url = backend.ws_url(rt.runtime_id, worker_id)
            over = await WsClient.connect(url, session_key=login.session_key, origin=backend.origin, name="over")
            assert await over.wait_closed(timeout=PROMPT_CLOSE) == 4429
            assert [f["error"]["code"] for f in over.frames] == ["rate_limited"]
        assert await asyncio.to_thread(counted_sockets, login.user_id) == CAP
        await open_.pop().close()
        await wait_counted(login.user_id, CAP - 1)
        # The freed slot is usable from the other process.
        again = await open_watch(second, rt.runtime_id, worker_id, login, name="again")
        open_.append(again)
        await wait_counted(login.user_id, CAP)
        assert again.close_code is None
    finally:
        await close_all(open_)
