"""The §5 error envelope under /api/: typed errors, DRF's own errors, Django's error views, auth, CSRF."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runtimes import errors
from runtimes.types import WorkerDetail
from tests.workers.conftest import ServiceSpy
from workers import exceptions as api_exceptions

pytestmark = pytest.mark.django_db

WORKER_URL = "/api/v1/runtimes/local/workers/w1/"
SECRET_TEXT = "http://10.9.8.7:3800/v1/workers token=s3cr3t-value /srv/yoi/store/w1.json"


def envelope(response: Any) -> dict[str, Any]:
    """The ``error`` object of a JSON error response (asserting the envelope's shape)."""
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["retryable"], bool)
    # The request id is the one the response header carries (checked, then left out of comparisons).
    request_id = error.pop("request_id", None)
    if request_id is not None:
        assert response["X-Request-ID"] == request_id
    return error


# --- typed errors from the services: one row per line of the §5 table --------------------------------------

TABLE: list[tuple[errors.YoiError, int, str, bool]] = [
    (errors.InvalidRequest(fields={"content": ["bad"]}), 400, "invalid_request", False),
    (errors.RuntimeNotFound(runtime_id="local"), 404, "runtime_not_found", False),
    (errors.WorkerNotFound(runtime_id="local", worker_id="w1"), 404, "worker_not_found", False),
    (
        errors.RuntimeRejected(runtime_id="local", worker_id="w1", upstream_code="worker_not_running"),
        409,
        "runtime_rejected",
        False,
    ),
    (
        errors.RuntimeRejected(runtime_id="local", upstream_code="invalid_request", upstream_status=400),
        422,
        "runtime_rejected",
        False,
    ),
    (errors.RuntimeUnsupported(runtime_id="local"), 501, "runtime_unsupported", False),
    (errors.RuntimeUnreachable(runtime_id="local"), 502, "runtime_unreachable", True),
    (errors.RuntimeAuthFailed(runtime_id="local"), 502, "runtime_auth_failed", False),
    (errors.RuntimeBadResponse(runtime_id="local"), 502, "runtime_bad_response", True),
    (errors.RuntimeDisabled(runtime_id="local"), 503, "runtime_disabled", False),
    (errors.RuntimeCircuitOpen(runtime_id="local", retry_after=6.2), 503, "runtime_circuit_open", True),
    (errors.RuntimeTimeout(runtime_id="local"), 504, "runtime_timeout", True),
]


@pytest.mark.parametrize(("error", "status", "code", "retryable"), TABLE, ids=[row[2] for row in TABLE])
def test_typed_error_maps_to_its_status_and_envelope(
    api_client: APIClient, services: ServiceSpy, error: errors.YoiError, status: int, code: str, retryable: bool
) -> None:
    services.raise_("worker_get", error)
    response = api_client.get(WORKER_URL)
    assert response.status_code == status
    body = envelope(response)
    assert body == error.to_json()
    assert body["code"] == code
    assert body["retryable"] is retryable
    if code == "runtime_circuit_open":
        assert response["Retry-After"] == "7"
    else:
        assert "Retry-After" not in response


def test_runtime_rejected_carries_upstream_code(api_client: APIClient, services: ServiceSpy) -> None:
    services.raise_(
        "worker_send_input",
        errors.RuntimeRejected(runtime_id="local", worker_id="w1", upstream_code="worker_not_running"),
    )
    response = api_client.post(WORKER_URL + "input/", {"content": "hi"}, format="json")
    assert response.status_code == 409
    body = envelope(response)
    assert body["upstream_code"] == "worker_not_running"
    assert body["runtime_id"] == "local"
    assert body["worker_id"] == "w1"


def test_runtime_auth_failure_is_never_a_401(api_client: APIClient, services: ServiceSpy) -> None:
    services.raise_("worker_list", errors.RuntimeAuthFailed(runtime_id="local"))
    response = api_client.get("/api/v1/runtimes/local/workers/")
    assert response.status_code == 502
    assert "WWW-Authenticate" not in response


# --- unexpected exceptions ---------------------------------------------------------------------------------


def test_unexpected_exception_is_a_fixed_500_envelope_and_logged(
    api_client: APIClient, services: ServiceSpy, caplog: pytest.LogCaptureFixture
) -> None:
    services.raise_("worker_get", RuntimeError(SECRET_TEXT))
    with caplog.at_level(logging.ERROR, logger="workers.exceptions"):
        response = api_client.get(WORKER_URL)
    assert response.status_code == 500
    body = envelope(response)
    assert body == {"code": "internal_error", "message": api_exceptions.INTERNAL_ERROR_MESSAGE, "retryable": False}
    assert b"s3cr3t" not in response.content and b"10.9.8.7" not in response.content
    (record,) = [r for r in caplog.records if r.name == "workers.exceptions"]
    assert record.getMessage() == "workers.api.unexpected_error"
    assert record.view == "RuntimeWorkerViewSet.retrieve"  # type: ignore[attr-defined]
    assert record.exc_info is not None


