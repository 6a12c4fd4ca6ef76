"""The browser API over real ``worker_runtime`` processes on 127.0.0.1 (tests/runtime_process.py).

The same flows as the mocked mapping tests, end to end: a Runtime row points at the process, its token ref
names an environment variable holding the process's token. Every response a test sees, and every log
record, is checked for the processes' addresses and token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from runtimes.models import AuditEvent, Runtime
from tests.runtime_process import RuntimeProcess, api_get
from tests.workers.remote_helpers import Secrets, error_of, make_remote_row, record_text, response_texts

pytestmark = pytest.mark.django_db

TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_REAL_RUNTIME"
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.01
RuntimeFactory = Callable[..., RuntimeProcess]


@pytest.fixture(autouse=True)
def _static_files_not_scanned(settings: SettingsWrapper) -> None:
    """WhiteNoise scans every static file for each new test client (0.1 s); these requests fetch none."""
    settings.WHITENOISE_USE_FINDERS = False


class Browser:
    """An authenticated APIClient whose every response is checked for the runtimes' secrets."""

    def __init__(self, client: APIClient) -> None:
        self.client = client
        self.secrets: list[Secrets] = []

    def watch(self, process: RuntimeProcess) -> None:
        """Responses must never name this process's address or token."""
        assert process.token is not None
        self.secrets.append(Secrets(host="127.0.0.1", port=process.port, token=process.token))

    def check(self, label: str, texts: list[str]) -> None:
        for secrets in self.secrets:
            secrets.check(label, texts)

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        self.check(f"GET {path}", response_texts(response))
        return response

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.client.post(path, body, format="json") if body is not None else self.client.post(path)
        self.check(f"POST {path}", response_texts(response))
        return response


@pytest.fixture
def browser(api_client: APIClient, caplog: pytest.LogCaptureFixture) -> Iterator[Browser]:
    """The browser; after the test, no captured log record names a watched runtime's address or token."""
    caplog.set_level(logging.DEBUG)
    for name in ("django", "django.request", "runtimes", "workers"):
        caplog.set_level(logging.DEBUG, logger=name)
    client = Browser(api_client)
    yield client
    client.check("log", [record_text(record) for record in caplog.records])


def add_remote(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, process: RuntimeProcess, **kwargs: Any
) -> Runtime:
    """A Runtime row for ``process`` (token from an env ref); its secrets are watched."""
    browser.watch(process)
    kwargs.setdefault("runtime_id", process.runtime_id)
    kwargs.setdefault("token", process.token)
    kwargs.setdefault("token_env", TOKEN_ENV)
    return make_remote_row(
        monkeypatch, base_url=process.base_url, connect_timeout=2.0, read_timeout=10.0, **kwargs
    )


def workers_url(runtime_id: str, worker_id: str = "") -> str:
    return f"/api/v1/runtimes/{runtime_id}/workers/" + (f"{worker_id}/" if worker_id else "")


def expect_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = error_of(response)
    assert error["code"] == code
    assert "WWW-Authenticate" not in response
    return error


