"""Worker services over the real embedded core: auditing, visibility, routing by runtime_id + worker_id."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser, Group, User
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.errors import RuntimeDisabled, RuntimeNotFound, RuntimeRejected, RuntimeUnreachable, WorkerNotFound
from runtimes.models import AuditEvent, Runtime
from runtimes.types import WorkerDetail, WorkerSpec
from tests.runtime_process import wait_until
from workers.services import (
    RuntimeFailure,
    worker_cancel,
    worker_create,
    worker_get,
    worker_list,
    worker_list_all,
    worker_send_input,
    worker_stop,
    worker_transcript,
)

pytestmark = pytest.mark.django_db

ECHO = "builtin:echo"
WAIT_SECONDS = 10.0


def embedded(runtime_id: str, **fields: object) -> Runtime:
    return Runtime.objects.create(runtime_id=runtime_id, display_name=runtime_id, kind="embedded", **fields)


def create_echo(
    runtime_id: str, user: User, *, worker_id: str | None = None, initial_input: str = "hi"
) -> WorkerDetail:
    spec = WorkerSpec(profile=ECHO, initial_input=initial_input, worker_id=worker_id)
    return worker_create(runtime_id=runtime_id, spec=spec, user=user)


def transcript_len(runtime_id: str, worker_id: str, user: User) -> int:
    return worker_transcript(runtime_id=runtime_id, worker_id=worker_id, start=0, limit=1, user=user).total_items


def wait_for_transcript(runtime_id: str, worker_id: str, user: User, total: int) -> None:
    """Bounded wait until the echo worker has answered (its transcript holds ``total`` items)."""
    wait_until(
        lambda: transcript_len(runtime_id, worker_id, user) >= total,
        timeout=WAIT_SECONDS,
        message=f"{total} transcript items on {runtime_id}/{worker_id}",
    )


def only_new_audit(before: int) -> AuditEvent:
    """The one AuditEvent written since there were ``before`` of them."""
    assert AuditEvent.objects.count() == before + 1
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None
    return event


def assert_audit(
    event: AuditEvent, *, action: str, outcome: str, runtime_id: str, worker_id: str, user: User
) -> None:
    assert (event.action, event.outcome, event.runtime_id, event.worker_id) == (
        action,
        outcome,
        runtime_id,
        worker_id,
    )
    assert event.user_id == user.pk
    assert event.username == user.username
    assert event.latency_ms >= 0


# ----------------------------------------------------------------------------------------------- auditing


def test_each_command_writes_exactly_one_ok_audit_event(embedded_runtime: Runtime, user: User) -> None:
    before = AuditEvent.objects.count()
    worker = create_echo("local", user)
    assert (worker.runtime_id, worker.status, worker.profile) == ("local", "running", ECHO)
    assert_audit(
        only_new_audit(before),
        action="create",
        outcome="ok",
        runtime_id="local",
        worker_id=worker.worker_id,
        user=user,
    )
    wait_for_transcript("local", worker.worker_id, user, 2)

    before = AuditEvent.objects.count()
    ack = worker_send_input(
        runtime_id="local", worker_id=worker.worker_id, content="again", kind="user", user=user
    )
    assert (ack.runtime_id, ack.worker_id, ack.status) == ("local", worker.worker_id, "running")
    assert ack.transcript_sequence == 3
    assert_audit(
        only_new_audit(before),
        action="input",
        outcome="ok",
        runtime_id="local",
        worker_id=worker.worker_id,
        user=user,
    )

    before = AuditEvent.objects.count()
    ack = worker_stop(runtime_id="local", worker_id=worker.worker_id, reason="done", user=user)
    assert ack.status == "stopped"
    assert_audit(
        only_new_audit(before),
        action="stop",
        outcome="ok",
        runtime_id="local",
        worker_id=worker.worker_id,
        user=user,
    )

    other = create_echo("local", user, worker_id="to-cancel")
    assert other.worker_id == "to-cancel"
    before = AuditEvent.objects.count()
    ack = worker_cancel(runtime_id="local", worker_id="to-cancel", reason=None, user=user)
    assert ack.status == "cancelled"
    assert_audit(
        only_new_audit(before), action="cancel", outcome="ok", runtime_id="local", worker_id="to-cancel", user=user
    )
    assert worker_get(runtime_id="local", worker_id="to-cancel", user=user).status == "cancelled"


def test_queries_write_no_audit_event(embedded_runtime: Runtime, user: User) -> None:
    worker = create_echo("local", user)
    before = AuditEvent.objects.count()
    assert [w.worker_id for w in worker_list(runtime_id="local", user=user)] == [worker.worker_id]
    worker_get(runtime_id="local", worker_id=worker.worker_id, user=user)
    transcript_len("local", worker.worker_id, user)
    worker_list_all(user=user)
    assert AuditEvent.objects.count() == before


def test_input_to_a_stopped_worker_is_rejected_and_audited(embedded_runtime: Runtime, user: User) -> None:
    worker = create_echo("local", user)
    worker_stop(runtime_id="local", worker_id=worker.worker_id, reason=None, user=user)
    before = AuditEvent.objects.count()
    with pytest.raises(RuntimeRejected) as caught:
        worker_send_input(runtime_id="local", worker_id=worker.worker_id, content="late", kind="user", user=user)
    assert caught.value.upstream_code == "worker_not_running"
    assert caught.value.http_status == 409
    assert_audit(
        only_new_audit(before),
        action="input",
        outcome="runtime_rejected",
        runtime_id="local",
        worker_id=worker.worker_id,
        user=user,
    )


def test_stop_of_a_finished_worker_is_an_idempotent_ok(embedded_runtime: Runtime, user: User) -> None:
    worker = create_echo("local", user)
    worker_cancel(runtime_id="local", worker_id=worker.worker_id, reason=None, user=user)
    ack = worker_stop(runtime_id="local", worker_id=worker.worker_id, reason=None, user=user)
    assert ack.status == "cancelled"
    assert AuditEvent.objects.filter(action="stop", outcome="ok").count() == 1


def test_command_on_an_unknown_worker_is_audited_as_worker_not_found(
    embedded_runtime: Runtime, user: User
) -> None:
    before = AuditEvent.objects.count()
    with pytest.raises(WorkerNotFound) as caught:
        worker_send_input(runtime_id="local", worker_id="ghost", content="x", kind="user", user=user)
    assert (caught.value.runtime_id, caught.value.worker_id) == ("local", "ghost")
    assert_audit(
        only_new_audit(before),
        action="input",
        outcome="worker_not_found",
        runtime_id="local",
        worker_id="ghost",
        user=user,
    )
    with pytest.raises(WorkerNotFound):
        worker_cancel(runtime_id="local", worker_id="ghost", reason=None, user=user)
    assert AuditEvent.objects.filter(action="cancel", outcome="worker_not_found", worker_id="ghost").count() == 1


def test_transport_failure_is_audited_with_its_code(dead_runtime: Runtime, user: User) -> None:
    with pytest.raises(RuntimeUnreachable):
        worker_create(runtime_id="dead", spec=WorkerSpec(profile=ECHO), user=user)
    event = AuditEvent.objects.get()
    assert_audit(event, action="create", outcome="runtime_unreachable", runtime_id="dead", worker_id="", user=user)
    dead_runtime.refresh_from_db()
    assert (dead_runtime.status, dead_runtime.status_error_code) == ("offline", "runtime_unreachable")


def test_disabled_runtime_raises_runtime_disabled(user: User) -> None:
    embedded("off", enabled=False)
    with pytest.raises(RuntimeDisabled):
        worker_list(runtime_id="off", user=user)
    with pytest.raises(RuntimeDisabled):
        create_echo("off", user)
    # The attempt is on record (the runtime is visible to this user); the runtime itself was never opened.
    assert_audit(
        AuditEvent.objects.get(),
        action="create",
        outcome="runtime_disabled",
        runtime_id="off",
        worker_id="",
        user=user,
    )
    assert not (Path(django_settings.YOI_DATA_DIR) / "embedded").exists()


# --------------------------------------------------------------------------------------------- visibility


@pytest.fixture
def team() -> Group:
    return Group.objects.create(name="team")


@pytest.fixture
def private_runtime(team: Group) -> Runtime:
    row = embedded("private")
    row.groups.add(team)
    return row


def test_runtime_limited_to_a_group_is_not_found_for_an_outsider(private_runtime: Runtime, user: User) -> None:
    with pytest.raises(RuntimeNotFound) as caught:
        create_echo("private", user)
    assert caught.value.runtime_id == "private"
    with pytest.raises(RuntimeNotFound):
        worker_list(runtime_id="private", user=user)
    with pytest.raises(RuntimeNotFound):
        worker_stop(runtime_id="private", worker_id="w-1", reason=None, user=user)
    # Refused before any command runs: the refused commands are audited, and the runtime is never opened.
    rows = AuditEvent.objects.order_by("id").values_list("action", "runtime_id", "outcome", "user_id")
    assert list(rows) == [
        ("create", "private", "runtime_not_found", user.pk),
        ("stop", "private", "runtime_not_found", user.pk),
    ]
    assert not (Path(django_settings.YOI_DATA_DIR) / "embedded").exists()
    listing = worker_list_all(user=user)
    assert (listing.items, listing.errors) == ([], [])


def test_anonymous_user_sees_no_runtime(embedded_runtime: Runtime) -> None:
    with pytest.raises(RuntimeNotFound):
        worker_list(runtime_id="local", user=AnonymousUser())
    with pytest.raises(RuntimeNotFound):
        worker_create(runtime_id="local", spec=WorkerSpec(profile=ECHO), user=AnonymousUser())
    event = AuditEvent.objects.get()
    assert (event.action, event.outcome) == ("create", "runtime_not_found")
    assert (event.user_id, event.username) == (None, "")


def test_runtime_limited_to_a_group_is_visible_to_members(private_runtime: Runtime, team: Group) -> None:
    member = User.objects.create_user("mika", "mika@example.invalid", "mika-pw-for-tests")
    member.groups.add(team)
    worker = create_echo("private", member)
    assert [w.worker_id for w in worker_list(runtime_id="private", user=member)] == [worker.worker_id]
    assert AuditEvent.objects.get().user_id == member.pk


def test_runtime_limited_to_a_group_is_visible_to_staff(private_runtime: Runtime, staff_user: User) -> None:
    worker = create_echo("private", staff_user)
    assert [w.worker_id for w in worker_list_all(user=staff_user).items] == [worker.worker_id]


# ---------------------------------------------------------------------------------------------- routing


def test_same_worker_id_on_two_runtimes_routes_independently(user: User) -> None:
    embedded("emb-a")
    embedded("emb-b")
    a = create_echo("emb-a", user, worker_id="same", initial_input="to a")
    b = create_echo("emb-b", user, worker_id="same", initial_input="to b")
    assert (a.runtime_id, a.worker_id) == ("emb-a", "same")
    assert (b.runtime_id, b.worker_id) == ("emb-b", "same")
    wait_for_transcript("emb-a", "same", user, 2)
    wait_for_transcript("emb-b", "same", user, 2)

    worker_send_input(runtime_id="emb-a", worker_id="same", content="only a", kind="user", user=user)
    wait_for_transcript("emb-a", "same", user, 4)
    assert transcript_len("emb-b", "same", user) == 2
    page_b = worker_transcript(runtime_id="emb-b", worker_id="same", start=0, limit=10, user=user)
    assert [item.content for item in page_b.items if item.role == "user"] == ["to b"]

    worker_stop(runtime_id="emb-b", worker_id="same", reason=None, user=user)
    assert worker_get(runtime_id="emb-a", worker_id="same", user=user).status == "running"
    assert worker_get(runtime_id="emb-b", worker_id="same", user=user).status == "stopped"


def test_list_all_gathers_every_runtime_and_reports_failures(
    dead_runtime: Runtime, user: User, team: Group
) -> None:
    embedded("emb-a")
    embedded("emb-b")
    embedded("emb-off", enabled=False)
    embedded("emb-hidden").groups.add(team)
    create_echo("emb-a", user, worker_id="same")
    create_echo("emb-b", user, worker_id="same")
    create_echo("emb-b", user, worker_id="only-b")

    listing = worker_list_all(user=user)
    assert sorted((w.runtime_id, w.worker_id) for w in listing.items) == [
        ("emb-a", "same"),
        ("emb-b", "only-b"),
        ("emb-b", "same"),
    ]
    assert listing.errors == [RuntimeFailure(runtime_id="dead", code="runtime_unreachable")]


def test_list_all_pool_threads_never_read_the_database(user: User, settings: SettingsWrapper) -> None:
    # With no caching every lookup would reload the rows; pool threads must use the ones already loaded.
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0
    embedded("emb-a")
    create_echo("emb-a", user, worker_id="w-1")
    listing = worker_list_all(user=user)
    assert [(w.runtime_id, w.worker_id) for w in listing.items] == [("emb-a", "w-1")]
    assert listing.errors == []
