"""Health: probes record status + capabilities on rows, run in parallel; cached reads stay off the network."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes import health
from runtimes.breaker import BASE_COOLDOWN, CircuitBreaker
from runtimes.errors import RuntimeAuthFailed, RuntimeNotFound, RuntimeUnreachable
from runtimes.health import HealthMonitor, probe_runtimes, runtime_probe
from runtimes.models import ProbeRecord, Runtime
from runtimes.registry import registry
from runtimes.selectors import runtime_get_visible, runtime_list_visible
from tests.backend_process import free_port
from tests.runtimes.conftest import Listener, ListenerFactory
from worker_runtime.ids import path_component
from worker_runtime.store import FsStore

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("isolated_data_dir")]

TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_HEALTH"
TOKEN_VALUE = "health-token-71d3e0aa-never-shown"
UNSET_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_HEALTH_UNSET"
SHORT_TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN_VALUE)
    monkeypatch.delenv(UNSET_TOKEN_ENV, raising=False)


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("hana", "hana@example.invalid", "hana-pw-for-tests")


def embedded_row(runtime_id: str = "emb", **fields: Any) -> Runtime:
    return Runtime.objects.create(
        runtime_id=runtime_id, display_name=runtime_id, kind=Runtime.Kind.EMBEDDED, **fields
    )


def remote_row(runtime_id: str, base_url: str, **fields: Any) -> Runtime:
    fields.setdefault("token_ref", f"env:{TOKEN_ENV}")
    fields.setdefault("connect_timeout", SHORT_TIMEOUT)
    fields.setdefault("read_timeout", SHORT_TIMEOUT)
    return Runtime.objects.create(
        runtime_id=runtime_id, display_name=runtime_id, kind=Runtime.Kind.REMOTE, base_url=base_url, **fields
    )


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_probe_of_embedded_runtime_marks_it_online_with_capabilities() -> None:
    embedded_row()
    before = timezone.now()
    [result] = probe_runtimes()
    assert (result.runtime_id, result.state, result.error_code) == ("emb", "online", "")
    assert result.latency_ms >= 0
    row = Runtime.objects.get(runtime_id="emb")
    assert row.status == "online"
    assert row.status_error_code == ""
    assert row.consecutive_failures == 0
    assert row.last_seen_at is not None and row.last_seen_at >= before
    assert row.checked_at is not None and row.checked_at >= before
    profiles = {profile["name"] for profile in row.capabilities["profiles"]}
    assert "builtin:echo" in profiles
    assert row.capabilities["protocol_version"] == "1"


def test_probe_of_embedded_runtime_with_unusable_store_reports_unreachable(settings: SettingsWrapper) -> None:
    data_dir = Path(settings.YOI_DATA_DIR)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.write_text("not a directory")
    embedded_row()
    out = StringIO()
    call_command("probe_runtimes", stdout=out)
    assert out.getvalue().startswith("emb: offline runtime_unreachable (")
    assert str(data_dir) not in out.getvalue()
    row = Runtime.objects.get(runtime_id="emb")
    assert (row.status, row.status_error_code) == ("offline", "runtime_unreachable")


def test_probe_clears_a_previous_failure() -> None:
    embedded_row(status="offline", status_error_code="runtime_unreachable", consecutive_failures=3)
    runtime_probe(runtime_id="emb")
    row = Runtime.objects.get(runtime_id="emb")
    assert (row.status, row.status_error_code, row.consecutive_failures) == ("online", "", 0)


def test_probe_of_refused_remote_marks_it_offline_and_counts_failures() -> None:
    remote_row("dead", refused_url())
    [result] = probe_runtimes()
    assert (result.state, result.error_code) == ("offline", "runtime_unreachable")
    row = Runtime.objects.get(runtime_id="dead")
    assert (row.status, row.status_error_code, row.consecutive_failures) == ("offline", "runtime_unreachable", 1)
    assert row.checked_at is not None
    assert row.last_seen_at is None
    probe_runtimes(runtime_ids=["dead"])
    row.refresh_from_db()
    assert row.consecutive_failures == 2


def test_probe_with_unset_token_is_a_local_failure_that_leaves_the_row(listener: Listener) -> None:
    row = remote_row("no-token", listener.base_url, token_ref=f"env:{UNSET_TOKEN_ENV}", status="online")
    [result] = probe_runtimes()
    assert (result.state, result.error_code, result.local) == ("local_failure", "runtime_auth_failed", True)
    after = Runtime.objects.get(runtime_id="no-token")
    assert (after.status, after.checked_at, after.consecutive_failures) == ("online", row.checked_at, 0)
    assert listener.connections() == 0
    assert not ProbeRecord.objects.exists()


def test_probe_runtimes_command_without_the_token_variable_reports_locally_and_exits_non_zero(
    listener: Listener,
) -> None:
    remote_row("no-token", listener.base_url, token_ref=f"env:{UNSET_TOKEN_ENV}", status="online")
    embedded_row("emb")
    out = StringIO()
    with pytest.raises(CommandError, match="could not be probed from this process: no-token"):
        call_command("probe_runtimes", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "emb: online (" + lines[0].split("(", 1)[1]
    assert lines[1].startswith("no-token: local_failure runtime_auth_failed (")
    assert lines[1].endswith("not probed from this process; its status was left as it was")
    assert Runtime.objects.get(runtime_id="no-token").status == "online"


def test_probe_of_an_embedded_store_held_by_another_process_leaves_the_row(settings: SettingsWrapper) -> None:
    embedded_row("emb", status="online")
    # The serving process holds the store's lock; a second FsStore on it is what a second process sees.
    holder = FsStore(Path(settings.YOI_DATA_DIR) / "embedded" / path_component("emb"))
    holder.open("emb")
    try:
        [result] = probe_runtimes()
    finally:
        holder.close()
    assert (result.state, result.error_code) == ("local_failure", "runtime_unreachable")
    assert Runtime.objects.get(runtime_id="emb").status == "online"


def test_runtime_call_with_an_unresolvable_token_leaves_the_row_and_the_breaker(listener: Listener) -> None:
    remote_row("no-token", listener.base_url, token_ref=f"env:{UNSET_TOKEN_ENV}", status="online")
    for _ in range(6):
        with pytest.raises(RuntimeAuthFailed):
            registry.call("no-token", lambda handle: handle.list_workers())
    assert registry.breaker_state("no-token") == "closed"
    assert Runtime.objects.get(runtime_id="no-token").status == "online"
    assert listener.connections() == 0


def test_probes_are_kept_as_history(settings: SettingsWrapper) -> None:
    embedded_row("emb")
    for _ in range(3):
        runtime_probe(runtime_id="emb", source="refresh")
    assert list(ProbeRecord.objects.values_list("state", "source")) == [("online", "refresh")] * 3


def test_history_keeps_the_newest_probes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "PROBE_HISTORY", 2)
    embedded_row("emb")
    for _ in range(4):
        runtime_probe(runtime_id="emb")
    assert ProbeRecord.objects.count() == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_breaker(runtime_id: str, clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(runtime_id, clock=clock)
    registry._breakers[runtime_id] = breaker
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker


def test_monitor_reprobes_a_half_open_runtime_and_marks_it_online() -> None:
    embedded_row("emb", status="offline", status_error_code="runtime_unreachable")
    registry.connections(fresh=True)
    clock = FakeClock()
    breaker = open_breaker("emb", clock)
    monitor = HealthMonitor(interval=1, sweep_interval=3600)
    assert monitor.run_once() == []  # still open: not due
    clock.now += BASE_COOLDOWN
    [result] = monitor.run_once()
    assert (result.runtime_id, result.state) == ("emb", "online")
    assert breaker.state == "closed"
    assert Runtime.objects.get(runtime_id="emb").status == "online"
    assert ProbeRecord.objects.get().source == "background"


def test_monitor_trial_failure_reopens_the_breaker_with_a_longer_cooldown() -> None:
    remote_row("dead", refused_url(), status="offline")
    registry.connections(fresh=True)
    clock = FakeClock()
    breaker = open_breaker("dead", clock)
    clock.now += BASE_COOLDOWN
    monitor = HealthMonitor(interval=1, sweep_interval=3600)
    [result] = monitor.run_once()
    assert result.state == "offline"
    assert breaker.state == "open"
    clock.now += BASE_COOLDOWN
    assert breaker.state == "open"  # the cooldown doubled
    assert monitor.run_once() == []


def test_monitor_sweep_reprobes_failed_rows_with_a_closed_breaker() -> None:
    embedded_row("emb", status="offline", status_error_code="runtime_unreachable")
    embedded_row("fine", status="configured")
    registry.connections(fresh=True)
    results = HealthMonitor(interval=1, sweep_interval=0).run_once()
    assert [(r.runtime_id, r.state) for r in results] == [("emb", "online")]
    assert Runtime.objects.get(runtime_id="fine").status == "configured"


def test_probe_of_disabled_runtime_makes_no_connection_and_leaves_the_row(listener: Listener) -> None:
    remote_row("off", listener.base_url, enabled=False)
    [result] = probe_runtimes()
    assert (result.state, result.error_code) == ("disabled", "runtime_disabled")
    row = Runtime.objects.get(runtime_id="off")
    assert (row.status, row.checked_at, row.consecutive_failures) == ("configured", None, 0)
    assert listener.connections() == 0


def test_probes_run_in_parallel(listener_factory: ListenerFactory) -> None:
    count = 8
    listeners = [listener_factory() for _ in range(count)]
    for index, listener in enumerate(listeners):
        remote_row(f"slow-{index}", listener.base_url)
    started = time.monotonic()
    results = probe_runtimes()
    elapsed = time.monotonic() - started
    assert [(r.state, r.error_code) for r in results] == [("offline", "runtime_timeout")] * count
    assert all(listener.connections() == 1 for listener in listeners)
    # One after the other they would take count * SHORT_TIMEOUT = 4 s.
    assert elapsed < 4 * SHORT_TIMEOUT, f"{count} probes of {SHORT_TIMEOUT} s took {elapsed:.2f} s"
    assert set(Runtime.objects.values_list("status_error_code", flat=True)) == {"runtime_timeout"}


def test_probe_threads_never_read_the_database(settings: SettingsWrapper) -> None:
    # With no caching every lookup would reload the rows; pool threads must use the ones already loaded
    # (on this non-transactional test database another thread cannot even see them).
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0
    embedded_row("emb")
    remote_row("dead", refused_url())
    results = probe_runtimes()
    assert [(r.runtime_id, r.state) for r in results] == [("dead", "offline"), ("emb", "online")]


def test_probe_runtimes_command_prints_one_line_per_runtime() -> None:
    embedded_row("emb")
    remote_row("dead", refused_url())
    out = StringIO()
    call_command("probe_runtimes", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("dead: offline runtime_unreachable (")
    assert lines[1].startswith("emb: online (")
    assert all(line.endswith(" ms)") for line in lines)
    assert Runtime.objects.get(runtime_id="emb").status == "online"


def test_probe_runtimes_command_probes_only_the_given_ids() -> None:
    embedded_row("emb")
    remote_row("dead", refused_url())
    out = StringIO()
    call_command("probe_runtimes", "emb", stdout=out)
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == ["emb"]
    assert Runtime.objects.get(runtime_id="dead").checked_at is None


def test_probe_runtimes_command_rejects_unknown_ids() -> None:
    embedded_row("emb")
    with pytest.raises(CommandError, match="unknown runtime ids: ghost"):
        call_command("probe_runtimes", "emb", "ghost", stdout=StringIO())
    assert Runtime.objects.get(runtime_id="emb").checked_at is None


def test_probe_runtimes_command_with_no_runtimes() -> None:
    out = StringIO()
    call_command("probe_runtimes", stdout=out)
    assert out.getvalue().strip() == "no runtimes registered"


def test_command_output_carries_no_address_or_token() -> None:
    port = free_port()
    remote_row("dead", f"http://127.0.0.1:{port}")
    out = StringIO()
    call_command("probe_runtimes", stdout=out)
    assert str(port) not in out.getvalue() and TOKEN_VALUE not in out.getvalue()


# ------------------------------------------------------------------------------ the call path records status


def test_a_call_failure_marks_the_row_at_once() -> None:
    remote_row("dead", refused_url())
    with pytest.raises(RuntimeUnreachable):
        registry.call("dead", lambda handle: handle.list_workers())
    row = Runtime.objects.get(runtime_id="dead")
    assert (row.status, row.status_error_code, row.consecutive_failures) == ("offline", "runtime_unreachable", 1)


def test_a_call_success_marks_the_row_online_at_most_once_per_interval() -> None:
    embedded_row()
    assert registry.call("emb", lambda handle: handle.list_workers()) == []
    row = Runtime.objects.get(runtime_id="emb")
    assert row.status == "online" and row.last_seen_at is not None
    Runtime.objects.filter(runtime_id="emb").update(status="offline")
    registry.call("emb", lambda handle: handle.list_workers())
    assert Runtime.objects.get(runtime_id="emb").status == "offline"  # no write on the hot path


# ------------------------------------------------------------------------------------- stale-on-read


def test_get_visible_probes_a_never_checked_runtime(user: User) -> None:
    embedded_row()
    view = runtime_get_visible(runtime_id="emb", user=user)
    assert view.state == "online"
    assert view.checked_at is not None and view.last_seen_at is not None
    assert view.capabilities.profiles is not None
    assert "builtin:echo" in {profile.name for profile in view.capabilities.profiles}


def test_get_visible_reprobes_when_stale(user: User, listener: Listener, settings: SettingsWrapper) -> None:
    settings.YOI_STATUS_STALE_SECONDS = 30
    old = timezone.now() - timedelta(seconds=60)
    remote_row("slow", listener.base_url, status="online", checked_at=old, last_seen_at=old)
    view = runtime_get_visible(runtime_id="slow", user=user)
    assert listener.connections() == 1
    assert (view.state, view.error_code) == ("offline", "runtime_timeout")
    assert view.checked_at is not None and view.checked_at > old
    assert view.last_seen_at == old


def test_get_visible_uses_the_cache_when_fresh(user: User, listener: Listener, settings: SettingsWrapper) -> None:
    settings.YOI_STATUS_STALE_SECONDS = 30
    recent = timezone.now() - timedelta(seconds=5)
    remote_row("fresh", listener.base_url, status="online", checked_at=recent, last_seen_at=recent)
    view = runtime_get_visible(runtime_id="fresh", user=user)
    assert (view.state, view.checked_at) == ("online", recent)
    assert listener.connections() == 0


def test_get_visible_does_not_probe_a_disabled_runtime(user: User, listener: Listener) -> None:
    remote_row("off", listener.base_url, enabled=False)
    view = runtime_get_visible(runtime_id="off", user=user)
    assert (view.state, view.enabled) == ("disabled", False)
    assert listener.connections() == 0


def test_list_visible_makes_no_upstream_call(user: User, listener_factory: ListenerFactory) -> None:
    listeners = [listener_factory() for _ in range(3)]
    for index, listener in enumerate(listeners):
        remote_row(f"rt-{index}", listener.base_url)  # never checked: stale, yet listing must not probe
    views = runtime_list_visible(user=user)
    assert [view.runtime_id for view in views] == ["rt-0", "rt-1", "rt-2"]
    assert {view.state for view in views} == {"configured"}
    assert [listener.connections() for listener in listeners] == [0, 0, 0]


# ------------------------------------------------------------------------------------------- visibility


def test_visibility_follows_groups(user: User) -> None:
    team = Group.objects.create(name="team")
    member = User.objects.create_user("mika", "mika@example.invalid", "mika-pw-for-tests")
    member.groups.add(team)
    staff = User.objects.create_user("sora", "sora@example.invalid", "sora-pw-for-tests", is_staff=True)
    embedded_row("open")
    embedded_row("private").groups.add(team)

    assert [view.runtime_id for view in runtime_list_visible(user=user)] == ["open"]
    assert [view.runtime_id for view in runtime_list_visible(user=member)] == ["open", "private"]
    assert [view.runtime_id for view in runtime_list_visible(user=staff)] == ["open", "private"]
    with pytest.raises(RuntimeNotFound) as caught:
        runtime_get_visible(runtime_id="private", user=user)
    assert caught.value.runtime_id == "private"
    with pytest.raises(RuntimeNotFound):
        runtime_get_visible(runtime_id="nope", user=user)
    assert registry.connections()["private"].group_ids == frozenset({team.pk})
