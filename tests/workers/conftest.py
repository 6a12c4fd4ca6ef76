"""Fixtures of the browser API tests: users, authenticated clients, runtime rows, a clean registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from runtimes.models import Runtime
from runtimes.registry import registry
from tests.backend_process import free_port
from workers.relay import relay_hub
from workers.sockets import live_sockets

DEAD_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_API_DEAD_RUNTIME"
DEAD_TOKEN_VALUE = "dead-runtime-token-9b1e77c2-never-shown"


@pytest.fixture(autouse=True)
def clean_registry(settings: SettingsWrapper, tmp_path: Path) -> Iterator[None]:
    """Every test starts with an empty registry, its own data dir, and leaves no handle open."""
    settings.YOI_DATA_DIR = tmp_path / "data"
    registry.reset()
    try:
        yield
    finally:
        registry.reset()


@pytest.fixture(autouse=True)
def fresh_command_rates() -> Iterator[None]:
    """Per-user command counts start at zero: user ids repeat from test to test."""
    from django.core.cache import caches

    caches["limits"].clear()
    yield
    caches["limits"].clear()


@pytest.fixture
async def quick_relay(settings: SettingsWrapper) -> AsyncIterator[SettingsWrapper]:
    """Fast linger, no cluster mode; every open socket and relay forgotten at the end, on the test's loop."""
    settings.YOI_RELAY_LINGER_SECONDS = 0.2
    settings.REDIS_URL = ""
    live_sockets.reset()
    try:
        yield settings
    finally:
        live_sockets.reset()
        relay_hub.reset()


@pytest.fixture
def user(db: None) -> User:
    """A plain authenticated user in no group."""
    return User.objects.create_user("alice", "alice@example.invalid", "alice-pw-for-tests")


@pytest.fixture
def staff_user(db: None) -> User:
    """A staff user (sees every runtime)."""
    return User.objects.create_user("sam", "sam@example.invalid", "sam-pw-for-tests", is_staff=True)


@pytest.fixture
def api_client(user: User) -> APIClient:
    """An APIClient authenticated as ``user``."""
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def anon_client() -> APIClient:
    """An APIClient with no credentials."""
    return APIClient()


@pytest.fixture
def embedded_runtime(db: None) -> Runtime:
    """An enabled embedded runtime row ``local`` (its store lives in the test's data dir)."""
    return Runtime.objects.create(runtime_id="local", display_name="Local", kind=Runtime.Kind.EMBEDDED)


@pytest.fixture
def dead_runtime(db: None, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A remote runtime row ``dead`` pointing at a refused 127.0.0.1 port, with a resolvable token."""
    monkeypatch.setenv(DEAD_TOKEN_ENV, DEAD_TOKEN_VALUE)
    return Runtime.objects.create(
        runtime_id="dead",
        display_name="Dead host",
        kind=Runtime.Kind.REMOTE,
        base_url=f"http://127.0.0.1:{free_port()}",
        token_ref=f"env:{DEAD_TOKEN_ENV}",
        connect_timeout=1.0,
        read_timeout=2.0,
    )


class ServiceSpy:
    """Replaces the service functions imported by ``workers.views``; records calls, answers or raises."""

    NAMES = (
        "worker_list",
        "worker_get",
        "worker_create",
        "worker_send_input",
        "worker_stop",
        "worker_cancel",
        "worker_transcript",
        "worker_list_all",
        "runtime_get_visible",
        "runtime_list_visible",
    )

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._behaviour: dict[str, Callable[..., Any]] = {}
        for name in self.NAMES:
            monkeypatch.setattr(f"workers.views.{name}", self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            behaviour = self._behaviour.get(name)
            if behaviour is None:
                raise AssertionError(f"unexpected service call {name}")
            return behaviour(**kwargs)

        return call

    def answer(self, name: str, value: Any) -> None:
        """``name`` returns ``value``."""
        self._behaviour[name] = lambda **_: value

    def raise_(self, name: str, error: BaseException) -> None:
        """``name`` raises ``error``."""

        def fail(**_: Any) -> Any:
            raise error

        self._behaviour[name] = fail


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> ServiceSpy:
    """Service functions of ``workers.views`` replaced by a spy (unexpected calls fail the test)."""
    return ServiceSpy(monkeypatch)
