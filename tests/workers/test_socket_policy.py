"""Open event sockets follow policy (workers.sockets, workers.signals) through the real router and channel layer.

Each test opens a logged-in socket (a real session cookie through AuthMiddlewareStack), changes something
the way Django sees it — a logout, a user or group saved, a runtime row saved — or behind its back (a
queryset ``update``), and waits for the socket's error frame and close, with a deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.models import Runtime
from tests.workers.ws_helpers import READ_TIMEOUT, Socket, create_worker, events_path, runtime_handle, wait_until
from workers.relay import relay_hub
from workers.routing import websocket_urlpatterns
from workers.sockets import live_sockets
from yoi_backend.routing import websocket_urlpatterns as project_patterns

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_WITHIN = 5.0
BLACKHOLE_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_WS_BLACKHOLE"


@pytest.fixture(autouse=True)
def quick(quick_relay: SettingsWrapper) -> None:
    """Fast linger, no cluster mode, nothing left open; the registry re-reads rows every 0.5 s."""
    quick_relay.YOI_REGISTRY_REFRESH_SECONDS = 0.5


@pytest.fixture
def team() -> Group:
    """The group of the restricted runtime ``team-rt``."""
    return Group.objects.create(name="team")


@pytest.fixture
def member(team: Group) -> User:
    """A user in ``team``."""
    user = User.objects.create_user("mia", "mia@example.invalid", "mia-pw-for-tests")
    user.groups.add(team)
    return user


@pytest.fixture
def team_runtime(team: Group) -> Runtime:
    """An embedded runtime only ``team`` may see."""
    row = Runtime.objects.create(runtime_id="team-rt", display_name="Team", kind=Runtime.Kind.EMBEDDED)
    row.groups.add(team)
    return row


def _login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def login(user: User) -> Client:
    """A Django test client logged in as ``user`` (a real session in the session store)."""
    return await sync_to_async(_login)(user)


async def open_logged_in(path: str, client: Client, router: Any = None) -> Socket:
    """A socket through AuthMiddlewareStack with ``client``'s session cookie."""
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    app = AuthMiddlewareStack(router or URLRouter(websocket_urlpatterns))
    communicator = WebsocketCommunicator(app, path, headers=[(b"cookie", f"sessionid={cookie}".encode())])
    accepted, detail = await communicator.connect(timeout=10)
    if not accepted:
        return Socket(communicator, accepted=False, refused_code=int(detail), close_code=int(detail))
    return Socket(communicator, accepted=True)


async def watching(runtime_id: str, worker_id: str, client: Client) -> Socket:
    """A socket on an existing worker that the relay has started serving."""
    handle = await runtime_handle(runtime_id)
    await create_worker(handle, worker_id, initial_input=None)
    socket_ = await open_logged_in(events_path(runtime_id, worker_id, "after=0"), client)
    assert socket_.accepted
    await socket_.read_until(lambda f: f["type"] == "event")
    return socket_


async def closed_after(
    socket_: Socket, change: Callable[[], Awaitable[object]], *, within: float = CLOSE_WITHIN
) -> float:
    """Make ``change``, then read until the socket closes; seconds from the change to the close."""
    started = time.monotonic()
    await change()
    try:
        await socket_.read_until_closed(timeout=within)
    finally:
        await socket_.disconnect()
    return time.monotonic() - started


async def stays_open(socket_: Socket, *, quiet: float = 0.3) -> bool:
    """Read whatever arrives until nothing has for ``quiet`` seconds; True when the socket did not close."""
    while not await socket_.communicator.receive_nothing(timeout=quiet):
        # Something arrived: take it (a frame, or the close).
        if await socket_.next_frame(deadline=time.monotonic() + READ_TIMEOUT) is None:
            return False
    return socket_.close_code is None


def last_error(socket_: Socket) -> dict[str, Any]:
    """The error object of the socket's last frame, which must be an error frame."""
    frame = socket_.frames[-1]
    assert frame["type"] == "error", socket_.frames
    error: dict[str, Any] = frame["error"]
    return error


async def no_relay_left() -> None:
    """The upstream of a socket that ended closes as usual once no browser is left."""
    await wait_until(lambda: not list(relay_hub.relays()), message="relay closed")


# ------------------------------------------------------------------------------------------- sessions, users


async def test_logout_ends_that_sessions_sockets_with_4401(user: User, embedded_runtime: Runtime) -> None:
    tab, other_browser = await login(user), await login(user)
    doomed = await watching("local", "w-logout", tab)
    kept = await open_logged_in(events_path("local", "w-logout", "after=0"), other_browser)
    try:
        elapsed = await closed_after(doomed, sync_to_async(tab.logout))
        assert doomed.close_code == 4401
        assert last_error(doomed)["code"] == "not_authenticated"
        assert elapsed < CLOSE_WITHIN
        assert await stays_open(kept)
    finally:
        await kept.disconnect()


