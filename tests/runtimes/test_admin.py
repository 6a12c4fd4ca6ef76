"""The operator admin: refs shown, token values never; audit log read-only; badge, summary, probe action."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from runtimes import metrics
from runtimes.models import AuditEvent, ProbeRecord, Runtime
from runtimes.registry import registry
from tests.backend_process import free_port
from tests.runtimes.conftest import refused_refs

pytestmark = pytest.mark.django_db

TOKEN_VALUE = "adm1n-PAGE-token-Kx93-never-shown"
TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_ADMIN_RUNTIME"


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
        "max_in_flight": runtime.max_in_flight,
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
        ({"token_ref": ""}, "token_ref", "token_ref is required for a remote runtime"),
        ({"token_ref": "raw-secret-value"}, "token_ref", "token_ref must be"),
        ({"base_url": "ftp://127.0.0.1"}, "base_url", "http or https"),
        ({"base_url": "http://u:p@127.0.0.1"}, "base_url", "must not carry credentials"),
        ({"kind": "embedded"}, "base_url", "base_url is not allowed for an embedded runtime"),
        ({"read_timeout": "0"}, "read_timeout", "Must be greater than 0"),
        ({"max_in_flight": "0"}, "max_in_flight", "max_in_flight must be an integer from 1"),
        ({"runtime_id": "bad id"}, "runtime_id", "runtime_id must match"),
        # The transport rules of the config file (docs/operations.md).
        ({"base_url": "http://10.0.0.9:38811"}, "base_url", "allow_insecure_http"),
        ({"tls_ca_file": "/etc/yoi/ca.pem"}, "tls_ca_file", "need an https:// base_url"),
        ({"base_url": "https://127.0.0.1:1", "tls_ca_file": "ca.pem"}, "tls_ca_file", "absolute path"),
        (
            {"base_url": "https://127.0.0.1:1", "tls_client_cert_file": "/etc/b.pem"},
            "tls_client_key_ref",
            "together",
        ),
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
    reason: str = ""


@pytest.mark.usefixtures("isolated_data_dir")
def test_probe_now_action_probes_for_real_and_reports_state_code_and_latency(
    admin_client: Client, remote_runtime: Runtime
) -> None:
    Runtime.objects.filter(pk=remote_runtime.pk).update(base_url=f"http://127.0.0.1:{free_port()}")
    Runtime.objects.create(runtime_id="embedded", display_name="Embedded", kind=Runtime.Kind.EMBEDDED)
    pks = list(Runtime.objects.values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:runtimes_runtime_changelist"),
        {"action": "probe_now", "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )
    assert response.status_code == 200
    texts = [str(message) for message in response.context["messages"]]
    assert len(texts) == 2
    assert re.fullmatch(r"build-1: offline \(runtime_unreachable\) in \d+\.\d ms", texts[0]), texts
    assert re.fullmatch(r"embedded: online in \d+\.\d ms", texts[1]), texts
    assert TOKEN_VALUE not in response.content.decode()
    statuses = dict(Runtime.objects.values_list("runtime_id", "status"))
    assert statuses == {"build-1": "offline", "embedded": "online"}
    sources = set(ProbeRecord.objects.values_list("runtime_id", "state", "source"))
    assert sources == {("build-1", "offline", "admin"), ("embedded", "online", "admin")}


def test_operator_view_shows_breaker_streams_probes_and_audit_rounded(
    admin_client: Client, remote_runtime: Runtime
) -> None:
    ProbeRecord.objects.create(
        runtime_id="build-1", state="offline", code="runtime_timeout", latency_ms=2001.2345, source="background"
    )
    ProbeRecord.objects.create(runtime_id="other", state="online", code="", latency_ms=7.0, source="command")
    AuditEvent.objects.create(
        username="hana", runtime_id="build-1", worker_id="w-9", action="input", outcome="ok", latency_ms=3.14159
    )
    registry.reset()
    for _ in range(5):
        registry.breaker("build-1").record_failure()
    try:
        with metrics.relay_upstream("build-1"):
            page = admin_client.get(reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk]))
    finally:
        registry.reset()
    html = page.content.decode()
    assert page.status_code == 200
    assert "open (fast-failing)" in html
    assert "1 upstream event stream(s), 0 browser socket(s)" in html
    assert "runtime_timeout" in html and "2001.2 ms" in html and "Background re-probe" in html
    assert "w-9" in html and "3.1 ms" in html and "hana" in html
    assert "7.0 ms" not in html  # another runtime's probe
    assert TOKEN_VALUE not in html


def test_operator_view_is_not_on_the_add_page(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:runtimes_runtime_add"))
    assert page.status_code == 200
    assert "Operator view" not in page.content.decode()


def test_audit_list_shows_latency_with_one_decimal(admin_client: Client) -> None:
    AuditEvent.objects.create(
        username="hana", runtime_id="build-1", worker_id="w-1", action="stop", outcome="ok", latency_ms=12.3456
    )
    html = admin_client.get(reverse("admin:runtimes_auditevent_changelist")).content.decode()
    assert "12.3 ms" in html and "12.3456" not in html


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


# ----------------------------------------------------------------------------------- who may aim a credential

AIMING_INPUTS = ("base_url", "token_ref", "tls_ca_file", "tls_client_cert_file", "tls_client_key_ref", "kind")


def staff_with(*codenames: str, username: str = "ops") -> User:
    """A staff user holding exactly these runtimes permissions."""
    user = User.objects.create_user(username, "", "ops-pw-for-tests", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(content_type__app_label="runtimes", codename=codename))
    return user


def test_without_the_connection_permission_connection_fields_are_read_only(
    client: Client, remote_runtime: Runtime
) -> None:
    client.force_login(staff_with("view_runtime", "change_runtime"))
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    html = client.get(url).content.decode()
    for name in AIMING_INPUTS:
        assert f'name="{name}"' not in html, name
    assert 'name="display_name"' in html and 'name="enabled"' in html
    assert "http://127.0.0.1:38811" in html  # still shown, read-only
    # A forged POST cannot aim the row elsewhere; rename and disable still work.
    listener_url = "http://127.0.0.1:39998"
    response = client.post(
        url,
        change_form_data(
            remote_runtime,
            display_name="Renamed",
            enabled="",
            base_url=listener_url,
            token_ref="env:YOI_RUNTIME_TOKEN_STOLEN",
            tls_ca_file="/tmp/ca.pem",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = Runtime.objects.get(pk=remote_runtime.pk)
    assert (row.display_name, row.enabled) == ("Renamed", False)
    assert (row.base_url, row.token_ref, row.tls_ca_file) == ("http://127.0.0.1:38811", f"env:{TOKEN_ENV}", "")


def test_without_the_connection_permission_probe_and_list_toggle_still_work(
    client: Client, remote_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.force_login(staff_with("view_runtime", "change_runtime"))
    monkeypatch.setattr(
        "runtimes.admin.probe_runtimes", lambda *, runtime_ids, **_: [FakeProbeResult("build-1", "online", "")]
    )
    changelist = reverse("admin:runtimes_runtime_changelist")
    probed = client.post(changelist, {"action": "probe_now", "_selected_action": [remote_runtime.pk]}, follow=True)
    assert [str(m) for m in probed.context["messages"]] == ["build-1: online in 1.0 ms"]


def test_with_the_connection_permission_the_fields_are_editable(client: Client, remote_runtime: Runtime) -> None:
    client.force_login(staff_with("view_runtime", "change_runtime", "change_runtime_connection"))
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    html = client.get(url).content.decode()
    for name in AIMING_INPUTS:
        assert f'name="{name}"' in html, name
    response = client.post(url, change_form_data(remote_runtime, base_url="http://127.0.0.1:39997"))
    assert response.status_code == 302
    assert Runtime.objects.get(pk=remote_runtime.pk).base_url == "http://127.0.0.1:39997"


def test_superusers_have_the_connection_permission(admin_client: Client, remote_runtime: Runtime) -> None:
    html = admin_client.get(reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])).content.decode()
    for name in AIMING_INPUTS:
        assert f'name="{name}"' in html, name


def test_adding_a_runtime_needs_the_connection_permission_too(client: Client) -> None:
    client.force_login(staff_with("view_runtime", "change_runtime", "add_runtime"))
    add = reverse("admin:runtimes_runtime_add")
    assert client.get(add).status_code == 403
    data = {"runtime_id": "new-1", "display_name": "New", "kind": "remote", "base_url": "http://127.0.0.1:1"}
    assert client.post(add, data).status_code == 403
    assert not Runtime.objects.filter(runtime_id="new-1").exists()
    client.force_login(staff_with("view_runtime", "add_runtime", "change_runtime_connection", username="ops2"))
    assert client.get(add).status_code == 200


# -------------------------------------------------------------------------------------- refused where written


@pytest.mark.parametrize("key", ["token_ref", "tls_client_key_ref"])
def test_the_admin_form_refuses_each_ref_with_a_field_error(
    admin_client: Client, remote_runtime: Runtime, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    https = {"base_url": "https://127.0.0.1:38811"}
    for name, ref in refused_refs(secrets_dir, monkeypatch).items():
        extra = {key: ref} if key == "token_ref" else {**https, key: ref, "tls_client_cert_file": "/etc/yoi/b.pem"}
        response = admin_client.post(url, change_form_data(remote_runtime, **extra))
        assert response.status_code == 200, name
        errors = response.context["adminform"].form.errors
        assert key in errors, (name, errors)
        assert all(ref.partition(":")[2] not in message or ref.endswith("TOKEN_") for message in errors[key]), name
    row = Runtime.objects.get(pk=remote_runtime.pk)
    assert (row.token_ref, row.tls_client_key_ref, row.base_url) == (
        f"env:{TOKEN_ENV}",
        "",
        "http://127.0.0.1:38811",
    )


def test_plain_http_to_a_remote_host_is_allowed_only_when_asked_and_badged(
    admin_client: Client, remote_runtime: Runtime
) -> None:
    url = reverse("admin:runtimes_runtime_change", args=[remote_runtime.pk])
    data = change_form_data(remote_runtime, base_url="http://10.0.0.9:38811", allow_insecure_http="on")
    assert admin_client.post(url, data).status_code == 302
    row = Runtime.objects.get(pk=remote_runtime.pk)
    assert (row.base_url, row.allow_insecure_http) == ("http://10.0.0.9:38811", True)
    listing = admin_client.get(reverse("admin:runtimes_runtime_changelist")).content.decode()
    assert "INSECURE http" in listing
    Runtime.objects.filter(pk=row.pk).update(base_url="https://runtime.example.internal:8443")
    listing = admin_client.get(reverse("admin:runtimes_runtime_changelist")).content.decode()
    assert "INSECURE http" not in listing and ">TLS<" in listing
