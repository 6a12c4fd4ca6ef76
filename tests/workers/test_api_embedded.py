"""End to end over the real services: an embedded runtime in-process, and a remote row on a refused port."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from runtimes.models import AuditEvent, Runtime
from tests.workers.conftest import DEAD_TOKEN_VALUE
from tests.workers.remote_helpers import error_of

pytestmark = pytest.mark.django_db

WORKERS = "/api/v1/runtimes/local/workers/"
WAIT_SECONDS = 10.0


def create_echo(client: APIClient, initial_input: str = "hi") -> dict[str, Any]:
    """Create an echo worker on ``local`` and return its JSON."""
    response = client.post(WORKERS, {"profile": "builtin:echo", "initial_input": initial_input}, format="json")
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    return body


def wait_for_transcript(client: APIClient, worker_id: str, total: int) -> None:
    """Bounded wait until the worker's transcript holds ``total`` items (echo answers on its own thread)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        page = client.get(f"{WORKERS}{worker_id}/transcript/?limit=1").json()
        if page["total_items"] >= total:
            return
        time.sleep(0.01)
    raise AssertionError(f"transcript of {worker_id} did not reach {total} items")


def test_echo_worker_lifecycle(api_client: APIClient, embedded_runtime: Runtime, user: User) -> None:
    worker = create_echo(api_client)
    worker_id = worker["worker_id"]
    assert worker["runtime_id"] == "local"
    assert worker["status"] == "running"
    assert worker["profile"] == "builtin:echo"
    assert worker["intent"] == {"kind": "assistant"}
    assert isinstance(worker["transcript_len"], int) and isinstance(worker["last_seq"], int)

    listed = api_client.get(WORKERS).json()["items"]
    assert [w["worker_id"] for w in listed] == [worker_id]
    detail = api_client.get(f"{WORKERS}{worker_id}/").json()
    assert detail["worker_id"] == worker_id and detail["status"] == "running"

    wait_for_transcript(api_client, worker_id, 2)
    ack = api_client.post(f"{WORKERS}{worker_id}/input/", {"content": "again"}, format="json")
    assert ack.status_code == 202
    assert ack.json()["runtime_id"] == "local"
    assert ack.json()["worker_id"] == worker_id
    assert ack.json()["status"] == "running"
    assert isinstance(ack.json()["transcript_sequence"], int)

    stop = api_client.post(f"{WORKERS}{worker_id}/stop/")
    assert stop.status_code == 200
    assert stop.json()["status"] == "stopped"
    cancel = api_client.post(f"{WORKERS}{worker_id}/cancel/", {"reason": "late"}, format="json")
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "stopped"  # idempotent no-op on a finished worker
    assert api_client.get(f"{WORKERS}{worker_id}/").json()["status"] == "stopped"

    rejected = api_client.post(f"{WORKERS}{worker_id}/input/", {"content": "too late"}, format="json")
    assert rejected.status_code == 409
    assert rejected.json()["error"]["code"] == "runtime_rejected"
    assert rejected.json()["error"]["upstream_code"] == "worker_not_running"

    audit = list(AuditEvent.objects.order_by("id").values_list("action", "outcome", "worker_id", "user"))
    assert audit == [
        ("create", "ok", worker_id, user.pk),
        ("input", "ok", worker_id, user.pk),
        ("stop", "ok", worker_id, user.pk),
        ("cancel", "ok", worker_id, user.pk),
        ("input", "runtime_rejected", worker_id, user.pk),
    ]


def test_transcript_pages_with_next_start(api_client: APIClient, embedded_runtime: Runtime) -> None:
    worker_id = create_echo(api_client, "one")["worker_id"]
    wait_for_transcript(api_client, worker_id, 2)
    api_client.post(f"{WORKERS}{worker_id}/input/", {"content": "two"}, format="json")
    wait_for_transcript(api_client, worker_id, 4)

    items: list[dict[str, Any]] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        page = api_client.get(f"{WORKERS}{worker_id}/transcript/?start={start}&limit=3").json()
        assert page["runtime_id"] == "local" and page["worker_id"] == worker_id
        assert page["start"] == start and page["limit"] == 3
        assert len(page["items"]) <= 3
        items.extend(page["items"])
        start = page["next_start"]
        pages += 1
    assert pages == 2
    assert [(i["role"], i["content"]) for i in items] == [
        ("user", "one"),
        ("assistant", "echo: one"),
        ("user", "two"),
        ("assistant", "echo: two"),
    ]
    sequences = [i["sequence"] for i in items]
    assert sequences == sorted(sequences)
    assert set(items[0]) == {"sequence", "role", "content", "event_id"}


