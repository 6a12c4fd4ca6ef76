"""A browser's Idempotency-Key on create, input, stop and cancel (docs/api.md, *Idempotent commands*).

Over the real services: the embedded runtime in-process and a real ``worker_runtime`` process (the same
test bodies), plus ``responses`` mocks for what the Backend sends upstream. The same key and body answer
the first answer again without a second effect; the same key with another request is
``422 idempotency_key_reused``; two users' keys never meet; a malformed key is a 400 that reaches nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from runtimes.models import AuditEvent, Runtime
from tests.runtime_process import RuntimeProcess
from tests.workers.remote_helpers import (
    ROUTES,
    WORKER_URL,
    assert_upstream_calls,
    call,
    error_of,
    make_remote_row,
    mock_route,
    mock_runtime,
    mock_summary,
)

pytestmark = pytest.mark.django_db

REAL_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_IDEMPOTENT"
WAIT_SECONDS = 10.0
FORWARDED_KEY_RE = re.compile(r"yoi-[0-9a-f]{64}")


@pytest.fixture(autouse=True)
def _static_files_not_scanned(settings: SettingsWrapper) -> None:
    """WhiteNoise scans every static file for each new test client (0.1 s); these requests fetch none."""
    settings.WHITENOISE_USE_FINDERS = False


@pytest.fixture(params=["embedded", "remote"])
def runtime_id(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, embedded_runtime: Runtime) -> str:
    """The runtime under test: the embedded ``local``, or a row for a real runtime process."""
    if request.param == "embedded":
        return embedded_runtime.runtime_id
    process: RuntimeProcess = request.getfixturevalue("runtime_factory")(runtime_id="rt-real")
    make_remote_row(
        monkeypatch,
        runtime_id=process.runtime_id,
        base_url=process.base_url,
        token=process.token,
        token_env=REAL_TOKEN_ENV,
        connect_timeout=2.0,
        read_timeout=10.0,
    )
    return process.runtime_id


@pytest.fixture
def other_client(db: None) -> APIClient:
    """A second user's client."""
    client = APIClient()
    client.force_authenticate(User.objects.create_user("bob", "bob@example.invalid", "bob-pw-for-tests"))
    return client


def post(client: APIClient, path: str, body: dict[str, Any] | None, key: str | None) -> Any:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(path, body, format="json", **headers)


def workers(runtime_id: str) -> str:
    return f"/api/v1/runtimes/{runtime_id}/workers/"


def create_echo(client: APIClient, runtime_id: str) -> str:
    response = post(client, workers(runtime_id), {"profile": "builtin:echo"}, None)
    assert response.status_code == 201, response.content
    worker_id: str = response.json()["worker_id"]
    return worker_id


def user_inputs(client: APIClient, runtime_id: str, worker_id: str) -> list[str]:
    """The worker's user inputs, once every echo answer is in (a bounded wait)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page = client.get(f"{workers(runtime_id)}{worker_id}/transcript/?limit=200").json()
        users = [i["content"] for i in page["items"] if i["role"] == "user"]
        if page["total_items"] == 2 * len(users) or time.monotonic() > deadline:
            return users
        time.sleep(0.01)


def test_the_same_key_and_body_twice_answers_the_first_answer_with_one_effect(
    api_client: APIClient, runtime_id: str
) -> None:
    worker_id = create_echo(api_client, runtime_id)
    path = f"{workers(runtime_id)}{worker_id}/input/"
    first = post(api_client, path, {"content": "once"}, "input-1")
    again = post(api_client, path, {"content": "once", "kind": "user"}, "input-1")  # the same request
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert user_inputs(api_client, runtime_id, worker_id) == ["once"]
    # Without a key every submission is its own.
    for _ in range(2):
        assert post(api_client, path, {"content": "twice"}, None).status_code == 202
    assert user_inputs(api_client, runtime_id, worker_id) == ["once", "twice", "twice"]


def test_create_stop_and_cancel_are_idempotent_too(api_client: APIClient, runtime_id: str) -> None:
    body = {"profile": "builtin:echo", "initial_input": "hello"}
    first = post(api_client, workers(runtime_id), body, "create-1")
    again = post(api_client, workers(runtime_id), body, "create-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    listed = api_client.get(workers(runtime_id)).json()["items"]
    assert [w["worker_id"] for w in listed] == [first.json()["worker_id"]]

    worker = f"{workers(runtime_id)}{first.json()['worker_id']}/"
    stop = post(api_client, f"{worker}stop/", {"reason": "done"}, "stop-1")
    assert stop.status_code == 200 and stop.json()["status"] == "stopped"
    assert post(api_client, f"{worker}stop/", {"reason": "done"}, "stop-1").json() == stop.json()
    cancel = post(api_client, f"{worker}cancel/", None, "cancel-1")
    assert post(api_client, f"{worker}cancel/", None, "cancel-1").json() == cancel.json()
    assert AuditEvent.objects.filter(action="create").count() == 2  # every request is audited, replays too


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(("input", {"content": "something else"}), id="other_body"),
        pytest.param(("stop", {}), id="other_command"),
    ],
)
def test_the_same_key_with_another_request_is_422_idempotency_key_reused(
    api_client: APIClient, runtime_id: str, second: tuple[str, dict[str, Any]]
) -> None:
    worker_id = create_echo(api_client, runtime_id)
    worker = f"{workers(runtime_id)}{worker_id}/"
    assert post(api_client, f"{worker}input/", {"content": "first"}, "k-1").status_code == 202
    action, body = second
    response = post(api_client, f"{worker}{action}/", body, "k-1")
    assert response.status_code == 422, response.content
    error = error_of(response)
    assert (error["code"], error["retryable"]) == ("idempotency_key_reused", False)
    assert "upstream_code" not in error
    assert user_inputs(api_client, runtime_id, worker_id) == ["first"]
    assert api_client.get(worker).json()["status"] == "running"  # the stop never happened


def test_two_users_with_the_same_key_get_two_effects(
    api_client: APIClient, other_client: APIClient, runtime_id: str
) -> None:
    worker_id = create_echo(api_client, runtime_id)
    path = f"{workers(runtime_id)}{worker_id}/input/"
    mine = post(api_client, path, {"content": "same"}, "shared-key")
    theirs = post(other_client, path, {"content": "same"}, "shared-key")
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["transcript_sequence"] != theirs.json()["transcript_sequence"]
    assert user_inputs(api_client, runtime_id, worker_id) == ["same", "same"]


@pytest.mark.parametrize("key", ["", "has space", "ünïcode", "x" * 256, "tab\tkey"], ids=repr)
def test_a_malformed_key_is_400_and_reaches_no_runtime(api_client: APIClient, runtime_id: str, key: str) -> None:
    worker_id = create_echo(api_client, runtime_id)
    response = post(api_client, f"{workers(runtime_id)}{worker_id}/input/", {"content": "x"}, key)
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == "invalid_request" and "Idempotency-Key" in error["fields"]
    assert user_inputs(api_client, runtime_id, worker_id) == []


# --------------------------------------------------------------------------------------------- what goes upstream


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The mocked remote row ``rt-remote``."""
    return make_remote_row(monkeypatch)