def wait_for_transcript(browser: Browser, runtime_id: str, worker_id: str, total: int) -> None:
    """Bounded wait until the worker's transcript holds ``total`` items (echo answers on its own thread)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page = browser.get(workers_url(runtime_id, worker_id) + "transcript/?limit=1").json()
        if page["total_items"] >= total:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"transcript of {runtime_id}/{worker_id} did not reach {total} items")
        time.sleep(POLL_SECONDS)


def read_transcript(browser: Browser, runtime_id: str, worker_id: str, *, limit: int) -> tuple[list[Any], int]:
    """Every transcript item, page by page following ``next_start``; also how many pages it took."""
    items: list[Any] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        response = browser.get(workers_url(runtime_id, worker_id) + f"transcript/?start={start}&limit={limit}")
        assert response.status_code == 200, response.content
        page = response.json()
        assert (page["runtime_id"], page["worker_id"], page["start"], page["limit"]) == (
            runtime_id,
            worker_id,
            start,
            limit,
        )
        assert len(page["items"]) <= limit
        items += page["items"]
        start = page["next_start"]
        pages += 1
    return items, pages


# --------------------------------------------------------------------------------------------- flows


def test_browser_flow_against_a_real_runtime(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, runtime_process: RuntimeProcess, user: User
) -> None:
    rid = runtime_process.runtime_id
    add_remote(browser, monkeypatch, runtime_process)

    listed = browser.get("/api/v1/runtimes/").json()["items"]
    assert [(r["runtime_id"], r["kind"], r["status"]["state"]) for r in listed] == [(rid, "remote", "configured")]

    detail = browser.get(f"/api/v1/runtimes/{rid}/").json()
    assert detail["status"]["state"] == "online"
    assert detail["status"]["error_code"] is None
    assert detail["status"]["last_seen_at"] is not None and detail["status"]["checked_at"] is not None
    capabilities = detail["capabilities"]
    assert [p["name"] for p in capabilities["profiles"]] == ["builtin:echo", "builtin:burst", "example-agent"]
    assert capabilities["protocol_version"] == "1"
    assert browser.get("/api/v1/runtimes/").json()["items"][0]["status"]["state"] == "online"

    created = browser.post(workers_url(rid), {"profile": "builtin:echo", "initial_input": "one"})
    assert created.status_code == 201, created.content
    worker = created.json()
    worker_id = worker["worker_id"]
    assert (worker["runtime_id"], worker["status"], worker["profile"]) == (rid, "running", "builtin:echo")
    assert worker["intent"] == {"kind": "assistant"}
    assert created["Location"] == workers_url(rid, worker_id)

    wait_for_transcript(browser, rid, worker_id, 2)
    ack = browser.post(workers_url(rid, worker_id) + "input/", {"content": "two"})
    assert ack.status_code == 202, ack.content
    assert (ack.json()["runtime_id"], ack.json()["worker_id"], ack.json()["status"]) == (rid, worker_id, "running")
    assert isinstance(ack.json()["transcript_sequence"], int)

    got = browser.get(workers_url(rid, worker_id))
    assert got.status_code == 200
    assert (got.json()["worker_id"], got.json()["status"]) == (worker_id, "running")
    assert [w["worker_id"] for w in browser.get(workers_url(rid)).json()["items"]] == [worker_id]

    wait_for_transcript(browser, rid, worker_id, 4)
    items, pages = read_transcript(browser, rid, worker_id, limit=3)
    assert pages == 2
    assert [(i["role"], i["content"]) for i in items] == [
        ("user", "one"),
        ("assistant", "echo: one"),
        ("user", "two"),
        ("assistant", "echo: two"),
    ]

    stop = browser.post(workers_url(rid, worker_id) + "stop/")
    assert stop.status_code == 200, stop.content
    assert stop.json()["status"] == "stopped"
    cancel = browser.post(workers_url(rid, worker_id) + "cancel/", {"reason": "late"})
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "stopped"  # a no-op on a finished worker
    assert browser.get(workers_url(rid, worker_id)).json()["status"] == "stopped"

    rejected = browser.post(workers_url(rid, worker_id) + "input/", {"content": "too late"})
    assert expect_error(rejected, 409, "runtime_rejected")["upstream_code"] == "worker_not_running"
    missing = browser.get(workers_url(rid, "no-such-worker"))
    assert expect_error(missing, 404, "worker_not_found")["worker_id"] == "no-such-worker"

    audit = list(AuditEvent.objects.order_by("id").values_list("action", "runtime_id", "worker_id", "outcome"))
    assert audit == [
        ("create", rid, worker_id, "ok"),
        ("input", rid, worker_id, "ok"),
        ("stop", rid, worker_id, "ok"),
        ("cancel", rid, worker_id, "ok"),
        ("input", rid, worker_id, "runtime_rejected"),
    ]


def test_cross_runtime_listing_with_remote_embedded_and_dead_runtimes(
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
    runtime_process: RuntimeProcess,
    embedded_runtime: Runtime,
    dead_runtime: Runtime,
) -> None:
    rid = runtime_process.runtime_id
    add_remote(browser, monkeypatch, runtime_process)
    remote_worker = browser.post(workers_url(rid), {"profile": "builtin:echo"}).json()["worker_id"]
    local_worker = browser.post(workers_url("local"), {"profile": "builtin:echo"}).json()["worker_id"]

    response = browser.get("/api/v1/workers/")
    assert response.status_code == 200
    body = response.json()
    assert sorted((w["runtime_id"], w["worker_id"]) for w in body["items"]) == sorted(
        [("local", local_worker), (rid, remote_worker)]
    )
    assert body["errors"] == [{"runtime_id": "dead", "code": "runtime_unreachable"}]


def test_killed_runtime_is_unreachable_until_it_comes_back(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, runtime_process: RuntimeProcess
) -> None:
    rid = runtime_process.runtime_id
    add_remote(browser, monkeypatch, runtime_process)
    worker_id = browser.post(workers_url(rid), {"profile": "builtin:echo"}).json()["worker_id"]

    runtime_process.kill()
    expect_error(
        browser.post(workers_url(rid, worker_id) + "input/", {"content": "hi"}), 502, "runtime_unreachable"
    )
    expect_error(browser.get(workers_url(rid, worker_id)), 502, "runtime_unreachable")
    assert AuditEvent.objects.get(action="input").outcome == "runtime_unreachable"
    row = Runtime.objects.get(runtime_id=rid)
    assert (row.status, row.status_error_code) == ("offline", "runtime_unreachable")

    runtime_process.restart()  # same port and store: the worker survived, the identity is checked again
    got = browser.get(workers_url(rid, worker_id))
    assert got.status_code == 200, got.content
    assert got.json()["worker_id"] == worker_id
    assert Runtime.objects.get(runtime_id=rid).status == "online"


@pytest.mark.parametrize("token", ["wrong-token-0000", None], ids=["wrong_token", "token_missing"])
def test_rejected_or_missing_credential_is_runtime_auth_failed(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, runtime_process: RuntimeProcess, token: str | None
) -> None:
    rid = runtime_process.runtime_id
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    add_remote(browser, monkeypatch, runtime_process, token=token)
    for response in (
        browser.get(workers_url(rid)),
        browser.post(workers_url(rid), {"profile": "builtin:echo"}),
        browser.post(workers_url(rid, "w-1") + "stop/"),
    ):
        error = expect_error(response, 502, "runtime_auth_failed")
        assert TOKEN_ENV not in error["message"]
    detail = browser.get(f"/api/v1/runtimes/{rid}/").json()
    # A runtime that refused the token is unauthorized; a token this process cannot resolve says nothing
    # about the runtime, so its status stays as it was.
    expected = ("unauthorized", "runtime_auth_failed") if token else ("configured", None)
    assert (detail["status"]["state"], detail["status"]["error_code"]) == expected
    assert api_get(runtime_process, "/v1/workers").json() == {"workers": []}


def test_runtime_reporting_another_id_is_bad_response_and_gets_no_command(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, runtime_factory: RuntimeFactory
) -> None:
    impostor = runtime_factory(runtime_id="rt-impostor")
    add_remote(browser, monkeypatch, impostor, runtime_id="rt-expected")

    detail = browser.get("/api/v1/runtimes/rt-expected/").json()
    assert (detail["status"]["state"], detail["status"]["error_code"]) == ("error", "runtime_bad_response")
    assert detail["capabilities"]["profiles"] is None  # nothing cached from an impostor
    for response in (
        browser.post(workers_url("rt-expected"), {"profile": "builtin:echo", "worker_id": "w-1"}),
        browser.get(workers_url("rt-expected")),
        browser.post(workers_url("rt-expected", "w-1") + "input/", {"content": "hi"}),
        browser.get("/api/v1/workers/"),
    ):
        if response.status_code == 200:
            assert response.json()["errors"] == [{"runtime_id": "rt-expected", "code": "runtime_bad_response"}]
        else:
            expect_error(response, 502, "runtime_bad_response")
    assert api_get(impostor, "/v1/workers").json() == {"workers": []}  # no command ever reached it


def test_same_worker_id_on_two_runtimes_routes_independently(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, runtime_factory: RuntimeFactory
) -> None:
    first, second = runtime_factory(runtime_id="rt-a"), runtime_factory(runtime_id="rt-b")
    # One shared token env var: both test processes use the same token.
    add_remote(browser, monkeypatch, first)
    add_remote(browser, monkeypatch, second)
    for process in (first, second):
        rid = process.runtime_id
        body = {"profile": "builtin:echo", "worker_id": "same", "initial_input": f"to {rid}"}
        created = browser.post(workers_url(rid), body)
        assert created.status_code == 201, created.content
        assert (created.json()["runtime_id"], created.json()["worker_id"]) == (rid, "same")
    for process in (first, second):
        wait_for_transcript(browser, process.runtime_id, "same", 2)

    stopped = browser.post(workers_url("rt-a", "same") + "stop/")
    assert (stopped.json()["runtime_id"], stopped.json()["status"]) == ("rt-a", "stopped")
    assert browser.get(workers_url("rt-a", "same")).json()["status"] == "stopped"
    assert browser.get(workers_url("rt-b", "same")).json()["status"] == "running"
    for rid in ("rt-a", "rt-b"):
        items, _ = read_transcript(browser, rid, "same", limit=50)
        assert [i["content"] for i in items] == [f"to {rid}", f"echo: to {rid}"]
    listing = browser.get("/api/v1/workers/").json()
    assert sorted((w["runtime_id"], w["worker_id"], w["status"]) for w in listing["items"]) == [
        ("rt-a", "same", "stopped"),
        ("rt-b", "same", "running"),
    ]
    assert listing["errors"] == []
    assert api_get(first, "/v1/workers/same").json()["worker"]["status"] == "stopped"
    assert api_get(second, "/v1/workers/same").json()["worker"]["status"] == "running"