@pytest.mark.parametrize("change", ["deactivate", "delete", "password"])
async def test_a_user_change_ends_its_sockets_with_4401(
    user: User, embedded_runtime: Runtime, change: str
) -> None:
    socket_ = await watching("local", f"w-{change}", await login(user))

    def apply() -> None:
        if change == "delete":
            user.delete()
            return
        if change == "deactivate":
            user.is_active = False
        else:
            user.set_password("a-new-password-for-tests")
        user.save()

    await closed_after(socket_, sync_to_async(apply))
    assert socket_.close_code == 4401
    assert last_error(socket_)["code"] == "not_authenticated"
    await no_relay_left()


async def test_an_unrelated_save_keeps_the_socket(user: User, embedded_runtime: Runtime) -> None:
    socket_ = await watching("local", "w-kept", await login(user))
    try:
        before = live_sockets.checked
        user.first_name = "Alice"
        await sync_to_async(user.save)()
        await wait_until(lambda: live_sockets.checked > before, message="checked after the user's save")
        before = live_sockets.checked
        await sync_to_async(lambda: Runtime.objects.get(runtime_id="local").save())()
        await wait_until(lambda: live_sockets.checked > before, message="checked after the runtime's save")
        assert await stays_open(socket_)
    finally:
        await socket_.disconnect()


# ------------------------------------------------------------------------------------------- visibility


@pytest.mark.parametrize("side", ["user.groups", "group.user_set", "group.user_set.clear"])
async def test_leaving_the_runtimes_group_ends_with_4404(
    member: User, team: Group, team_runtime: Runtime, side: str
) -> None:
    socket_ = await watching("team-rt", f"w-{side.replace('.', '-')}", await login(member))

    def leave() -> None:
        if side == "user.groups":
            member.groups.remove(team)
        elif side == "group.user_set":
            team.user_set.remove(member)
        else:
            team.user_set.clear()

    await closed_after(socket_, sync_to_async(leave))
    assert socket_.close_code == 4404
    error = last_error(socket_)
    assert (error["code"], error["runtime_id"]) == ("runtime_not_found", "team-rt")
    await no_relay_left()


async def test_a_runtime_given_a_group_ends_the_sockets_of_outsiders(
    user: User, member: User, team: Group, embedded_runtime: Runtime
) -> None:
    outsider = await watching("local", "w-regroup", await login(user))
    insider = await open_logged_in(events_path("local", "w-regroup", "after=0"), await login(member))
    try:
        await closed_after(outsider, sync_to_async(lambda: embedded_runtime.groups.add(team)))
        assert outsider.close_code == 4404
        assert last_error(outsider)["code"] == "runtime_not_found"
        assert await stays_open(insider)
    finally:
        await insider.disconnect()


async def test_a_deleted_group_ends_its_members_sockets(member: User, team: Group, team_runtime: Runtime) -> None:
    # The runtime stays restricted (to another group): with no group left it would be open to everyone.
    await sync_to_async(lambda: team_runtime.groups.add(Group.objects.create(name="ops")))()
    socket_ = await watching("team-rt", "w-group-gone", await login(member))
    await closed_after(socket_, sync_to_async(team.delete))
    assert socket_.close_code == 4404
    assert last_error(socket_)["code"] == "runtime_not_found"


# ------------------------------------------------------------------------------------------- runtimes


async def test_a_disabled_runtime_ends_its_sockets_with_4503(user: User, embedded_runtime: Runtime) -> None:
    socket_ = await watching("local", "w-disabled", await login(user))

    def disable() -> None:
        embedded_runtime.enabled = False
        embedded_runtime.save()

    await closed_after(socket_, sync_to_async(disable))
    assert socket_.close_code == 4503
    error = last_error(socket_)
    assert (error["code"], error["runtime_id"]) == ("runtime_disabled", "local")
    await no_relay_left()


async def test_a_deleted_runtime_ends_its_sockets_with_4404(user: User, embedded_runtime: Runtime) -> None:
    socket_ = await watching("local", "w-deleted", await login(user))
    await closed_after(socket_, sync_to_async(embedded_runtime.delete))
    assert socket_.close_code == 4404
    assert last_error(socket_)["code"] == "runtime_not_found"
    await no_relay_left()


async def test_a_runtime_disabled_behind_djangos_back_is_seen_by_the_registry(
    user: User, embedded_runtime: Runtime
) -> None:
    """No signal (a queryset update, as another process or a shell would): the registry's refresh sees it."""
    socket_ = await watching("local", "w-update", await login(user))
    update = sync_to_async(lambda: Runtime.objects.filter(runtime_id="local").update(enabled=False))
    # Refresh 0.5 s + the 1 s look at the registry, with room for a loaded machine.
    elapsed = await closed_after(socket_, update)
    assert socket_.close_code == 4503
    assert elapsed < CLOSE_WITHIN


async def test_the_periodic_revalidation_finds_what_no_signal_told(
    user: User, embedded_runtime: Runtime, settings: SettingsWrapper
) -> None:
    settings.YOI_SOCKET_REVALIDATE_SECONDS = 1.0
    socket_ = await watching("local", "w-periodic", await login(user))
    deactivate = sync_to_async(lambda: User.objects.filter(pk=user.pk).update(is_active=False))
    elapsed = await closed_after(socket_, deactivate, within=10)
    assert socket_.close_code == 4401
    print(f"\nperiodic revalidation (interval 1 s): closed {elapsed:.2f} s after the change")


