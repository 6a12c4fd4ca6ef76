"""Limits of the browser API in-process: the per-user command rate, audit rows of refused commands, login
lockout (django-axes) on both login forms, and the settings that configure them.

The same limits through a real daphne, with load, are in tests/faults/test_limits.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from runtimes.models import AuditEvent, Runtime
from tests.runtime_process import REPO_ROOT

WORKERS = "/api/v1/runtimes/local/workers/"
PASSWORD = "correct-horse-battery-staple-7"


def audit_rows() -> list[tuple[str, str, str, str]]:
    """Every AuditEvent as (action, runtime_id, worker_id, outcome), oldest first."""
    return list(AuditEvent.objects.order_by("id").values_list("action", "runtime_id", "worker_id", "outcome"))


# --------------------------------------------------------------------------------------------- command rate


def test_commands_over_the_rate_are_429_rate_limited_with_retry_after_and_audited(
    api_client: APIClient, embedded_runtime: Runtime, settings: Any
) -> None:
    settings.YOI_RATE_COMMANDS = "3/min"
    created = api_client.post(WORKERS, {"profile": "builtin:echo"}, format="json")
    assert created.status_code == 201, created.content
    worker = created.json()["worker_id"]
    assert api_client.post(f"{WORKERS}{worker}/input/", {"content": "one"}, format="json").status_code == 202
    assert api_client.post(f"{WORKERS}{worker}/stop/", {}, format="json").status_code == 200
    # The fourth command in the minute, whichever it is.
    for path, body in [(f"{WORKERS}{worker}/cancel/", {}), (f"{WORKERS}{worker}/input/", {"content": "x"})]:
        response = api_client.post(path, body, format="json")
        assert response.status_code == 429, response.content
        error = response.json()["error"]
        assert error.pop("request_id") == response["X-Request-ID"]
        assert error == {"code": "rate_limited", "message": "too many requests; retry later", "retryable": True}
        assert 1 <= int(response["Retry-After"]) <= 60
    # Reads are not commands: never limited.
    for _ in range(5):
        assert api_client.get(f"{WORKERS}{worker}/").status_code == 200
    assert audit_rows()[-2:] == [
        ("cancel", "local", worker, "rate_limited"),
        ("input", "local", worker, "rate_limited"),
    ]


def test_the_rate_is_per_user(
    api_client: APIClient, embedded_runtime: Runtime, settings: Any, staff_user: User
) -> None:
    settings.YOI_RATE_COMMANDS = "1/min"
    assert api_client.post(WORKERS, {"profile": "builtin:echo"}, format="json").status_code == 201
    assert api_client.post(WORKERS, {"profile": "builtin:echo"}, format="json").status_code == 429
    other = APIClient()
    other.force_authenticate(staff_user)
    assert other.post(WORKERS, {"profile": "builtin:echo"}, format="json").status_code == 201


def test_rate_none_turns_the_limit_off(api_client: APIClient, embedded_runtime: Runtime, settings: Any) -> None:
    settings.YOI_RATE_COMMANDS = None  # what YOI_RATE_COMMANDS=0 gives
    worker = api_client.post(WORKERS, {"profile": "builtin:echo"}, format="json").json()["worker_id"]
    for index in range(30):
        response = api_client.post(f"{WORKERS}{worker}/input/", {"content": f"n{index}"}, format="json")
        assert response.status_code == 202, response.content


def run_settings(env: dict[str, str], expression: str) -> subprocess.CompletedProcess[str]:
    """Import the settings module in a fresh interpreter with ``env`` and print ``expression``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "YOI_"))}
    code = f"import yoi_backend.settings as s; print(repr({expression}))"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "DJANGO_SECRET_KEY": "x", **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("", "'1200/min'"), ("0", "None"), ("50/s", "'50/s'"), (" 10 / hour ", "'10/hour'"), ("7/day", "'7/day'")],
)
def test_rate_setting_is_drf_form_or_zero(raw: str, parsed: str) -> None:
    result = run_settings({"YOI_RATE_COMMANDS": raw}, "s.YOI_RATE_COMMANDS")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == parsed


@pytest.mark.parametrize("raw", ["1200", "x/min", "0/min", "10/week", "-1/s", "10/mins"])
def test_a_malformed_rate_fails_fast(raw: str) -> None:
    result = run_settings({"YOI_RATE_COMMANDS": raw}, "s.YOI_RATE_COMMANDS")
    assert result.returncode != 0
    assert "ImproperlyConfigured: YOI_RATE_COMMANDS must be N/period" in result.stderr


# --------------------------------------------------------------------------------------------- refused commands