def test_create_honours_intent_and_worker_id(api_client: APIClient, embedded_runtime: Runtime) -> None:
    response = api_client.post(
        WORKERS, {"profile": "builtin:echo", "intent": {"kind": "task"}, "worker_id": "job-1"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["worker_id"] == "job-1"
    assert response.json()["intent"]["kind"] == "task"
    assert response["Location"] == f"{WORKERS}job-1/"


def test_unknown_profile_is_runtime_rejected(api_client: APIClient, embedded_runtime: Runtime) -> None:
    response = api_client.post(WORKERS, {"profile": "no-such-profile"}, format="json")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "runtime_rejected"


def test_unknown_worker_is_worker_not_found(api_client: APIClient, embedded_runtime: Runtime) -> None:
    for method, url in [
        ("get", f"{WORKERS}nope/"),
        ("get", f"{WORKERS}nope/transcript/"),
        ("post", f"{WORKERS}nope/stop/"),
    ]:
        response = getattr(api_client, method)(url)
        assert response.status_code == 404
        assert error_of(response) == {
            "code": "worker_not_found",
            "message": "worker nope not found on runtime local",
            "retryable": False,
            "runtime_id": "local",
            "worker_id": "nope",
        }


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/runtimes/ghost/"),
        ("get", "/api/v1/runtimes/ghost/workers/"),
        ("post", "/api/v1/runtimes/ghost/workers/"),
        ("get", "/api/v1/runtimes/ghost/workers/w1/"),
        ("post", "/api/v1/runtimes/ghost/workers/w1/input/"),
        ("post", "/api/v1/runtimes/ghost/workers/w1/stop/"),
        ("post", "/api/v1/runtimes/ghost/workers/w1/cancel/"),
        ("get", "/api/v1/runtimes/ghost/workers/w1/transcript/"),
    ],
)
def test_unknown_runtime_is_runtime_not_found(
    api_client: APIClient, embedded_runtime: Runtime, method: str, url: str
) -> None:
    response = getattr(api_client, method)(url, {"content": "hi"}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "runtime_not_found"
    assert response.json()["error"]["runtime_id"] == "ghost"


def test_runtime_of_another_group_is_invisible(
    api_client: APIClient, user: User, staff_user: User, embedded_runtime: Runtime
) -> None:
    team = Group.objects.create(name="team")
    hidden = Runtime.objects.create(runtime_id="hidden", display_name="Hidden", kind=Runtime.Kind.EMBEDDED)
    hidden.groups.add(team)

    assert [r["runtime_id"] for r in api_client.get("/api/v1/runtimes/").json()["items"]] == ["local"]
    for url in ["/api/v1/runtimes/hidden/", "/api/v1/runtimes/hidden/workers/"]:
        response = api_client.get(url)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "runtime_not_found"

    staff = APIClient()
    staff.force_authenticate(staff_user)
    assert [r["runtime_id"] for r in staff.get("/api/v1/runtimes/").json()["items"]] == ["hidden", "local"]

    user.groups.add(team)
    member = APIClient()
    member.force_authenticate(User.objects.get(pk=user.pk))
    assert member.get("/api/v1/runtimes/hidden/workers/").status_code == 200


def test_runtime_list_shape_and_no_address(
    api_client: APIClient, embedded_runtime: Runtime, dead_runtime: Runtime
) -> None:
    response = api_client.get("/api/v1/runtimes/")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [r["runtime_id"] for r in items] == ["dead", "local"]
    for item in items:
        assert set(item) == {"runtime_id", "display_name", "kind", "enabled", "status", "capabilities"}
        assert set(item["status"]) == {"state", "checked_at", "last_seen_at", "error_code", "reason"}
    assert dead_runtime.base_url.encode() not in response.content
    assert b"token" not in response.content.lower()


def test_runtime_detail_refreshes_a_dead_runtime(api_client: APIClient, dead_runtime: Runtime) -> None:
    response = api_client.get("/api/v1/runtimes/dead/")
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "remote"
    assert body["status"]["state"] == "offline"
    assert body["status"]["error_code"] == "runtime_unreachable"
    assert body["status"]["checked_at"] is not None
    assert dead_runtime.base_url.encode() not in response.content


def test_command_on_dead_runtime_is_runtime_unreachable(api_client: APIClient, dead_runtime: Runtime) -> None:
    response = api_client.post("/api/v1/runtimes/dead/workers/", {"profile": "builtin:echo"}, format="json")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "runtime_unreachable"
    assert error["retryable"] is True
    assert dead_runtime.base_url.encode() not in response.content
    assert DEAD_TOKEN_VALUE.encode() not in response.content


def test_cross_runtime_list_has_partial_results(
    api_client: APIClient, embedded_runtime: Runtime, dead_runtime: Runtime
) -> None:
    worker_id = create_echo(api_client)["worker_id"]
    response = api_client.get("/api/v1/workers/")
    assert response.status_code == 200
    body = response.json()
    assert [(w["runtime_id"], w["worker_id"]) for w in body["items"]] == [("local", worker_id)]
    assert body["errors"] == [{"runtime_id": "dead", "code": "runtime_unreachable"}]
    assert dead_runtime.base_url.encode() not in response.content


def test_disabled_runtime_is_runtime_disabled(api_client: APIClient, embedded_runtime: Runtime) -> None:
    embedded_runtime.enabled = False
    embedded_runtime.save()
    response = api_client.get(WORKERS)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "runtime_disabled"
    listed = api_client.get("/api/v1/runtimes/").json()["items"]
    assert listed[0]["enabled"] is False and listed[0]["status"]["state"] == "disabled"