def forwarded_keys(send: Callable[[], Any], route: str = "input") -> list[str | None]:
    """The Idempotency-Key headers the mocked runtime got on POSTs while ``send`` ran."""
    with mock_runtime() as rsps:
        mock_summary(rsps)
        mock_route(rsps, ROUTES[route])
        send()
        return [c.request.headers.get("Idempotency-Key") for c in rsps.calls if c.request.method == "POST"]


def test_the_forwarded_key_is_derived_from_user_and_key_and_never_the_browsers_own(
    api_client: APIClient, other_client: APIClient, remote: Runtime
) -> None:
    path = f"{WORKER_URL}input/"

    def twice(client: APIClient, key: str | None) -> list[str | None]:
        return forwarded_keys(lambda: [post(client, path, {"content": "x"}, key) for _ in range(2)])

    mine = twice(api_client, "browser-key-1")
    theirs = twice(other_client, "browser-key-1")
    other_key = twice(api_client, "browser-key-2")
    unkeyed = twice(api_client, None)
    assert mine[0] == mine[1] and theirs[0] == theirs[1]
    assert all(k is not None and FORWARDED_KEY_RE.fullmatch(k) for k in mine + theirs + other_key)
    assert len({mine[0], theirs[0], other_key[0]}) == 3
    assert all("browser-key" not in (k or "") for k in mine + theirs)
    # Without a browser key each call still goes with a fresh key of its own (a retry is never deduplicated).
    assert unkeyed[0] != unkeyed[1] and not FORWARDED_KEY_RE.fullmatch(unkeyed[0] or "")


@pytest.mark.parametrize("name", ["create", "input", "stop", "cancel"])
def test_every_command_route_forwards_the_derived_key(user: User, remote: Runtime, name: str) -> None:
    client = APIClient()
    client.force_authenticate(user)
    client.credentials(HTTP_IDEMPOTENCY_KEY=f"{name}-key")
    keys = forwarded_keys(lambda: call(client, ROUTES[name]), route=name)
    assert len(keys) == 1 and FORWARDED_KEY_RE.fullmatch(keys[0] or "")


def test_a_reused_key_reported_by_a_remote_runtime_is_idempotency_key_reused(
    api_client: APIClient, remote: Runtime
) -> None:
    body = b'{"error": {"code": "idempotency_key_reused", "message": "the key was used for another request"}}'
    with mock_runtime() as rsps:
        mock_summary(rsps)
        mock_route(rsps, ROUTES["input"], body=body, status=422)
        response = post(api_client, f"{WORKER_URL}input/", {"content": "x"}, "k")
        assert_upstream_calls(rsps, 2)
    assert response.status_code == 422
    assert error_of(response)["code"] == "idempotency_key_reused"
    assert AuditEvent.objects.get().outcome == "idempotency_key_reused"