def test_refused_commands_are_audited_with_their_code(
    api_client: APIClient, embedded_runtime: Runtime, user: User
) -> None:
    hidden = Runtime.objects.create(runtime_id="hidden", display_name="Hidden", kind=Runtime.Kind.EMBEDDED)
    hidden.groups.add(Group.objects.create(name="ops"))
    Runtime.objects.create(runtime_id="off", display_name="Off", kind=Runtime.Kind.EMBEDDED, enabled=False)
    answers = [
        api_client.post("/api/v1/runtimes/hidden/workers/w1/stop/", {}, format="json"),  # not visible
        api_client.post("/api/v1/runtimes/off/workers/w1/cancel/", {}, format="json"),  # disabled
        api_client.post(f"{WORKERS}w1/input/", {"content": ""}, format="json"),  # invalid body
        api_client.post(WORKERS, b"{not json", content_type="application/json"),  # malformed JSON
        api_client.post(f"{WORKERS}w1/input/", b"content=x", content_type="text/plain"),  # not JSON at all
        api_client.post("/api/v1/runtimes/bad%20id/workers/", {}, format="json"),  # invalid id
    ]
    assert [a.status_code for a in answers] == [404, 503, 400, 400, 415, 400]
    assert audit_rows() == [
        ("stop", "hidden", "w1", "runtime_not_found"),
        ("cancel", "off", "w1", "runtime_disabled"),
        ("input", "local", "w1", "invalid_request"),
        ("create", "local", "", "invalid_request"),
        ("input", "local", "w1", "unsupported_media_type"),
        ("create", "<invalid>", "", "invalid_request"),
    ]
    assert set(AuditEvent.objects.values_list("user_id", flat=True)) == {user.pk}
    # Reads that fail are not commands: nothing more is audited.
    assert api_client.get("/api/v1/runtimes/hidden/workers/").status_code == 404
    assert AuditEvent.objects.count() == 6


def test_anonymous_commands_are_refused_before_any_audit(
    anon_client: APIClient, embedded_runtime: Runtime
) -> None:
    assert anon_client.post(WORKERS, {"profile": "builtin:echo"}, format="json").status_code == 401
    assert not AuditEvent.objects.exists()


# --------------------------------------------------------------------------------------------- login lockout


@pytest.fixture
def login_user(db: None) -> User:
    return User.objects.create_user("lena", "lena@example.invalid", PASSWORD, is_staff=True)  # admin needs staff


def login_form(client: Client, path: str, password: str, **headers: str) -> Any:
    """GET the form (for the CSRF cookie), then POST the credentials like a browser."""
    client.get(path)
    token = client.cookies["csrftoken"].value
    data = {"username": "lena", "password": password, "csrfmiddlewaretoken": token, "next": "/"}
    return client.post(path, data, headers=headers)


def expire_cool_off() -> None:
    """Move every recorded failure back past the cool-off (what waiting for it does)."""
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(days=1))


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_login_lockout_after_the_limit_then_success_after_the_cool_off(
    login_user: User, settings: Any, path: str
) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client(enforce_csrf_checks=True)
    for _ in range(2):
        wrong = login_form(client, path, "wrong-password")
        assert wrong.status_code == 200  # the form again, with its error
    locked = login_form(client, path, "wrong-password")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    retry_after = int(locked["Retry-After"])
    assert 250 <= retry_after <= 300  # the cool-off (YOI_LOGIN_COOLOFF_SECONDS, default 300) from now
    assert locked["Content-Security-Policy"].startswith("default-src 'self'")
    # The right password is refused too while locked out, and does not extend the lockout.
    refused = login_form(client, path, PASSWORD)
    assert refused.status_code == 429
    assert "_auth_user_id" not in client.session
    expire_cool_off()
    admitted = login_form(client, path, PASSWORD)
    assert admitted.status_code == 302, admitted.content.decode()[:500]
    assert client.session["_auth_user_id"] == str(login_user.pk)


def test_lockout_is_per_client_address_too(login_user: User, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 2
    User.objects.create_user("other", "other@example.invalid", PASSWORD)
    client = Client(REMOTE_ADDR="10.1.2.3")
    client.get("/login/")
    for name in ("lena", "nobody-1"):  # different usernames, one address
        client.post("/login/", {"username": name, "password": "wrong"})
    third = client.post("/login/", {"username": "other", "password": PASSWORD})
    assert third.status_code == 429
    elsewhere = Client(REMOTE_ADDR="10.9.9.9")
    assert elsewhere.post("/login/", {"username": "other", "password": PASSWORD}).status_code == 302


def test_an_api_client_gets_the_error_envelope(login_user: User, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 1
    client = Client()
    credentials = {"username": "lena", "password": "wrong"}
    answer = client.post("/login/", credentials, headers={"Accept": "application/json"})
    assert answer.status_code == 429
    assert answer["Content-Type"] == "application/json"
    error = answer.json()["error"]
    assert error.pop("request_id") == answer["X-Request-ID"]
    assert error == {
        "code": "rate_limited",
        "message": "too many failed logins; retry later",
        "retryable": True,
    }
    assert int(answer["Retry-After"]) >= 1


def test_failed_logins_store_no_password(login_user: User, settings: Any) -> None:
    Client().post("/login/", {"username": "lena", "password": "hunter2-secret-guess"})
    attempt = AccessAttempt.objects.get()
    assert "hunter2-secret-guess" not in attempt.post_data
    assert attempt.failures_since_start == 1