# ------------------------------------------------------------------------------------------- the cap


async def test_sockets_beyond_the_per_user_cap_get_rate_limited_and_4429(
    user: User, member: User, embedded_runtime: Runtime, settings: SettingsWrapper
) -> None:
    settings.YOI_MAX_SOCKETS_PER_USER = 2
    handle = await runtime_handle()
    await create_worker(handle, "w-cap", initial_input=None)
    path = events_path("local", "w-cap")
    client = await login(user)
    first, second = await open_logged_in(path, client), await open_logged_in(path, client)
    others = await open_logged_in(path, await login(member))  # another user has a cap of their own
    try:
        third = await open_logged_in(path, client)
        assert third.accepted
        assert await third.read_until_closed() == 4429
        assert [f["type"] for f in third.frames] == ["error"]
        error = last_error(third)
        assert error["code"] == "rate_limited" and error["retryable"] is True
        await third.disconnect()
        assert others.close_code is None and first.close_code is None
        await first.disconnect()
        await wait_until(lambda: live_sockets.count(user.pk) == 1, message="slot released")
        again = await open_logged_in(path, client)
        assert await stays_open(again)
        await again.disconnect()
    finally:
        for socket_ in (first, second, others):
            await socket_.disconnect()


async def test_a_cap_of_0_is_no_cap(user: User, embedded_runtime: Runtime, settings: SettingsWrapper) -> None:
    settings.YOI_MAX_SOCKETS_PER_USER = 0
    handle = await runtime_handle()
    await create_worker(handle, "w-nocap", initial_input=None)
    client = await login(user)
    sockets = [await open_logged_in(events_path("local", "w-nocap"), client) for _ in range(5)]
    try:
        await wait_until(lambda: live_sockets.count(user.pk) == 5, message="5 open")
        assert all(s.close_code is None for s in sockets)
    finally:
        for socket_ in sockets:
            await socket_.disconnect()


# ------------------------------------------------------------------------------------------- edges


@pytest.fixture
def blackhole(monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """A remote row whose address accepts connections and never answers; read timeout 30 s."""
    monkeypatch.setenv(BLACKHOLE_TOKEN_ENV, "blackhole-token")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield Runtime.objects.create(
            runtime_id="slow",
            display_name="Slow",
            kind=Runtime.Kind.REMOTE,
            base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            token_ref=f"env:{BLACKHOLE_TOKEN_ENV}",
            connect_timeout=2.0,
            read_timeout=30.0,
        )
    finally:
        sock.close()


async def test_a_slow_lookup_is_bounded_and_told_runtime_timeout_4504(
    user: User, blackhole: Runtime, settings: SettingsWrapper
) -> None:
    settings.YOI_SOCKET_LOOKUP_TIMEOUT_SECONDS = 0.5
    started = time.monotonic()
    socket_ = await open_logged_in(events_path("slow", "w1"), await login(user))
    try:
        assert socket_.accepted  # accepted first: the handshake never waits on the runtime
        assert await socket_.read_until_closed() == 4504
    finally:
        await socket_.disconnect()
    error = last_error(socket_)
    assert (error["code"], error["runtime_id"], error["worker_id"]) == ("runtime_timeout", "slow", "w1")
    assert time.monotonic() - started < 5  # not the runtime's 30 s read timeout
    assert "127.0.0.1" not in str(socket_.frames)


async def test_the_drain_hook_closes_every_socket_with_1001_and_later_ones_at_once(
    user: User, embedded_runtime: Runtime
) -> None:
    client = await login(user)
    first = await watching("local", "w-drain", client)
    second = await open_logged_in(events_path("local", "w-drain"), client)
    live_sockets.close_all()
    for socket_ in (first, second):
        assert await socket_.read_until_closed() == 1001
        await socket_.disconnect()
    late = await open_logged_in(events_path("local", "w-drain"), client)
    assert late.accepted and await late.read_until_closed() == 1001
    assert late.frames == []
    await late.disconnect()


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws/runtimes/local/workers/w1/", "/ws/", "/elsewhere/"])
async def test_unknown_paths_are_accepted_and_closed_4404(user: User, path: str) -> None:
    socket_ = await open_logged_in(path, await login(user), router=URLRouter(project_patterns))
    try:
        assert socket_.accepted
        assert await socket_.read_until_closed() == 4404
    finally:
        await socket_.disconnect()
    assert last_error(socket_)["code"] == "not_found"


async def test_empty_ids_are_invalid_request_4400(user: User) -> None:
    socket_ = await open_logged_in(
        "/ws/runtimes//workers/w1/events/", await login(user), router=URLRouter(project_patterns)
    )
    try:
        assert await socket_.read_until_closed() == 4400
    finally:
        await socket_.disconnect()
    assert set(last_error(socket_)["fields"]) == {"runtime_id"}
