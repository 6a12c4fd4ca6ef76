"""Routes, URL names and response shapes of the browser API, over services replaced by a spy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.test import APIClient

from runtimes.selectors import RuntimeView
from runtimes.types import Ack, Capabilities, ProfileInfo, TranscriptItem, TranscriptPage, WorkerDetail, WorkerSpec
from tests.workers.conftest import ServiceSpy
from workers.services import RuntimeFailure, WorkerListing

pytestmark = pytest.mark.django_db

WORKER = WorkerDetail(
    runtime_id="local",
    worker_id="w1",
    status="running",
    profile="builtin:echo",
    intent={"kind": "assistant"},
    transcript_len=2,
    last_seq=7,
    created_at=1_800_000_000.5,
    updated_at=1_800_000_001.0,
    epoch="0f3c9a7e5b1d4c2a",
)
WORKER_KEYS = {"runtime_id", "worker_id", "status", "profile", "intent", "transcript_len", "last_seq", "epoch"}


@pytest.mark.parametrize(
    ("name", "kwargs", "path"),
    [
        ("workers:runtime-list", {}, "/api/v1/runtimes/"),
        ("workers:runtime-detail", {"runtime_id": "local"}, "/api/v1/runtimes/local/"),
        ("workers:runtime-worker-list", {"runtime_id": "local"}, "/api/v1/runtimes/local/workers/"),
        (
            "workers:runtime-worker-detail",
            {"runtime_id": "local", "worker_id": "w1"},
            "/api/v1/runtimes/local/workers/w1/",
        ),
        (
            "workers:runtime-worker-input",
            {"runtime_id": "local", "worker_id": "w1"},
            "/api/v1/runtimes/local/workers/w1/input/",
        ),
        (
            "workers:runtime-worker-stop",
            {"runtime_id": "local", "worker_id": "w1"},
            "/api/v1/runtimes/local/workers/w1/stop/",
        ),
        (
            "workers:runtime-worker-cancel",
            {"runtime_id": "local", "worker_id": "w1"},
            "/api/v1/runtimes/local/workers/w1/cancel/",
        ),
        (
            "workers:runtime-worker-transcript",
            {"runtime_id": "local", "worker_id": "w1"},
            "/api/v1/runtimes/local/workers/w1/transcript/",
        ),
        ("workers:worker-list", {}, "/api/v1/workers/"),
    ],
)
def test_url_names(name: str, kwargs: dict[str, str], path: str) -> None:
    assert reverse(name, kwargs=kwargs) == path


def test_runtime_list_and_detail_shape(api_client: APIClient, services: ServiceSpy, user: User) -> None:
    checked = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    view = RuntimeView(
        runtime_id="local",
        display_name="Local",
        kind="embedded",
        enabled=True,
        state="online",
        checked_at=checked,
        last_seen_at=checked,
        error_code="",
        capabilities=Capabilities(protocol_version="1", profiles=(ProfileInfo("builtin:echo", "echo"),)),
    )
    services.answer("runtime_list_visible", [view])
    services.answer("runtime_get_visible", view)
    expected = {
        "runtime_id": "local",
        "display_name": "Local",
        "kind": "embedded",
        "enabled": True,
        "status": {
            "state": "online",
            "checked_at": "2026-01-02T03:04:05Z",
            "last_seen_at": "2026-01-02T03:04:05Z",
            "error_code": None,
            "reason": None,
        },
        "capabilities": view.capabilities.to_json(),
    }
    assert api_client.get("/api/v1/runtimes/").json() == {"items": [expected]}
    assert api_client.get("/api/v1/runtimes/local/").json() == expected
    assert services.calls == [
        ("runtime_list_visible", {"user": user}),
        ("runtime_get_visible", {"runtime_id": "local", "user": user}),
    ]


def test_worker_routes_shapes(api_client: APIClient, services: ServiceSpy, user: User) -> None:
    services.answer("worker_list", [WORKER])
    services.answer("worker_get", WORKER)
    body = api_client.get("/api/v1/runtimes/local/workers/").json()
    assert list(body) == ["items"]
    (item,) = body["items"]
    assert set(item) == WORKER_KEYS | {"created_at", "updated_at"}
    assert item["created_at"] == "2027-01-15T08:00:00.500000Z"
    assert item["epoch"] == "0f3c9a7e5b1d4c2a"
    assert api_client.get("/api/v1/runtimes/local/workers/w1/").json() == item


def test_worker_unknown_optional_fields_are_omitted(api_client: APIClient, services: ServiceSpy) -> None:
    services.answer("worker_get", WorkerDetail(runtime_id="local", worker_id="w1", status="failed", exit_code=3))
    body = api_client.get("/api/v1/runtimes/local/workers/w1/").json()
    assert body == {
        "runtime_id": "local",
        "worker_id": "w1",
        "status": "failed",
        "profile": None,
        "intent": {},
        "transcript_len": None,
        "last_seq": None,
        "exit_code": 3,
        "epoch": None,
    }


def test_create_passes_a_spec_and_answers_201(api_client: APIClient, services: ServiceSpy, user: User) -> None:
    services.answer("worker_create", WORKER)
    response = api_client.post(
        "/api/v1/runtimes/local/workers/",
        {
            "profile": "builtin:echo",
            "initial_input": "hi",
            "intent": {"kind": "task", "goal": "x"},
            "worker_id": "w1",
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="create-1",
    )
    assert response.status_code == 201
    assert response["Location"] == "/api/v1/runtimes/local/workers/w1/"
    assert set(response.json()) >= WORKER_KEYS
    assert services.calls == [
        (
            "worker_create",
            {
                "runtime_id": "local",
                "spec": WorkerSpec(
                    profile="builtin:echo",
                    intent={"kind": "task", "goal": "x"},
                    initial_input="hi",
                    worker_id="w1",
                ),
                "user": user,
                "idempotency_key": "create-1",
            },
        )
    ]


@pytest.mark.parametrize("body", [{}, None, {"profile": None}])
def test_create_defaults(api_client: APIClient, services: ServiceSpy, body: dict[str, object] | None) -> None:
    services.answer("worker_create", WORKER)
    assert api_client.post("/api/v1/runtimes/local/workers/", body, format="json").status_code == 201
    spec = services.calls[0][1]["spec"]
    assert spec == WorkerSpec(profile=None, intent={"kind": "assistant"})


def test_input_answers_202_ack(api_client: APIClient, services: ServiceSpy, user: User) -> None:
    services.answer("worker_send_input", Ack("local", "w1", "running", transcript_sequence=3, event_id=9))
    response = api_client.post("/api/v1/runtimes/local/workers/w1/input/", {"content": " hi "}, format="json")
    assert response.status_code == 202
    assert response.json() == {
        "runtime_id": "local",
        "worker_id": "w1",
        "status": "running",
        "transcript_sequence": 3,
        "event_id": 9,
    }
    assert services.calls == [
        (
            "worker_send_input",
            {
                "runtime_id": "local",
                "worker_id": "w1",
                "content": " hi ",
                "kind": "user",
                "user": user,
                "idempotency_key": None,
            },
        )
    ]


@pytest.mark.parametrize("action", ["stop", "cancel"])
def test_stop_and_cancel_answer_200_ack(
    api_client: APIClient, services: ServiceSpy, user: User, action: str
) -> None:
    services.answer(f"worker_{action}", Ack("local", "w1", "stopped"))
    empty = api_client.post(f"/api/v1/runtimes/local/workers/w1/{action}/")
    assert empty.status_code == 200
    assert empty.json() == {"runtime_id": "local", "worker_id": "w1", "status": "stopped"}
    with_reason = api_client.post(
        f"/api/v1/runtimes/local/workers/w1/{action}/", {"reason": "done"}, format="json"
    )
    assert with_reason.status_code == 200
    assert [kwargs["reason"] for _, kwargs in services.calls] == [None, "done"]


def test_transcript_page_shape_and_defaults(api_client: APIClient, services: ServiceSpy, user: User) -> None:
    page = TranscriptPage(
        runtime_id="local",
        worker_id="w1",
        start=0,
        limit=50,
        total_items=3,
        items=(TranscriptItem(1, "user", "hi", 2), TranscriptItem(2, "assistant", "echo: hi", None)),
        next_start=2,
    )
    services.answer("worker_transcript", page)
    body = api_client.get("/api/v1/runtimes/local/workers/w1/transcript/").json()
    assert body == {
        "runtime_id": "local",
        "worker_id": "w1",
        "start": 0,
        "limit": 50,
        "total_items": 3,
        "items": [
            {"sequence": 1, "role": "user", "content": "hi", "event_id": 2},
            {"sequence": 2, "role": "assistant", "content": "echo: hi", "event_id": None},
        ],
        "next_start": 2,
    }
    api_client.get("/api/v1/runtimes/local/workers/w1/transcript/?start=2&limit=200")
    assert [(kw["start"], kw["limit"]) for _, kw in services.calls] == [(0, 50), (2, 200)]


def test_cross_runtime_list_shape(api_client: APIClient, services: ServiceSpy, user: User) -> None:
    services.answer(
        "worker_list_all", WorkerListing(items=[WORKER], errors=[RuntimeFailure("dead", "runtime_unreachable")])
    )
    body = api_client.get("/api/v1/workers/").json()
    assert set(body) == {"items", "errors"}
    assert body["items"][0]["worker_id"] == "w1"
    assert body["errors"] == [{"runtime_id": "dead", "code": "runtime_unreachable"}]
    assert services.calls == [("worker_list_all", {"user": user})]


def test_worker_timestamp_out_of_range_is_omitted(api_client: APIClient, services: ServiceSpy) -> None:
    services.answer(
        "worker_get", WorkerDetail(runtime_id="local", worker_id="w1", status="running", created_at=1e300)
    )
    response = api_client.get("/api/v1/runtimes/local/workers/w1/")
    assert response.status_code == 200
    assert "created_at" not in response.json()
