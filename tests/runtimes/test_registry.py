"""RuntimeRegistry: handle caching and rebuilds, disabled rows, the breaker around calls; the embedded lock."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.breaker import FAILURE_THRESHOLD
from runtimes.errors import (
    RuntimeCircuitOpen,
    RuntimeDisabled,
    RuntimeNotFound,
    RuntimeTimeout,
    RuntimeUnreachable,
    WorkerNotFound,
)
from runtimes.handles.base import RuntimeHandle
from runtimes.handles.embedded import EmbeddedRuntimeHandle
from runtimes.models import Runtime
from runtimes.registry import RuntimeConnection, RuntimeRegistry, registry
from runtimes.types import WorkerSpec
from tests.backend_process import free_port
from tests.runtime_process import wait_until
from tests.runtimes.conftest import Listener

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("isolated_data_dir")]

TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_REGISTRY"
TOKEN_VALUE = "registry-token-4f0c2a9e-never-shown"
REBUILD_WAIT = 5.0


class FakeHandle:
    """Stands in for a runtime handle: records what it built from and whether it was closed."""

    kind = "remote"

    def __init__(self, connection: RuntimeConnection) -> None:
        self.runtime_id = connection.runtime_id
        self.connection = connection
        self.closed = False

    def summary(self) -> str:
        return "summary"

    def get_worker(self, worker_id: str) -> Any:
        raise WorkerNotFound(runtime_id=self.runtime_id, worker_id=worker_id)

    def close(self) -> None:
        self.closed = True


class FactorySpy:
    """A handle factory that records every handle it builds."""

    def __init__(self) -> None:
        self.built: list[FakeHandle] = []

    def __call__(self, connection: RuntimeConnection) -> RuntimeHandle:
        handle = FakeHandle(connection)
        self.built.append(handle)
        return handle  # type: ignore[return-value]


def get_fake(reg: RuntimeRegistry, runtime_id: str) -> FakeHandle:
    """``reg.get(runtime_id)``, which in these tests is a handle built by the spy."""
    handle = reg.get(runtime_id)
    assert isinstance(handle, FakeHandle)
    return handle


@pytest.fixture
def factory() -> FactorySpy:
    return FactorySpy()


@pytest.fixture
def spy_registry(factory: FactorySpy) -> Iterator[RuntimeRegistry]:
    """A registry over the real rows whose handles come from the spy."""
    reg = RuntimeRegistry(factory=factory)
    try:
        yield reg
    finally:
        reg.reset()


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN_VALUE)
    return f"env:{TOKEN_ENV}"


def remote_row(runtime_id: str, base_url: str, **fields: Any) -> Runtime:
    fields.setdefault("token_ref", f"env:{TOKEN_ENV}")
    fields.setdefault("connect_timeout", 1.0)
    fields.setdefault("read_timeout", 1.0)
    return Runtime.objects.create(
        runtime_id=runtime_id, display_name=runtime_id, kind=Runtime.Kind.REMOTE, base_url=base_url, **fields
    )


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_builds_a_handle_once_and_reuses_it(spy_registry: RuntimeRegistry, factory: FactorySpy) -> None:
    remote_row("rt-a", refused_url())
    first = get_fake(spy_registry, "rt-a")
    assert spy_registry.get("rt-a") is first
    assert spy_registry.call("rt-a", lambda handle: handle) is first
    assert len(factory.built) == 1
    assert factory.built[0].connection.runtime_id == "rt-a"


def test_unknown_runtime_is_not_found(spy_registry: RuntimeRegistry, factory: FactorySpy) -> None:
    with pytest.raises(RuntimeNotFound) as caught:
        spy_registry.get("nope")
    assert caught.value.runtime_id == "nope"
    with pytest.raises(RuntimeNotFound):
        spy_registry.call("nope", lambda handle: handle.summary())
    assert factory.built == []


def test_disabled_runtime_raises_without_building_a_handle(
    spy_registry: RuntimeRegistry, factory: FactorySpy
) -> None:
    remote_row("rt-off", refused_url(), enabled=False)
    with pytest.raises(RuntimeDisabled) as caught:
        spy_registry.get("rt-off")
    assert caught.value.code == "runtime_disabled"
    calls: list[str] = []
    with pytest.raises(RuntimeDisabled):
        spy_registry.call("rt-off", lambda handle: calls.append("called"))
    assert calls == []
    assert factory.built == []


def test_disabled_remote_gets_no_upstream_connection(listener: Listener, token_env: str) -> None:
    remote_row("rt-off", listener.base_url, enabled=False)
    for _ in range(3):
        with pytest.raises(RuntimeDisabled):
            registry.call("rt-off", lambda handle: handle.summary())
    assert listener.connections() == 0


def test_row_changes_wait_for_the_refresh_interval(
    spy_registry: RuntimeRegistry, factory: FactorySpy, settings: SettingsWrapper
) -> None:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 3600
    row = remote_row("rt-a", refused_url())
    first = get_fake(spy_registry, "rt-a")
    row.base_url = refused_url()
    row.save()
    assert spy_registry.get("rt-a") is first  # the cached rows are still in force
    assert not first.closed


CHANGES: dict[str, Callable[[Runtime], None]] = {
    "base_url": lambda row: setattr(row, "base_url", refused_url()),
    "connect_timeout": lambda row: setattr(row, "connect_timeout", 1.5),
    "read_timeout": lambda row: setattr(row, "read_timeout", 7.0),
    "token_ref": lambda row: setattr(row, "token_ref", "env:YOI_RUNTIME_TOKEN_TEST_REGISTRY_OTHER"),
    "kind": lambda row: (setattr(row, "kind", Runtime.Kind.EMBEDDED), setattr(row, "base_url", "")),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_connection_change_rebuilds_the_handle_after_the_refresh_interval(
    field: str, spy_registry: RuntimeRegistry, factory: FactorySpy, settings: SettingsWrapper
) -> None:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0.05
    row = remote_row("rt-a", refused_url())
    first = get_fake(spy_registry, "rt-a")
    CHANGES[field](row)
    row.save()
    wait_until(lambda: spy_registry.get("rt-a") is not first, timeout=REBUILD_WAIT, message="a rebuilt handle")
    assert first.closed
    assert len(factory.built) == 2
    rebuilt = factory.built[1]
    assert spy_registry.get("rt-a") is rebuilt
    assert getattr(rebuilt.connection, field) == getattr(row, field)


def test_new_base_url_reaches_the_new_address_after_the_refresh_interval(
    listener: Listener, token_env: str, settings: SettingsWrapper
) -> None:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0.05
    row = remote_row("rt-moved", refused_url(), read_timeout=0.3)
    with pytest.raises(RuntimeUnreachable):
        registry.call("rt-moved", lambda handle: handle.summary(), guarded=False)
    old = registry.get("rt-moved")
    row.base_url = listener.base_url
    row.save()

    def reached_listener() -> bool:
        with contextlib.suppress(RuntimeUnreachable, RuntimeTimeout):
            registry.call("rt-moved", lambda handle: handle.summary(), guarded=False)
        return listener.connections() > 0

    wait_until(reached_listener, timeout=REBUILD_WAIT, message="a call at the new address")
    assert registry.get("rt-moved") is not old


def test_display_name_change_keeps_the_handle(
    spy_registry: RuntimeRegistry, factory: FactorySpy, settings: SettingsWrapper
) -> None:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0.05
    row = remote_row("rt-a", refused_url())
    first = get_fake(spy_registry, "rt-a")
    row.display_name = "Renamed"
    row.save()
    wait_until(
        lambda: spy_registry.connection("rt-a").display_name == "Renamed",
        timeout=REBUILD_WAIT,
        message="the renamed row",
    )
    assert spy_registry.get("rt-a") is first
    assert not first.closed
    assert len(factory.built) == 1


def test_disabling_a_row_closes_its_handle_after_the_refresh_interval(
    spy_registry: RuntimeRegistry, factory: FactorySpy, settings: SettingsWrapper
) -> None:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0.05
    row = remote_row("rt-a", refused_url())
    first = get_fake(spy_registry, "rt-a")
    row.enabled = False
    row.save()
    wait_until(lambda: not spy_registry.connection("rt-a").enabled, timeout=REBUILD_WAIT, message="disabled")
    assert first.closed
    with pytest.raises(RuntimeDisabled):
        spy_registry.get("rt-a")
    row.enabled = True
    row.save()
    wait_until(lambda: spy_registry.connection("rt-a").enabled, timeout=REBUILD_WAIT, message="re-enabled")
    assert spy_registry.get("rt-a") is not first
    assert len(factory.built) == 2


def test_deleted_row_closes_its_handle(
    spy_registry: RuntimeRegistry, factory: FactorySpy, settings: SettingsWrapper
) -> None:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0.05
    row = remote_row("rt-a", refused_url())
    first = get_fake(spy_registry, "rt-a")
    row.delete()
    wait_until(lambda: "rt-a" not in spy_registry.connections(), timeout=REBUILD_WAIT, message="row gone")
    assert first.closed
    with pytest.raises(RuntimeNotFound):
        spy_registry.get("rt-a")


def test_reset_closes_every_handle_and_forgets_rows(spy_registry: RuntimeRegistry, factory: FactorySpy) -> None:
    remote_row("rt-a", refused_url())
    remote_row("rt-b", refused_url())
    a, b = get_fake(spy_registry, "rt-a"), get_fake(spy_registry, "rt-b")
    spy_registry.reset()
    assert a.closed and b.closed
    assert repr(spy_registry) == "RuntimeRegistry(runtimes=[])"
    assert spy_registry.get("rt-a") is not a
    assert len(factory.built) == 3


def test_transport_failures_open_the_breaker_then_calls_fast_fail(token_env: str) -> None:
    remote_row("rt-dead", refused_url())
    attempts: list[int] = []

    def summary(handle: RuntimeHandle) -> object:
        attempts.append(1)
        return handle.summary()

    for _ in range(FAILURE_THRESHOLD):
        with pytest.raises(RuntimeUnreachable):
            registry.call("rt-dead", summary)
    assert registry.breaker("rt-dead").state == "open"
    assert len(attempts) == FAILURE_THRESHOLD
    with pytest.raises(RuntimeCircuitOpen) as caught:
        registry.call("rt-dead", summary)
    assert len(attempts) == FAILURE_THRESHOLD  # no connection attempt was made
    assert caught.value.retry_after >= 1
    assert caught.value.runtime_id == "rt-dead"


def test_unguarded_calls_skip_the_fast_fail(token_env: str) -> None:
    remote_row("rt-dead", refused_url())
    for _ in range(FAILURE_THRESHOLD):
        with pytest.raises(RuntimeUnreachable):
            registry.call("rt-dead", lambda handle: handle.summary())
    with pytest.raises(RuntimeUnreachable):
        registry.call("rt-dead", lambda handle: handle.summary(), guarded=False)


def test_non_transport_error_counts_as_success(spy_registry: RuntimeRegistry) -> None:
    remote_row("rt-a", refused_url())

    def unreachable(handle: RuntimeHandle) -> None:
        raise RuntimeUnreachable(runtime_id="rt-a")

    for _ in range(FAILURE_THRESHOLD - 1):
        with pytest.raises(RuntimeUnreachable):
            spy_registry.call("rt-a", unreachable)
    with pytest.raises(WorkerNotFound):
        spy_registry.call("rt-a", lambda handle: handle.get_worker("w-1"))
    for _ in range(FAILURE_THRESHOLD - 1):
        with pytest.raises(RuntimeUnreachable):
            spy_registry.call("rt-a", unreachable)
    assert spy_registry.breaker("rt-a").state == "closed"
    assert spy_registry.call("rt-a", lambda handle: handle.summary()) == "summary"


def test_reprs_carry_no_address_or_token(token_env: str) -> None:
    port = free_port()
    remote_row("rt-secret", f"http://127.0.0.1:{port}")
    handle = registry.get("rt-secret")
    texts = [
        repr(registry),
        str(registry),
        repr(registry.connection("rt-secret")),
        repr(registry.connections()),
        repr(registry.breaker("rt-secret")),
        repr(handle),
        str(handle),
    ]
    for text in texts:
        assert "rt-secret" in text
        assert str(port) not in text
        assert "127.0.0.1" not in text
        assert TOKEN_VALUE not in text
        assert TOKEN_ENV not in text


def test_connection_repr_is_redacted() -> None:
    connection = RuntimeConnection(
        runtime_id="rt-x",
        display_name="X",
        kind="remote",
        base_url="http://runtime.internal.example:38800",
        token_ref="file:/run/secrets/rt-x",
        connect_timeout=1.0,
        read_timeout=1.0,
        enabled=True,
        group_ids=frozenset(),
        updated_at=datetime(2024, 1, 1),
    )
    text = repr(connection)
    assert "runtime.internal.example" not in text
    assert "/run/secrets" not in text
    assert "rt-x" in text


def test_build_handle_makes_the_kind_of_handle_the_row_asks_for(isolated_data_dir: Path, token_env: str) -> None:
    remote_row("rt-remote", refused_url())
    Runtime.objects.create(runtime_id="rt-embedded", display_name="E", kind=Runtime.Kind.EMBEDDED)
    assert registry.get("rt-remote").kind == "remote"
    embedded = registry.get("rt-embedded")
    assert isinstance(embedded, EmbeddedRuntimeHandle)
    assert embedded.summary().runtime_id == "rt-embedded"
    assert (isolated_data_dir / "embedded").is_dir()


# ------------------------------------------------------------------------------------- embedded store lock


def test_second_embedded_handle_on_the_same_store_is_unreachable_until_the_first_closes(
    isolated_data_dir: Path,
) -> None:
    first = EmbeddedRuntimeHandle("emb", data_dir=isolated_data_dir)
    second = EmbeddedRuntimeHandle("emb", data_dir=isolated_data_dir)
    try:
        assert first.summary().runtime_id == "emb"
        with pytest.raises(RuntimeUnreachable) as caught:
            second.summary()
        error = caught.value
        assert error.runtime_id == "emb"
        for text in (str(error), error.message, repr(error), str(error.to_json())):
            assert str(isolated_data_dir) not in text
            assert "/" not in text
        first.close()
        summary = second.summary()
        assert summary.runtime_id == "emb"
        assert summary.status == "running"
    finally:
        first.close()
        second.close()


def test_embedded_store_held_by_another_registry_makes_calls_unreachable(isolated_data_dir: Path) -> None:
    Runtime.objects.create(runtime_id="emb", display_name="E", kind=Runtime.Kind.EMBEDDED)
    other_process = RuntimeRegistry()  # a second Backend process sharing the data dir
    try:
        other_process.call("emb", lambda handle: handle.summary())
        with pytest.raises(RuntimeUnreachable):
            registry.call("emb", lambda handle: handle.summary())
        other_process.reset()
        assert registry.call("emb", lambda handle: handle.summary()).runtime_id == "emb"
    finally:
        other_process.reset()


def test_unusable_embedded_data_dir_is_unreachable_without_naming_the_path(isolated_data_dir: Path) -> None:
    isolated_data_dir.parent.mkdir(parents=True, exist_ok=True)
    isolated_data_dir.write_text("not a directory")
    handle = EmbeddedRuntimeHandle("emb", data_dir=isolated_data_dir)
    try:
        with pytest.raises(RuntimeUnreachable) as caught:
            handle.summary()
        assert str(isolated_data_dir) not in str(caught.value)
        assert "/" not in str(caught.value)
    finally:
        handle.close()


def test_embedded_store_failing_mid_command_is_unreachable_without_naming_the_path(
    isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = EmbeddedRuntimeHandle("emb", data_dir=isolated_data_dir)
    try:
        worker = handle.create_worker(WorkerSpec(profile="builtin:echo"))

        def disk_full(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device", str(isolated_data_dir / "events.jsonl"))

        monkeypatch.setattr("worker_runtime.store.FsStore.append_events", disk_full)
        with pytest.raises(RuntimeUnreachable) as caught:
            handle.send_input(worker.worker_id, content="hello")
        assert str(isolated_data_dir) not in str(caught.value) and "/" not in str(caught.value)
    finally:
        monkeypatch.undo()
        handle.close()
