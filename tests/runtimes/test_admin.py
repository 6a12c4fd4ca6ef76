"""The operator admin: refs shown, token values never; audit log read-only; badge, summary, probe action."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from runtimes.models import AuditEvent, Runtime

pytestmark = pytest.mark.django_db

TOKEN_VALUE = "adm1n-PAGE-token-Kx93-never-shown"
TOKEN_ENV = "YOI_TEST_ADMIN_RUNTIME_TOKEN"


@pytest.fixture
def admin_client(client: Client) -> Client:
    user = User.objects.create_superuser("root", "root@example.invalid", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.fixture
def remote_runtime(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv(TOKEN_ENV, TOKEN_VALUE)
    now = timezone.now()
    return Runtime.objects.create(
        runtime_id="build-1",
        display_name="Build host 1",
        kind=Runtime.Kind.REMOTE,
        base_url="http://127.0.0.1:38811",
        token_ref=f"env:{TOKEN_ENV}",
        status=Runtime.Status.UNAUTHORIZED,
        status_error_code="runtime_auth_failed",
        capabilities={
            "protocol_version": "1",
            "profiles": [{"name": n, "description": ""} for n in ("builtin:echo", "builtin:burst")],
        },
        checked_at=now,
        last_seen_at=now,
        consecutive_failures=2,
    )


def change_form_data(runtime: Runtime, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "runtime_id": runtime.runtime_id,
        "display_name": runtime.display_name,
        "kind": runtime.kind,
        "enabled": "on" if runtime.enabled else "",
        "base_url": runtime.base_url,
        "token_ref": runtime.token_ref,
        "connect_timeout": runtime.connect_timeout,
        "read_timeout": runtime.read_timeout,
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value != ""}


def test_changelist_shows_badge_and_summary_but_no_token_value(
    admin_client: Client, remote_runtime: Runtime
) -> None:
    Runtime.objects.create(runtime_id="embedded", display_name="Embedded", kind=Runtime.Kind.EMBEDDED)
    response = admin_client.get(reverse("admin:runtimes_runtime_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "build-1" in html and "embedded" in html
    assert 'class="yoi-status yoi-status-unauthorized"' in html
    assert "Unauthorized (runtime_auth_failed)" in html
    assert 'class="yoi-status yoi-status-configured"' in html
    assert "v1 · builtin:echo, builtin:burst" in html
    assert 'name="form-0-enabled"' in html  # enabled is editable in the list
    assert TOKEN_VALUE not in html


def test_change_page_shows_base_url_and_token_ref_never_the_token(
    admin_client: Client, remote_runtime: Runtime
) -> None:
    response = admin_client.get(reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'value="http://127.0.0.1:38811"' in html
    assert f'value="env:{TOKEN_ENV}"' in html
    assert TOKEN_VALUE not in html
    # Cache fields are read-only: rendered, but not as inputs.
    assert 'name="status"' not in html
    assert 'name="capabilities"' not in html
    assert 'name="consecutive_failures"' not in html


def test_file_ref_is_not_read_by_the_admin(admin_client: Client, tmp_path: Any) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN_VALUE)
    runtime = Runtime.objects.create(
        runtime_id="filed",
        display_name="Filed",
        kind="remote",
        base_url="http://127.0.0.1:1",
        token_ref=f"file:{secret}",
    )
    for url in (
        reverse("admin:runtimes_runtime_changelist"),
        reverse("admin:runtimes_runtime_change", args=[runtime.pk]),
    ):
        html = admin_client.get(url).content.decode()
        assert TOKEN_VALUE not in html


def test_editing_the_target_resets_the_status_cache(admin_client: Client, remote_runtime: Runtime) -> None:
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    response = admin_client.post(url, change_form_data(remote_runtime, base_url="http://127.0.0.1:39999"))
    assert response.status_code == 302, response.content.decode()[:2000]
    row = Runtime.objects.get(pk=remote_runtime.pk)
    assert row.base_url == "http://127.0.0.1:39999"
    assert row.status == Runtime.Status.CONFIGURED
    assert row.capabilities == {} and row.checked_at is None and row.consecutive_failures == 0


def test_editing_only_the_name_keeps_the_status_cache(admin_client: Client, remote_runtime: Runtime) -> None:
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    response = admin_client.post(url, change_form_data(remote_runtime, display_name="Renamed"))
    assert response.status_code == 302
    row = Runtime.objects.get(pk=remote_runtime.pk)
    assert row.display_name == "Renamed"
    assert row.status == Runtime.Status.UNAUTHORIZED


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"token_ref": ""}, "token_ref", "needs a token ref"),
        ({"token_ref": "raw-secret-value"}, "token_ref", "token_ref must be"),
        ({"base_url": "ftp://127.0.0.1"}, "base_url", "http or https"),
        ({"base_url": "http://u:p@127.0.0.1"}, "base_url", "must not carry credentials"),
        ({"kind": "embedded"}, "base_url", "An embedded runtime has no base URL."),
        ({"read_timeout": "0"}, "read_timeout", "Must be greater than 0"),
        ({"runtime_id": "bad id"}, "runtime_id", "runtime_id must match"),
    ],
)
def test_admin_form_runs_model_validation(
    admin_client: Client, remote_runtime: Runtime, overrides: dict[str, str], field: str, text: str
) -> None:
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    response = admin_client.post(url, change_form_data(remote_runtime, **overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and any(text in message for message in errors[field]), errors
    assert Runtime.objects.get(pk=remote_runtime.pk).base_url == "http://127.0.0.1:38811"


@dataclass(frozen=True)
class FakeProbeResult:
    runtime_id: str
    state: str
    error_code: str
    latency_ms: float = 1.0


def test_probe_now_action_reports_one_line_per_runtime(
    admin_client: Client, remote_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    Runtime.objects.create(runtime_id="embedded", display_name="Embedded", kind=Runtime.Kind.EMBEDDED)
    calls: list[list[str]] = []

    def probe_runtimes(*, runtime_ids: list[str]) -> list[FakeProbeResult]:
        calls.append(runtime_ids)
        return [
            FakeProbeResult("build-1", "unauthorized", "runtime_auth_failed"),
            FakeProbeResult("embedded", "online", ""),
        ]

    monkeypatch.setattr("runtimes.admin.probe_runtimes", probe_runtimes)

    pks = list(Runtime.objects.values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:runtimes_runtime_changelist"),
        {"action": "probe_now", "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )
    assert response.status_code == 200
    assert calls == [["build-1", "embedded"]]
    texts = [str(message) for message in response.context["messages"]]
    assert texts == ["build-1: unauthorized (runtime_auth_failed)", "embedded: online"]
    assert TOKEN_VALUE not in response.content.decode()


@pytest.fixture
def audit_event() -> AuditEvent:
    return AuditEvent.objects.create(
        username="alice", runtime_id="build-1", worker_id="w-1", action="input", outcome="ok", latency_ms=4.5
    )


def test_audit_changelist_is_viewable_with_filters(admin_client: Client, audit_event: AuditEvent) -> None:
    response = admin_client.get(reverse("admin:runtimes_auditevent_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "alice" in html and "w-1" in html
    assert reverse("admin:runtimes_auditevent_add") not in html
    filtered = admin_client.get(
        reverse("admin:runtimes_auditevent_changelist"), {"outcome": "ok", "action": "input"}
    )
    assert filtered.status_code == 200
    assert "alice" in filtered.content.decode()


def test_audit_log_cannot_be_added_changed_or_deleted(admin_client: Client, audit_event: AuditEvent) -> None:
    assert admin_client.get(reverse("admin:runtimes_auditevent_add")).status_code == 403
    change_url = reverse("admin:runtimes_auditevent_change", args=[audit_event.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200  # view-only
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert reverse("admin:runtimes_auditevent_delete", args=[audit_event.pk]) not in html
    response = admin_client.post(
        change_url,
        {"username": "mallory", "runtime_id": "x", "action": "stop", "outcome": "ok", "latency_ms": "1"},
    )
    assert response.status_code == 403
    delete_url = reverse("admin:runtimes_auditevent_delete", args=[audit_event.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    bulk = admin_client.post(
        reverse("admin:runtimes_auditevent_changelist"),
        {"action": "delete_selected", "_selected_action": [str(audit_event.pk)], "post": "yes"},
    )
    assert bulk.status_code in (200, 302, 403)
    event = AuditEvent.objects.get(pk=audit_event.pk)
    assert (event.username, event.action) == ("alice", "input")
