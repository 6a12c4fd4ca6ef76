"""Browser input is validated at the edge: bad ids and bad bodies are 400 ``invalid_request`` with ``fields``,
never a 500, and never reach a service (so never a runtime)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runtimes.types import WorkerDetail
from tests.workers.conftest import ServiceSpy
from workers.ids import path_id_errors
from workers.serializers import MAX_INPUT_BYTES

pytestmark = pytest.mark.django_db

WORKERS = "/api/v1/runtimes/local/workers/"
WORKER = WORKERS + "w1/"


def invalid_fields(response: Any) -> dict[str, list[str]]:
    """The ``fields`` of a 400 invalid_request envelope."""
    assert response.status_code == 400, response.content
    error = json.loads(response.content)["error"]
    assert error["code"] == "invalid_request"
    assert error["retryable"] is False
    fields: dict[str, list[str]] = error["fields"]
    assert fields and all(isinstance(m, str) for messages in fields.values() for m in messages)
    return fields


# --- ids ---------------------------------------------------------------------------------------------------

BAD_IDS: dict[str, str] = {
    "dotdot": "..",
    "dot": "a.b",
    "too_long": "a" * 121,
    "unicode": quote("ランタイム"),
    "latin1": quote("café"),
    "nul": "a%00b",
    "newline": "a%0Ab",
    "tab": "a%09b",
    "del": "a%7Fb",
    "space": "a%20b",
    "percent": "a%25b",
    "encoded_slash": "a%2Fb",
    "encoded_slash_lower": "a%2fb",
    "encoded_backslash": "a%5Cb",
}

# (method, url template, which id is bad); {bad} is the bad id, everything else valid.
ID_ROUTES: list[tuple[str, str, str]] = [
    ("get", "/api/v1/runtimes/{bad}/", "runtime_id"),
    ("get", "/api/v1/runtimes/{bad}/workers/", "runtime_id"),
    ("post", "/api/v1/runtimes/{bad}/workers/", "runtime_id"),
    ("get", "/api/v1/runtimes/{bad}/workers/w1/", "runtime_id"),
    ("get", WORKERS + "{bad}/", "worker_id"),
    ("post", WORKERS + "{bad}/input/", "worker_id"),
    ("post", WORKERS + "{bad}/stop/", "worker_id"),
    ("post", WORKERS + "{bad}/cancel/", "worker_id"),
    ("get", WORKERS + "{bad}/transcript/", "worker_id"),
]


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
@pytest.mark.parametrize(("method", "template", "field"), ID_ROUTES, ids=[f"{m}:{t}" for m, t, _ in ID_ROUTES])
def test_bad_id_is_400_with_fields_and_no_service_call(
    api_client: APIClient, services: ServiceSpy, method: str, template: str, field: str, bad: str
) -> None:
    url = template.format(bad=bad)
    body = {"content": "hi"} if method == "post" else None
    # REQUEST_URI is the raw (still encoded) path, as uWSGI / gunicorn (RAW_URI) / ASGI raw_path give it.
    response = getattr(api_client, method)(url, body, format="json", REQUEST_URI=url)
    fields = invalid_fields(response)
    assert list(fields) == [field]
    assert services.calls == []
    assert b'runtime_id": "' not in response.content  # a bad id is not echoed as an id


@pytest.mark.parametrize("bad", ["..", "a" * 121, quote("ランタイム"), "a%00b", "a%0Ab"])
def test_bad_id_without_raw_path_is_still_400(api_client: APIClient, services: ServiceSpy, bad: str) -> None:
    fields = invalid_fields(api_client.get(WORKERS + bad + "/transcript/"))
    assert fields == {"worker_id": ["must be 1-120 characters of A-Z a-z 0-9 _ : -"]}
    assert services.calls == []


def test_longest_valid_id_reaches_the_service(api_client: APIClient, services: ServiceSpy) -> None:
    long_id = "a" * 120
    services.answer("worker_get", WorkerDetail(runtime_id="r_1:x-Y", worker_id=long_id, status="running"))
    response = api_client.get(f"/api/v1/runtimes/r_1:x-Y/workers/{long_id}/")
    assert response.status_code == 200
    assert services.calls == [
        ("worker_get", {"runtime_id": "r_1:x-Y", "worker_id": long_id, "user": services.calls[0][1]["user"]})
    ]


def test_encoded_slash_cannot_retarget_a_command(api_client: APIClient, services: ServiceSpy) -> None:
    """``w1%2Fstop`` decodes to ``w1/stop``: without the raw-path check it would stop worker w1."""
    url = WORKERS + "w1%2Fstop/"
    response = api_client.post(url, {}, format="json", REQUEST_URI=url)
    assert invalid_fields(response) == {"worker_id": ["must be 1-120 characters of A-Z a-z 0-9 _ : -"]}
    assert services.calls == []


def test_encoded_slash_in_an_unrouted_path_is_400_not_404(client: Client) -> None:
    url = "/api/v1/runtimes/a%2Fb/"
    fields = invalid_fields(client.get(url, REQUEST_URI=url))
    assert list(fields) == ["runtime_id"]


def test_empty_runtime_segment_is_400(client: Client) -> None:
    assert list(invalid_fields(client.get("/api/v1/runtimes//workers/"))) == ["runtime_id"]


def test_path_id_errors_reads_ids_from_a_path() -> None:
    assert path_id_errors("/api/v1/runtimes/") == {}
    assert path_id_errors("/api/v1/runtimes/local/workers/") == {}
    assert path_id_errors("/api/v1/runtimes/local/workers/w1/input/?x=%2F") == {}
    assert path_id_errors("/api/v1/workers/") == {}
    assert list(path_id_errors("/api/v1/runtimes/a%2Fb/")) == ["runtime_id"]
    assert list(path_id_errors("/prefix/api/v1/runtimes/ok/workers/w%2F1/")) == ["worker_id"]
    assert list(path_id_errors("/api/v1/runtimes/ok/workers//stop/")) == ["worker_id"]


@pytest.mark.django_db(transaction=True)
async def test_encoded_slash_over_asgi_raw_path_is_400(services: ServiceSpy) -> None:
    """Through the real ASGI handler, as daphne/uvicorn deliver it: decoded ``path`` plus ``raw_path``."""
    from asgiref.sync import sync_to_async

    from yoi_backend.asgi import django_asgi_app

    def make_token() -> str:
        user = User.objects.create_user("asgi-user", password="pw-for-tests")
        return str(Token.objects.create(user=user).key)

    key = await sync_to_async(make_token)()
    raw = b"/api/v1/runtimes/local/workers/w1%2Finput/"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/runtimes/local/workers/w1/input/",  # routes to input on worker w1
        "raw_path": raw,
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Token {key}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(django_asgi_app, scope)
    await communicator.send_input({"type": "http.request", "body": b'{"content": "hi"}', "more_body": False})
    start = await communicator.receive_output(timeout=10)
    body = await communicator.receive_output(timeout=10)
    await communicator.wait(timeout=10)
    assert start["status"] == 400
    assert json.loads(body["body"])["error"]["fields"] == {
        "worker_id": ["must be 1-120 characters of A-Z a-z 0-9 _ : -"]
    }
    assert services.calls == []


# --- bodies ------------------------------------------------------------------------------------------------

CREATE_BODIES: list[tuple[str, Any, str]] = [
    ("profile_int", {"profile": 5}, "profile"),
    ("profile_blank", {"profile": "  "}, "profile"),
    ("profile_long", {"profile": "p" * 201}, "profile"),
    ("profile_list", {"profile": ["builtin:echo"]}, "profile"),
    ("intent_str", {"intent": "assistant"}, "intent"),
    ("intent_no_kind", {"intent": {}}, "intent"),
    ("intent_bad_kind", {"intent": {"kind": "root"}}, "intent"),
    ("initial_input_blank", {"initial_input": " \n"}, "initial_input"),
    ("initial_input_int", {"initial_input": 3}, "initial_input"),
    ("initial_input_null", {"initial_input": None}, "initial_input"),
    ("initial_input_oversized", {"initial_input": "x" * (MAX_INPUT_BYTES + 1)}, "initial_input"),
    ("worker_id_bad", {"worker_id": "../w"}, "worker_id"),
    ("worker_id_long", {"worker_id": "w" * 121}, "worker_id"),
    ("options_list", {"options": [1]}, "options"),
    ("body_list", [{"profile": "builtin:echo"}], "non_field_errors"),
    ("body_string", "builtin:echo", "non_field_errors"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in CREATE_BODIES], ids=[i for i, _, _ in CREATE_BODIES]
)
def test_invalid_create_body_is_400_with_fields(
    api_client: APIClient, services: ServiceSpy, body: Any, field: str
) -> None:
    fields = invalid_fields(api_client.post(WORKERS, body, format="json"))
    assert field in fields
    assert services.calls == []


INPUT_BODIES: list[tuple[str, Any, str]] = [
    ("missing", {}, "content"),
    ("blank", {"content": ""}, "content"),
    ("whitespace", {"content": "   "}, "content"),
    ("int", {"content": 5}, "content"),
    ("bool", {"content": True}, "content"),
    ("null", {"content": None}, "content"),
    ("object", {"content": {"text": "hi"}}, "content"),
    ("nul_char", {"content": "a\x00b"}, "content"),
    ("oversized", {"content": "é" * (MAX_INPUT_BYTES // 2 + 1)}, "content"),
    ("bad_kind", {"content": "hi", "kind": "admin"}, "kind"),
    ("list_body", ["hi"], "non_field_errors"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in INPUT_BODIES], ids=[i for i, _, _ in INPUT_BODIES]
)
def test_invalid_input_body_is_400_with_fields(
    api_client: APIClient, services: ServiceSpy, body: Any, field: str
) -> None:
    fields = invalid_fields(api_client.post(WORKER + "input/", body, format="json"))
    assert field in fields
    assert services.calls == []


@pytest.mark.parametrize("action", ["stop", "cancel"])
@pytest.mark.parametrize(
    ("body", "field"),
    [({"reason": "r" * 501}, "reason"), ({"reason": 7}, "reason"), ([], "non_field_errors")],
    ids=["reason_long", "reason_int", "list"],
)
def test_invalid_end_body_is_400_with_fields(
    api_client: APIClient, services: ServiceSpy, action: str, body: Any, field: str
) -> None:
    fields = invalid_fields(api_client.post(WORKER + f"{action}/", body, format="json"))
    assert field in fields
    assert services.calls == []


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"content": "hi",}', b"{'content': 'hi'}", b'{"content": NaN}', b"\xff\xfe", b"[1, 2"],
    ids=["truncated", "trailing_comma", "single_quotes", "nan", "not_utf8", "open_list"],
)
def test_malformed_json_is_400_with_fields(api_client: APIClient, services: ServiceSpy, raw: bytes) -> None:
    fields = invalid_fields(api_client.post(WORKER + "input/", raw, content_type="application/json"))
    assert "non_field_errors" in fields
    assert services.calls == []


def test_oversized_request_body_is_413_without_reading_it_all(
    api_client: APIClient, services: ServiceSpy, settings: Any
) -> None:
    # Under daphne the server refuses it first (yoi_backend/serve.py); this is Django's own cap behind it.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    raw = json.dumps({"content": "x" * 2000}).encode()
    response = api_client.post(WORKER + "input/", raw, content_type="application/json")
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.pop("request_id") == response["X-Request-ID"]
    assert error == {"code": "payload_too_large", "message": "the request body is too large", "retryable": False}
    assert services.calls == []


def test_unknown_body_keys_are_ignored(api_client: APIClient, services: ServiceSpy) -> None:
    from runtimes.types import Ack

    services.answer("worker_send_input", Ack(runtime_id="local", worker_id="w1", status="running"))
    response = api_client.post(WORKER + "input/", {"content": "hi", "extra": 1}, format="json")
    assert response.status_code == 202


# --- transcript query --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=201", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("start=-1", "start"),
        ("start=x", "start"),
        ("start=1e3", "start"),
        (f"start={2**53}", "start"),
    ],
)
def test_invalid_transcript_query_is_400_with_fields(
    api_client: APIClient, services: ServiceSpy, query: str, field: str
) -> None:
    fields = invalid_fields(api_client.get(WORKER + f"transcript/?{query}"))
    assert field in fields
    assert services.calls == []