def test_server_error_view_answers_envelope_under_api_and_html_elsewhere(rf: RequestFactory) -> None:
    api = api_exceptions.server_error(rf.get("/api/v1/runtimes/"))
    assert api.status_code == 500
    assert envelope(api)["code"] == "internal_error"
    page = api_exceptions.server_error(rf.get("/admin/"))
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")


# --- DRF's own errors --------------------------------------------------------------------------------------


def test_malformed_json_is_invalid_request(api_client: APIClient, services: ServiceSpy) -> None:
    response = api_client.post(WORKER_URL + "input/", b'{"content": ', content_type="application/json")
    assert response.status_code == 400
    body = envelope(response)
    assert body["code"] == "invalid_request"
    assert body["fields"]["non_field_errors"]
    assert services.calls == []


def test_non_json_media_type_is_415(api_client: APIClient, services: ServiceSpy) -> None:
    response = api_client.post(
        WORKER_URL + "input/", b"content=hi", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert envelope(response)["code"] == "unsupported_media_type"
    assert services.calls == []


def test_wrong_method_is_405(api_client: APIClient, services: ServiceSpy) -> None:
    response = api_client.delete(WORKER_URL)
    assert response.status_code == 405
    assert envelope(response)["code"] == "method_not_allowed"
    response = api_client.get(WORKER_URL + "input/")
    assert response.status_code == 405
    assert services.calls == []


def test_drf_not_found_and_permission_denied_map(rf: RequestFactory) -> None:
    from django.core.exceptions import PermissionDenied
    from django.http import Http404
    from rest_framework import exceptions as drf

    cases: list[tuple[Exception, int, str]] = [
        (Http404("No Runtime matches /srv/x"), 404, "not_found"),
        (PermissionDenied("secret reason"), 403, "permission_denied"),
        (drf.Throttled(wait=3.2), 429, "rate_limited"),
        (drf.NotAcceptable(), 406, "invalid_request"),
        (drf.APIException("boom at /srv/x"), 500, "internal_error"),
    ]
    for exc, status, code in cases:
        response = api_exceptions.api_exception_handler(exc, {})
        assert response.status_code == status
        error = response.data["error"]
        assert error["code"] == code
        assert "/srv/x" not in error["message"] and "secret" not in error["message"]
    throttled = api_exceptions.api_exception_handler(drf.Throttled(wait=3.2), {})
    assert throttled["Retry-After"] == "4"
    assert throttled.data["error"]["retryable"] is True


def test_validation_detail_is_flattened_into_fields() -> None:
    from rest_framework import exceptions as drf

    detail: Any = {
        "content": ["This field is required."],
        "non_field_errors": ["Invalid data."],
        "intent": {"kind": ["bad kind"]},
        "options": [{"a": ["x"]}, "y"],
    }
    response = api_exceptions.api_exception_handler(drf.ValidationError(detail), {})
    assert response.status_code == 400
    assert response.data["error"]["fields"] == {
        "content": ["This field is required."],
        "non_field_errors": ["Invalid data."],
        "intent.kind": ["bad kind"],
        "options.0.a": ["x"],
        "options": ["y"],
    }
    bare = api_exceptions.api_exception_handler(drf.ValidationError("nope"), {})
    assert bare.data["error"]["fields"] == {"non_field_errors": ["nope"]}


# --- authentication ----------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str]] = [
    ("get", "/api/v1/runtimes/"),
    ("get", "/api/v1/runtimes/local/"),
    ("get", "/api/v1/runtimes/local/workers/"),
    ("post", "/api/v1/runtimes/local/workers/"),
    ("get", WORKER_URL),
    ("post", WORKER_URL + "input/"),
    ("post", WORKER_URL + "stop/"),
    ("post", WORKER_URL + "cancel/"),
    ("get", WORKER_URL + "transcript/"),
    ("get", "/api/v1/workers/"),
]


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_anonymous_gets_401_envelope(anon_client: APIClient, services: ServiceSpy, method: str, url: str) -> None:
    response = getattr(anon_client, method)(url)
    assert response.status_code == 401
    assert envelope(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"
    assert services.calls == []


def test_token_auth_works_and_bad_token_is_401(user: User, services: ServiceSpy) -> None:
    services.answer("runtime_list_visible", [])
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/runtimes/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get("/api/v1/runtimes/")
    assert response.status_code == 401
    assert envelope(response)["code"] == "not_authenticated"


def test_session_auth_without_csrf_token_is_403_envelope(user: User, services: ServiceSpy) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    services.answer("runtime_list_visible", [])
    assert client.get("/api/v1/runtimes/").status_code == 200  # safe methods need no token
    response = client.post(WORKER_URL + "stop/", {}, format="json")
    assert response.status_code == 403
    body = envelope(response)
    assert body == {"code": "permission_denied", "message": "CSRF check failed", "retryable": False}
    assert services.calls == [("runtime_list_visible", {"user": user})]


def test_session_auth_with_csrf_token_passes(user: User, services: ServiceSpy) -> None:
    from runtimes.types import Ack

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/admin/login/")  # sets the csrftoken cookie
    services.answer("worker_stop", Ack(runtime_id="local", worker_id="w1", status="stopped"))
    token = client.cookies["csrftoken"].value
    response = client.post(WORKER_URL + "stop/", {}, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200


def test_django_csrf_failure_view_answers_envelope_under_api(rf: RequestFactory) -> None:
    api = api_exceptions.csrf_failure(rf.post("/api/v1/anything/"), reason="CSRF cookie not set.")
    assert api.status_code == 403
    assert envelope(api) == {"code": "permission_denied", "message": "CSRF check failed", "retryable": False}
    page = api_exceptions.csrf_failure(rf.post("/admin/login/"), reason="CSRF cookie not set.")
    assert page.status_code == 403
    assert page["Content-Type"].startswith("text/html")


def test_django_csrf_middleware_uses_the_api_view(user: User) -> None:
    """A plain Django view under /api/ protected by the CSRF middleware answers the envelope."""
    from django.middleware.csrf import CsrfViewMiddleware

    request = RequestFactory().post("/api/v1/runtimes/", data={})

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("reached")

    response = CsrfViewMiddleware(view).process_view(request, view, (), {})
    assert response is not None
    assert response.status_code == 403
    assert envelope(response)["message"] == "CSRF check failed"


# --- Django-level errors outside DRF -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/api/v1/nope/", "/api/v2/runtimes/", "/api/", "/api/v1/runtimes/local/bogus/", WORKER_URL + "bogus/"],
)
def test_unknown_api_url_is_404_envelope(client: Client, url: str) -> None:
    response = client.post(url)
    assert response.status_code == 404
    assert envelope(response) == {"code": "not_found", "message": "not found", "retryable": False}


def test_unknown_api_url_is_404_envelope_with_debug_on(client: Client, settings: Any) -> None:
    settings.DEBUG = True
    response = client.get("/api/v1/nope/")
    assert response.status_code == 404
    assert envelope(response)["code"] == "not_found"


def test_api_url_without_trailing_slash_redirects_get(client: Client) -> None:
    response = client.get("/api/v1/runtimes/local/workers?x=1")
    assert response.status_code == 301
    assert response["Location"] == "/api/v1/runtimes/local/workers/?x=1"
    assert client.post("/api/v1/runtimes/local/workers").status_code == 404


def test_unknown_url_outside_api_is_django_html_404(client: Client) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_handler404_403_400_answer_envelope_under_api(rf: RequestFactory) -> None:
    exc = Exception("detail /srv/x")
    for view, status, code in [
        (api_exceptions.page_not_found, 404, "not_found"),
        (api_exceptions.permission_denied, 403, "permission_denied"),
        (api_exceptions.bad_request, 400, "invalid_request"),
    ]:
        api = view(rf.get("/api/v1/runtimes/"), exc)
        assert api.status_code == status
        assert envelope(api)["code"] == code
        page = view(rf.get("/elsewhere/"), exc)
        assert page.status_code == status
        assert page["Content-Type"].startswith("text/html")


def test_disallowed_host_under_api_is_400_envelope(client: Client) -> None:
    response = client.get("/api/v1/runtimes/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert envelope(response)["code"] == "invalid_request"


def test_worker_detail_shape_passes_through_the_handler_untouched(
    api_client: APIClient, services: ServiceSpy
) -> None:
    """A success is not touched by the error machinery (guards against envelope-wrapping successes)."""
    services.answer("worker_get", WorkerDetail(runtime_id="local", worker_id="w1", status="running"))
    response = api_client.get(WORKER_URL)
    assert response.status_code == 200
    assert "error" not in response.json()
