"""The runtime's REST commands over a real process: round trip, auth, and every bad-input row."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.runtime_process import (
    DEFAULT_TOKEN,
    ECHO_CREATE,
    RuntimeProcess,
    api_get,
    api_post,
    create_worker,
    example_config,
    kill_spawned_since,
    runtime_summary,
    spawned_count,
    start_runtime,
    wait_until,
    worker_detail,
)

SMALL_LIMITS = "max_input_bytes = 1000\nmax_body_bytes = 4096\n"


@pytest.fixture(scope="module")
def limited_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """One runtime for the read-mostly bad-input table: 1000-byte inputs, 4096-byte bodies."""
    marker = spawned_count()
    tmp_dir = tmp_path_factory.mktemp("limited")
    try:
        yield start_runtime(tmp_dir, config_text=example_config(extra=SMALL_LIMITS))
    finally:
        kill_spawned_since(marker)


def raw_request(
    rt: RuntimeProcess, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Send a path byte for byte (no client-side normalisation of ``..`` or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", rt.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={**rt.headers(), **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def error_code(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    code: str = body["error"]["code"]
    return code


# --------------------------------------------------------------------------------------------- round trip


def test_command_round_trip(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    response = api_post(rt, "/v1/workers", {**ECHO_CREATE, "worker_id": "w-echo"})
    assert response.status_code == 201
    worker = response.json()["worker"]
    assert worker["worker_ref"] == {"runtime_id": "rt-test", "worker_id": "w-echo"}
    assert worker["status"] == "running" and worker["profile"] == "builtin:echo"

    for number, text in enumerate(["one", "two", "three"]):
        response = api_post(rt, "/v1/workers/w-echo/input", {"kind": "user", "content": text})
        assert response.status_code == 200, response.text
        ack = response.json()["ack"]
        assert ack["worker_ref"] == {"runtime_id": "rt-test", "worker_id": "w-echo"}
        assert ack["status"] == "running"
        assert ack["transcript_sequence"] == 2 * number + 1
        assert isinstance(ack["event_id"], int)
        # Each echo answers on its own; wait for the reply before the next input.
        wait_until(lambda n=number: worker_detail(rt, "w-echo")["transcript_len"] == 2 * n + 2)

    detail = worker_detail(rt, "w-echo")
    assert detail["transcript_len"] == 6 and detail["last_seq"] >= 7

    first = api_get(rt, "/v1/workers/w-echo/transcript", params={"start": 0, "limit": 4}).json()["transcript"]
    assert first["total_items"] == 6 and first["start"] == 0 and first["limit"] == 4
    assert first["next_start"] == 4
    assert [i["sequence"] for i in first["items"]] == [1, 2, 3, 4]
    assert first["items"][0]["role"] == "user" and first["items"][0]["content"] == "one"
    assert first["items"][1] == {
        "sequence": 2,
        "role": "assistant",
        "content": "echo: one",
        "event_id": first["items"][1]["event_id"],
    }
    rest = api_get(rt, "/v1/workers/w-echo/transcript", params={"start": 4, "limit": 4}).json()["transcript"]
    assert [i["content"] for i in rest["items"]] == ["three", "echo: three"]
    assert rest["next_start"] is None
    default_page = api_get(rt, "/v1/workers/w-echo/transcript").json()["transcript"]
    assert len(default_page["items"]) == 6

    stop = api_post(rt, "/v1/workers/w-echo/stop", {"reason": "done"})
    assert stop.status_code == 200
    assert stop.json()["ack"]["status"] == "stopped"
    cancel = api_post(rt, "/v1/workers/w-echo/cancel")
    assert cancel.status_code == 200
    assert cancel.json()["ack"] == {**stop.json()["ack"], "event_id": cancel.json()["ack"]["event_id"]}
    assert cancel.json()["ack"]["status"] == "stopped"

    listed = api_get(rt, "/v1/workers").json()["workers"]
    assert [w["worker_id"] for w in listed] == ["w-echo"] and listed[0]["status"] == "stopped"
    late = api_post(rt, "/v1/workers/w-echo/input", {"kind": "user", "content": "late"})
    assert late.status_code == 409 and error_code(late) == "worker_not_running"

    create_worker(rt)
    summary = runtime_summary(rt)
    assert summary["runtime_id"] == "rt-test" and summary["backend"] == "fs_store"
    assert summary["status"] == "running" and summary["protocol_version"] == "1"
    assert summary["worker_count"] == 2
    assert summary["active_worker_count"] == 1 and summary["stopped_worker_count"] == 1
    assert summary["cancelled_worker_count"] == 0 and summary["event_streams_open"] == 0
    assert summary["limits"] == {"max_transcript_projection_items": 256, "max_input_bytes": 1048576}
    assert {"name": "example-agent", "description": "The example agent of fixtures/agents"} in summary["profiles"]


def test_cancel_ends_a_running_worker_and_stop_after_is_a_no_op(runtime_process: RuntimeProcess) -> None:
    worker = create_worker(runtime_process)
    path = f"/v1/workers/{worker['worker_id']}"
    assert api_post(runtime_process, f"{path}/cancel", {}).json()["ack"]["status"] == "cancelled"
    assert api_post(runtime_process, f"{path}/stop").json()["ack"]["status"] == "cancelled"
    assert runtime_summary(runtime_process)["cancelled_worker_count"] == 1


def test_create_answers_worker_exists_for_a_taken_id(runtime_process: RuntimeProcess) -> None:
    create_worker(runtime_process, worker_id="same")
    again = api_post(runtime_process, "/v1/workers", {**ECHO_CREATE, "worker_id": "same"})
    assert again.status_code == 409 and error_code(again) == "worker_exists"


# --------------------------------------------------------------------------------------------- auth

UNAUTHORIZED_BODY = {"error": {"code": "unauthorized", "message": "authentication required"}}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {DEFAULT_TOKEN}", f"Token {DEFAULT_TOKEN}", "Bearer", f"{DEFAULT_TOKEN}"],
    ids=["missing", "wrong-token", "basic-scheme", "other-scheme", "empty-bearer", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/runtime"), ("POST", "/v1/workers"), ("GET", "/v1/workers/x/events"), ("GET", "/v1/nowhere")],
)
def test_unauthorized_says_nothing_about_why(
    limited_runtime: RuntimeProcess, authorization: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = requests.request(method, limited_runtime.url(path), headers=headers, json=ECHO_CREATE, timeout=10)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED_BODY
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert DEFAULT_TOKEN not in response.text


def test_scheme_is_case_insensitive(limited_runtime: RuntimeProcess) -> None:
    headers = {"Authorization": f"bearer {DEFAULT_TOKEN}"}
    assert requests.get(limited_runtime.url("/v1/runtime"), headers=headers, timeout=10).status_code == 200


def test_unauthorized_create_has_no_effect(limited_runtime: RuntimeProcess) -> None:
    before = runtime_summary(limited_runtime)["worker_count"]
    requests.post(limited_runtime.url("/v1/workers"), json=ECHO_CREATE, timeout=10)
    assert runtime_summary(limited_runtime)["worker_count"] == before


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def running_worker(limited_runtime: RuntimeProcess) -> str:
    worker_id: str = create_worker(limited_runtime, worker_id="table-worker")["worker_id"]
    return worker_id


@pytest.mark.parametrize(
    ("path", "data", "status", "code"),
    [
        ("/v1/workers", b"{not json", 400, "invalid_json"),
        ("/v1/workers", b'{"intent": NaN}', 400, "invalid_json"),
        ("/v1/workers", b"\xff\xfe{}", 400, "invalid_json"),
        ("/v1/workers", b"[" * 4000, 400, "invalid_json"),
        ("/v1/workers", b"[1, 2]", 400, "invalid_request"),
        ("/v1/workers", b'"a string"', 400, "invalid_request"),
        ("/v1/workers", b"", 400, "invalid_request"),
        ("/v1/workers", b'{"profile": {"kind": "runtime_default"}}', 400, "invalid_request"),
        ("/v1/workers", b'{"intent": {"kind": "assistant"}}', 400, "invalid_request"),
        ("/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "named", "value": "nope"}}', 400,
         "invalid_request"),
        ("/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "rm"}}', 400,
         "invalid_request"),
        ("/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "named", "value": " "}}', 400,
         "invalid_request"),
        ("/v1/workers/table-worker/input", b"{oops", 400, "invalid_json"),
        ("/v1/workers/table-worker/input", b'["user", "hi"]', 400, "invalid_request"),
        ("/v1/workers/table-worker/input", b'{"kind": "user"}', 400, "invalid_request"),
        ("/v1/workers/table-worker/input", b'{"kind": "user", "content": "   "}', 400, "invalid_request"),
        ("/v1/workers/table-worker/input", b'{"kind": "robot", "content": "hi"}', 400, "invalid_request"),
        ("/v1/workers/table-worker/input", json.dumps({"content": "x" * 1001}).encode(), 413, "payload_too_large"),
        ("/v1/workers/table-worker/input", json.dumps({"content": "x" * 5000}).encode(), 413, "payload_too_large"),
        ("/v1/workers/table-worker/stop", b"[]", 400, "invalid_request"),
        ("/v1/workers/table-worker/stop", b'{"reason": 5}', 400, "invalid_request"),
        ("/v1/workers/table-worker/cancel", b"{]", 400, "invalid_json"),
        ("/v1/workers/nobody/input", b'{"content": "hi"}', 404, "worker_not_found"),
        ("/v1/workers/nobody/stop", b"", 404, "worker_not_found"),
        ("/v1/workers/nobody/cancel", b"", 404, "worker_not_found"),
    ],
)  # fmt: skip
def test_bad_post_bodies(
    limited_runtime: RuntimeProcess, running_worker: str, path: str, data: bytes, status: int, code: str
) -> None:
    headers = {"Content-Type": "application/json"}
    response = api_post(limited_runtime, path, data=data, headers=headers)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert worker_detail(limited_runtime, running_worker)["status"] == "running"


def test_chunked_body_over_the_limit_is_refused_while_reading(
    limited_runtime: RuntimeProcess, running_worker: str
) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = api_post(limited_runtime, f"/v1/workers/{running_worker}/input", data=body())
    assert response.status_code == 413 and error_code(response) == "payload_too_large"
    transcript = api_get(limited_runtime, f"/v1/workers/{running_worker}/transcript").json()["transcript"]
    assert all(len(item["content"]) < 1000 for item in transcript["items"])


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("limit=257", 400, "limit_too_large"),
        ("limit=99999999999999999999999", 400, "limit_too_large"),
        ("limit=0", 400, "invalid_request"),
        ("start=abc", 400, "invalid_query"),
        ("start=-1", 400, "invalid_query"),
        ("limit=1.5", 400, "invalid_query"),
        ("limit=", 400, "invalid_query"),
        ("limit=%201", 400, "invalid_query"),
        ("limit=1e3", 400, "invalid_query"),
        ("start=1&limit=256", 200, None),
    ],
)
def test_transcript_query_rows(
    limited_runtime: RuntimeProcess, running_worker: str, query: str, status: int, code: str | None
) -> None:
    response = api_get(limited_runtime, f"/v1/workers/{running_worker}/transcript?{query}")
    assert response.status_code == status, response.text
    if code is not None:
        assert error_code(response) == code


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("after=x", {}, "invalid_query"),
        ("after=-3", {}, "invalid_query"),
        ("after=1.0", {}, "invalid_query"),
        ("", {"Last-Event-ID": "abc"}, "invalid_request"),
    ],
)
def test_event_cursor_rows(
    limited_runtime: RuntimeProcess, running_worker: str, query: str, headers: dict[str, str], code: str
) -> None:
    response = api_get(limited_runtime, f"/v1/workers/{running_worker}/events?{query}", headers=headers)
    assert response.status_code == 400 and error_code(response) == code


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/workers/a%2Fb", 400, "invalid_request"),
        ("POST", "/v1/workers/table-worker%2Finput", 400, "invalid_request"),
        ("GET", "/v1/workers/table-worker%2ftranscript", 400, "invalid_request"),
        ("GET", "/v1/workers/..", 400, "invalid_request"),
        ("GET", "/v1/workers/%2E%2E", 400, "invalid_request"),
        ("POST", "/v1/workers/%2E%2E/input", 400, "invalid_request"),
        ("GET", "/v1/workers/../../etc/transcript", 400, "invalid_request"),
        ("GET", "/v1/workers/a%00b", 400, "invalid_request"),
        ("GET", "/v1/workers/a%0Ab/transcript", 400, "invalid_request"),
        ("GET", "/v1/workers/a%20b", 400, "invalid_request"),
        ("GET", "/v1/workers/" + "a" * 121, 400, "invalid_request"),
        ("GET", "/v1/workers/" + "a" * 120, 404, "worker_not_found"),
        ("GET", "/v1/workers/nobody", 404, "worker_not_found"),
        ("GET", "/v1/workers/nobody/transcript", 404, "worker_not_found"),
        ("GET", "/v1/workers/nobody/events", 404, "worker_not_found"),
        ("GET", "/v1/workers/nobody/bogus", 404, "not_found"),
        ("GET", "/v1/workers/", 404, "not_found"),
        ("GET", "/v1/nowhere", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("DELETE", "/v1/workers", 405, "method_not_allowed"),
        ("GET", "/v1/workers/table-worker/input", 405, "method_not_allowed"),
        ("POST", "/v1/runtime", 405, "method_not_allowed"),
    ],
)
def test_path_rows(limited_runtime: RuntimeProcess, running_worker: str, method: str, path: str, status: int,
                   code: str) -> None:  # fmt: skip
    got_status, body = raw_request(limited_runtime, method, path, body=b"{}" if method == "POST" else None)
    assert (got_status, body["error"]["code"]) == (status, code), body


def test_idempotency_key_must_be_well_formed(limited_runtime: RuntimeProcess, running_worker: str) -> None:
    for key in ("has space", "k" * 256, "é"):
        response = api_post(
            limited_runtime,
            f"/v1/workers/{running_worker}/input",
            {"content": "hi"},
            headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")},
        )
        assert response.status_code == 400 and error_code(response) == "invalid_request"


def test_no_id_escapes_the_store(runtime_factory: Any, tmp_path: Path) -> None:
    rt = runtime_factory(tmp_dir=tmp_path / "rt")
    for evil in ("../../evil", "..", "a/b", "/abs", "a\x00b", "x" * 121):
        response = api_post(rt, "/v1/workers", {**ECHO_CREATE, "worker_id": evil})
        assert response.status_code == 400 and error_code(response) == "invalid_request"
    for path in ("/v1/workers/..%2F..%2Fevil/input", "/v1/workers/%2E%2E/input", "/v1/workers/../evil/input"):
        status, _ = raw_request(rt, "POST", path, body=b'{"content": "x"}')
        assert status == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt"]
    assert sorted(p.name for p in (tmp_path / "rt").iterdir()) == ["runtime.toml", "store"]
    assert sorted(p.name for p in rt.store.iterdir()) == ["LOCK", "runtime.json", "workers"]
    assert list((rt.store / "workers").iterdir()) == []


def test_every_error_body_has_the_protocol_shape(limited_runtime: RuntimeProcess) -> None:
    responses = [
        api_get(limited_runtime, "/v1/nowhere"),
        requests.put(limited_runtime.url("/v1/runtime"), headers=limited_runtime.headers(), timeout=10),
        api_post(limited_runtime, "/v1/workers", data=b"{"),
    ]
    for response in responses:
        assert response.headers["content-type"] == "application/json"
        error_code(response)
