"""The remote handle's error mapping (docs/architecture.md §5), one test per row, over ``responses`` mocks and
canned bodies.

Every test checks the error class, code and browser status, how many upstream calls were made, that the
Backend's token went in the Authorization header, and that nothing raised or logged names the runtime's
address or token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from runtimes.client import RemoteRuntimeClient
from runtimes.errors import (
    InvalidRequest,
    RuntimeAuthFailed,
    RuntimeBadResponse,
    RuntimeRejected,
    RuntimeTimeout,
    RuntimeUnreachable,
    RuntimeUnsupported,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.types import StreamReset, WorkerEvent, WorkerSpec

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HOST_MARK = "secret-runtime-host"
BASE_URL = f"http://{HOST_MARK}.invalid:38999"
TOKEN = "tok-SUPERSECRET-7c1e0b9a"
RID = "rt-remote"
WID = "w-0001"
MAX_BODY = 64 * 1024

Op = Callable[[RemoteRuntimeHandle], Any]


def canned(name: str) -> bytes:
    """A canned runtime body from fixtures/responses."""
    return (FIXTURES / "responses" / name).read_bytes()


def sse(name: str) -> bytes:
    """A canned SSE body from fixtures/sse."""
    return (FIXTURES / "sse" / name).read_bytes()


def url(path: str) -> str:
    return BASE_URL + path


# name -> (method, path, call)
OPS: dict[str, tuple[str, str, Op]] = {
    "summary": ("GET", "/v1/runtime", lambda h: h.summary()),
    "capabilities": ("GET", "/v1/runtime", lambda h: h.capabilities()),
    "list": ("GET", "/v1/workers", lambda h: h.list_workers()),
    "create": ("POST", "/v1/workers", lambda h: h.create_worker(WorkerSpec(profile="builtin:echo"))),
    "get": ("GET", f"/v1/workers/{WID}", lambda h: h.get_worker(WID)),
    "input": ("POST", f"/v1/workers/{WID}/input", lambda h: h.send_input(WID, content="hello")),
    "stop": ("POST", f"/v1/workers/{WID}/stop", lambda h: h.stop_worker(WID)),
    "cancel": ("POST", f"/v1/workers/{WID}/cancel", lambda h: h.cancel_worker(WID, reason="user asked")),
    "transcript": ("GET", f"/v1/workers/{WID}/transcript", lambda h: h.transcript(WID, start=0, limit=2)),
    "events": ("GET", f"/v1/workers/{WID}/events", lambda h: list(h.open_events(WID, after=0))),
}


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client() -> Iterator[RemoteRuntimeClient]:
    c = RemoteRuntimeClient(
        runtime_id=RID,
        base_url=BASE_URL,
        token_provider=lambda: TOKEN,
        connect_timeout=0.5,
        read_timeout=1.0,
        max_body_bytes=MAX_BODY,
    )
    yield c
    c.close()


@pytest.fixture
def handle(client: RemoteRuntimeClient, rsps: responses.RequestsMock) -> RemoteRuntimeHandle:
    """A handle that has already verified the runtime's identity (its summary call is forgotten)."""
    verified = RemoteRuntimeHandle(RID, client)
    rsps.add("GET", url("/v1/runtime"), body=canned("runtime_summary.json"), content_type="application/json")
    verified.summary()
    rsps.reset()
    return verified


@pytest.fixture(autouse=True)
def _logs_never_leak(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test: nothing the project logged names the runtime's address or token."""
    caplog.set_level(logging.DEBUG, logger="runtimes")
    yield
    for record in caplog.records:
        if record.name.startswith("runtimes"):
            text = record.getMessage() + repr(record.__dict__)
            assert HOST_MARK not in text
            assert TOKEN not in text


def assert_no_leak(*objects: object) -> None:
    """Neither repr nor str (nor an error's JSON) names the runtime's address or token."""
    for obj in objects:
        texts = [repr(obj), str(obj)]
        if isinstance(obj, YoiError):
            texts.append(json.dumps(obj.to_json()))
        for text in texts:
            assert HOST_MARK not in text, text
            assert TOKEN not in text, text


def assert_calls(rsps: responses.RequestsMock, count: int) -> None:
    """``count`` upstream calls were made, each carrying the Backend's bearer token."""
    assert len(rsps.calls) == count
    for call in rsps.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"


def expect_error(
    rsps: responses.RequestsMock,
    handle: RemoteRuntimeHandle,
    op: str,
    error_class: type[YoiError],
    code: str,
    http_status: int,
    *,
    calls: int = 1,
) -> YoiError:
    """Run ``op``, check the typed error it raises, the call count and the auth header; return the error."""
    with pytest.raises(error_class) as info:
        OPS[op][2](handle)
    error = info.value
    assert type(error) is error_class
    assert error.code == code
    assert error.http_status == http_status
    assert error.runtime_id == RID
    assert_calls(rsps, calls)
    assert_no_leak(error, handle, handle._client)
    return error


def register(
    rsps: responses.RequestsMock,
    op: str,
    *,
    body: bytes | str | Exception = b"",
    status: int = 200,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    auto_length: bool = False,
) -> None:
    method, path, _ = OPS[op]
    rsps.add(
        method,
        url(path),
        body=body,
        status=status,
        content_type=content_type,
        headers=headers,
        auto_calculate_content_length=auto_length,
    )


# --------------------------------------------------------------------------------------------- transport rows

TRANSPORT_ROWS = [
    pytest.param(
        requests.exceptions.ConnectionError(f"HTTPConnectionPool(host='{HOST_MARK}.invalid'): Connection refused"),
        RuntimeUnreachable,
        "runtime_unreachable",
        502,
        id="connection_refused",
    ),
    pytest.param(
        requests.exceptions.ConnectionError(
            f"Failed to resolve '{HOST_MARK}.invalid' (Name or service not known)"
        ),
        RuntimeUnreachable,
        "runtime_unreachable",
        502,
        id="dns_failure",
    ),
    pytest.param(
        requests.exceptions.ChunkedEncodingError(f"Connection broken: reset by peer {BASE_URL}"),
        RuntimeUnreachable,
        "runtime_unreachable",
        502,
        id="connection_reset",
    ),
    pytest.param(
        requests.exceptions.SSLError(f"certificate verify failed for {BASE_URL}"),
        RuntimeUnreachable,
        "runtime_unreachable",
        502,
        id="tls_failure",
    ),
    pytest.param(
        requests.exceptions.ConnectTimeout(f"Connection to {BASE_URL} timed out"),
        RuntimeTimeout,
        "runtime_timeout",
        504,
        id="connect_timeout",
    ),
    pytest.param(
        requests.exceptions.ReadTimeout(f"Read timed out. (read timeout=1.0) {BASE_URL}"),
        RuntimeTimeout,
        "runtime_timeout",
        504,
        id="read_timeout",
    ),
]


@pytest.mark.parametrize("op", ["summary", "input", "events"])
@pytest.mark.parametrize(("exc", "error_class", "code", "http_status"), TRANSPORT_ROWS)
def test_transport_failure_maps_to_typed_error(
    rsps: responses.RequestsMock,
    handle: RemoteRuntimeHandle,
    op: str,
    exc: Exception,
    error_class: type[YoiError],
    code: str,
    http_status: int,
) -> None:
    register(rsps, op, body=exc)
    error = expect_error(rsps, handle, op, error_class, code, http_status)
    assert error.__cause__ is exc  # chained for operators' tracebacks, never in the message


# --------------------------------------------------------------------------------------------- status rows


@pytest.mark.parametrize(
    ("status", "fixture", "op"),
    [
        (401, "error_unauthorized.json", "summary"),
        (401, "error_unauthorized.json", "input"),
        (403, "error_forbidden.json", "create"),
        (403, "error_forbidden.json", "events"),
    ],
)
def test_remote_401_403_maps_to_runtime_auth_failed_never_401(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, status: int, fixture: str, op: str
) -> None:
    register(rsps, op, body=canned(fixture), status=status)
    expect_error(rsps, handle, op, RuntimeAuthFailed, "runtime_auth_failed", 502)


@pytest.mark.parametrize("op", ["get", "input", "stop", "cancel", "transcript", "events"])
def test_remote_404_worker_not_found_maps_to_worker_not_found(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, op: str
) -> None:
    register(rsps, op, body=canned("error_worker_not_found.json"), status=404)
    error = expect_error(rsps, handle, op, WorkerNotFound, "worker_not_found", 404)
    assert error.worker_id == WID


@pytest.mark.parametrize(
    ("status", "fixture", "op"),
    [
        pytest.param(404, "error_route_not_found.json", "transcript", id="404_route_missing_on_worker_route"),
        pytest.param(404, "error_worker_not_found.json", "summary", id="404_on_runtime_route"),
        pytest.param(404, "error_worker_not_found.json", "list", id="404_on_workers_route"),
        pytest.param(404, "", "get", id="404_without_error_body"),
        pytest.param(405, "error_method_not_allowed.json", "cancel", id="405"),
        pytest.param(501, "error_not_implemented.json", "events", id="501"),
    ],
)
def test_remote_missing_route_maps_to_runtime_unsupported(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, status: int, fixture: str, op: str
) -> None:
    register(rsps, op, body=canned(fixture) if fixture else b"Not Found", status=status)
    expect_error(rsps, handle, op, RuntimeUnsupported, "runtime_unsupported", 501)


@pytest.mark.parametrize(
    ("status", "fixture", "op", "upstream_code", "http_status"),
    [
        pytest.param(400, "error_invalid_request.json", "create", "invalid_request", 422, id="400"),
        pytest.param(409, "error_worker_not_running.json", "input", "worker_not_running", 409, id="409"),
        pytest.param(422, "error_unprocessable.json", "stop", "unprocessable", 422, id="422"),
        pytest.param(413, "error_payload_too_large.json", "input", "payload_too_large", 422, id="413"),
        pytest.param(413, "", "input", "payload_too_large", 422, id="413_without_error_body"),
        pytest.param(429, "", "create", "unknown", 422, id="other_4xx_without_error_body"),
    ],
)
def test_remote_refusal_maps_to_runtime_rejected_with_upstream_code(
    rsps: responses.RequestsMock,
    handle: RemoteRuntimeHandle,
    status: int,
    fixture: str,
    op: str,
    upstream_code: str,
    http_status: int,
) -> None:
    register(rsps, op, body=canned(fixture) if fixture else b"<html>nope</html>", status=status)
    error = expect_error(rsps, handle, op, RuntimeRejected, "runtime_rejected", http_status)
    assert isinstance(error, RuntimeRejected)
    assert error.upstream_code == upstream_code
    assert error.to_json()["upstream_code"] == upstream_code
    assert "/etc/yoi" not in error.message  # upstream paths are scrubbed


def test_rejected_detail_is_scrubbed_of_urls(rsps: responses.RequestsMock, handle: RemoteRuntimeHandle) -> None:
    register(rsps, "input", body=canned("error_worker_not_running.json"), status=409)
    error = expect_error(rsps, handle, "input", RuntimeRejected, "runtime_rejected", 409)
    assert "worker is stopped" in error.message
    assert "<url>" in error.message


@pytest.mark.parametrize(
    ("status", "body", "op"),
    [
        pytest.param(500, canned("error_internal.json"), "get", id="500"),
        pytest.param(503, canned("error_unavailable.json"), "input", id="503"),
        pytest.param(502, b"<html>Bad Gateway</html>", "summary", id="502_html"),
    ],
)
def test_remote_5xx_maps_to_runtime_bad_response(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, status: int, body: bytes, op: str
) -> None:
    register(rsps, op, body=body, status=status)
    error = expect_error(rsps, handle, op, RuntimeBadResponse, "runtime_bad_response", 502)
    assert "/srv/yoi" not in error.message


# --------------------------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("body", "op"),
    [
        pytest.param(b"<html>hello</html>", "summary", id="non_json"),
        pytest.param(b"", "stop", id="empty"),
        pytest.param(b'[{"worker": {}}]', "get", id="json_array"),
        pytest.param(b'"ok"', "input", id="json_string"),
        pytest.param(b"[" * 100_000, "list", id="deeply_nested"),
        pytest.param(b'{"worker": ', "create", id="truncated_json"),
    ],
)
def test_non_object_2xx_maps_to_runtime_bad_response(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, body: bytes, op: str
) -> None:
    register(rsps, op, body=body, content_type="text/html" if body.startswith(b"<") else "application/json")
    expect_error(rsps, handle, op, RuntimeBadResponse, "runtime_bad_response", 502)


@pytest.mark.parametrize(
    ("body", "op"),
    [
        pytest.param(canned("runtime_summary_missing_fields.json"), "summary", id="summary_missing_fields"),
        pytest.param(canned("worker_missing_fields.json"), "get", id="worker_missing_fields"),
        pytest.param(canned("worker.json"), "list", id="wrong_envelope"),
        pytest.param(b'{"workers": {"w-0001": {}}}', "list", id="workers_not_a_list"),
        pytest.param(b'{"ack": {"status": 3}}', "input", id="ack_wrong_types"),
        pytest.param(canned("worker_other_runtime.json"), "get", id="worker_of_another_runtime"),
        pytest.param(canned("worker_other_id.json"), "get", id="worker_with_another_id"),
        pytest.param(
            b'{"transcript": {"start": 0, "limit": 2, "total_items": 1,'
            b' "items": [{"sequence": "one", "role": "user", "content": "hi"}]}}',
            "transcript",
            id="transcript_item_wrong_type",
        ),
        pytest.param(
            b'{"workers": [{"worker_id": "../../etc", "status": "running"}]}', "list", id="worker_id_not_a_slug"
        ),
    ],
)
def test_wrong_shape_maps_to_runtime_bad_response(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, body: bytes, op: str
) -> None:
    register(rsps, op, body=body)
    expect_error(rsps, handle, op, RuntimeBadResponse, "runtime_bad_response", 502)


@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "no_content_length"])
def test_oversized_body_maps_to_runtime_bad_response(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, declared: bool
) -> None:
    padding = "x" * (MAX_BODY + 1)
    register(rsps, "list", body=json.dumps({"workers": [], "padding": padding}), auto_length=declared)
    expect_error(rsps, handle, "list", RuntimeBadResponse, "runtime_bad_response", 502)


def test_redirect_maps_to_runtime_bad_response_and_is_not_followed(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    target = f"http://{HOST_MARK}-elsewhere.invalid/v1/runtime"
    register(rsps, "summary", status=302, headers={"Location": target}, body=b"")
    rsps.add("GET", target, body=canned("runtime_summary.json"), content_type="application/json")
    expect_error(rsps, handle, "summary", RuntimeBadResponse, "runtime_bad_response", 502, calls=1)
    assert rsps.calls[0].request.url == url("/v1/runtime")


def test_identity_mismatch_maps_to_runtime_bad_response(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register(rsps, "summary", body=canned("runtime_summary_other_identity.json"))
    error = expect_error(rsps, handle, "summary", RuntimeBadResponse, "runtime_bad_response", 502)
    assert "identity" in error.message
    assert "rt-impostor" not in error.message


def test_identity_mismatch_also_fails_capabilities(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register(rsps, "capabilities", body=canned("runtime_summary_other_identity.json"))
    expect_error(rsps, handle, "capabilities", RuntimeBadResponse, "runtime_bad_response", 502)


def test_commands_wait_for_the_runtime_to_prove_its_identity(
    rsps: responses.RequestsMock, client: RemoteRuntimeClient
) -> None:
    fresh = RemoteRuntimeHandle(RID, client)
    rsps.add("GET", url("/v1/runtime"), body=canned("runtime_summary_other_identity.json"))
    rsps.add("POST", url(f"/v1/workers/{WID}/input"), body=canned("ack_input.json"))
    with pytest.raises(RuntimeBadResponse):
        fresh.send_input(WID, content="hello")
    assert [call.request.url for call in rsps.calls] == [url("/v1/runtime")]  # the command was never sent


def test_identity_is_checked_again_after_a_transport_failure(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    rsps.add("GET", url("/v1/workers"), body=requests.exceptions.ConnectionError("down"))
    with pytest.raises(RuntimeUnreachable):
        handle.list_workers()
    rsps.reset()
    rsps.add("GET", url("/v1/runtime"), body=canned("runtime_summary_other_identity.json"))
    with pytest.raises(RuntimeBadResponse):
        handle.list_workers()
    assert [call.request.url for call in rsps.calls] == [url("/v1/runtime")]


# --------------------------------------------------------------------------------------------- no call at all


def test_token_provider_failure_makes_no_http_call(rsps: responses.RequestsMock) -> None:
    def unresolvable() -> str:
        raise RuntimeAuthFailed(runtime_id=RID)

    register(rsps, "summary", body=canned("runtime_summary.json"))
    client = RemoteRuntimeClient(runtime_id=RID, base_url=BASE_URL, token_provider=unresolvable)
    handle = RemoteRuntimeHandle(RID, client)
    for op in ("summary", "input", "events"):
        with pytest.raises(RuntimeAuthFailed) as info:
            OPS[op][2](handle)
        assert info.value.http_status == 502
        assert_no_leak(info.value)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", f"{TOKEN}\r\nX-Evil: 1"])
def test_unusable_token_makes_no_http_call(rsps: responses.RequestsMock, token: str) -> None:
    register(rsps, "summary", body=canned("runtime_summary.json"))
    handle = RemoteRuntimeHandle(
        RID, RemoteRuntimeClient(runtime_id=RID, base_url=BASE_URL, token_provider=lambda: token)
    )
    with pytest.raises(RuntimeAuthFailed) as info:
        handle.summary()
    assert_no_leak(info.value)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("worker_id", ["", "../v1/runtime", "a/b", "w 1", "w?x=1", "x" * 121, "w%2F1"])
def test_invalid_worker_id_is_invalid_request_without_http_call(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, worker_id: str
) -> None:
    for call in (
        lambda: handle.get_worker(worker_id),
        lambda: handle.send_input(worker_id, content="x"),
        lambda: handle.transcript(worker_id, start=0, limit=1),
        lambda: handle.open_events(worker_id, after=None),
    ):
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.http_status == 400
        assert info.value.fields is not None and "worker_id" in info.value.fields
    assert len(rsps.calls) == 0


# --------------------------------------------------------------------------------------------- successes


def test_full_summary_is_parsed(rsps: responses.RequestsMock, handle: RemoteRuntimeHandle) -> None:
    register(rsps, "summary", body=canned("runtime_summary.json"))
    summary = handle.summary()
    assert_calls(rsps, 1)
    assert summary.runtime_id == RID
    assert (summary.status, summary.worker_count, summary.event_streams_open) == ("running", 3, 2)
    caps = summary.capabilities
    assert caps.protocol_version == "1"
    assert caps.backend == "fs_store"
    assert caps.profiles is not None
    assert [p.name for p in caps.profiles] == ["builtin:echo", "builtin:burst", "example-agent"]
    assert (caps.default_profile, caps.max_transcript_items, caps.max_input_bytes) == (
        "builtin:echo",
        256,
        1048576,
    )
    assert rsps.calls[0].request.headers["Accept"] == "application/json"
    assert "Idempotency-Key" not in rsps.calls[0].request.headers


def test_older_short_summary_is_accepted_as_unknown(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register(rsps, "capabilities", body=canned("runtime_summary_short.json"))
    caps = handle.capabilities()
    assert_calls(rsps, 1)
    assert caps.profiles is None
    assert caps.max_transcript_items is None
    assert caps.max_input_bytes is None
    assert caps.default_profile is None
    assert caps.protocol_version == "1"
    rsps.replace("GET", url("/v1/runtime"), body=canned("runtime_summary_short.json"))
    assert handle.summary().event_streams_open is None


@pytest.mark.parametrize("status", [200, 201])
def test_create_accepts_200_and_201(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, status: int
) -> None:
    register(rsps, "create", body=canned("worker_created.json"), status=status)
    worker = handle.create_worker(WorkerSpec(profile="builtin:echo", initial_input="hi"))
    assert_calls(rsps, 1)
    assert (worker.runtime_id, worker.worker_id, worker.status, worker.last_seq) == (RID, "w-new", "running", 1)
    sent = json.loads(rsps.calls[0].request.body or b"")
    assert sent == {
        "intent": {"kind": "assistant"},
        "profile": {"kind": "builtin", "value": "builtin:echo"},
        "initial_input": "hi",
    }


def test_worker_list_detail_ack_and_transcript_are_parsed(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register(rsps, "list", body=canned("workers.json"))
    register(rsps, "get", body=canned("worker.json"))
    register(rsps, "input", body=canned("ack_input_str_event_id.json"), status=202)
    register(rsps, "stop", body=canned("ack_stop.json"))
    register(rsps, "cancel", body=canned("ack_cancel.json"))
    register(rsps, "transcript", body=canned("transcript.json"))

    workers = handle.list_workers()
    assert [(w.worker_id, w.status, w.profile) for w in workers] == [
        ("w-0001", "running", "builtin:echo"),
        ("w-0002", "stopped", "example-agent"),
    ]
    assert all(w.runtime_id == RID for w in workers)
    detail = handle.get_worker(WID)
    assert (detail.transcript_len, detail.last_seq, detail.created_at) == (2, 7, 1760000000.5)
    ack = handle.send_input(WID, content="hello", kind="system")
    assert (ack.status, ack.transcript_sequence, ack.event_id) == ("running", 3, "evt-8")
    assert handle.stop_worker(WID).status == "stopped"
    assert handle.cancel_worker(WID, reason="user asked").status == "cancelled"
    page = handle.transcript(WID, start=0, limit=2)
    assert (page.total_items, page.next_start, len(page.items)) == (3, 2, 2)
    assert page.items[1].content == "echo: hello"
    assert_calls(rsps, 6)
    bodies = [json.loads(c.request.body) if c.request.body else None for c in rsps.calls]
    assert bodies[2] == {"kind": "system", "content": "hello"}
    assert bodies[3] == {}
    assert bodies[4] == {"reason": "user asked"}
    transcript_url = rsps.calls[5].request.url or ""
    assert "start=0" in transcript_url and "limit=2" in transcript_url


def test_idempotency_key_is_sent_on_every_post(rsps: responses.RequestsMock, handle: RemoteRuntimeHandle) -> None:
    register(rsps, "create", body=canned("worker_created.json"))
    register(rsps, "input", body=canned("ack_input.json"))
    register(rsps, "stop", body=canned("ack_stop.json"))
    handle.create_worker(WorkerSpec())
    handle.create_worker(WorkerSpec())
    handle.send_input(WID, content="x")
    handle.stop_worker(WID)
    assert_calls(rsps, 4)
    keys = [c.request.headers["Idempotency-Key"] for c in rsps.calls]
    assert len(set(keys)) == 4
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)


def test_callers_idempotency_key_is_used(rsps: responses.RequestsMock, handle: RemoteRuntimeHandle) -> None:
    register(rsps, "create", body=canned("worker_created.json"))
    register(rsps, "input", body=canned("ack_input.json"))
    register(rsps, "cancel", body=canned("ack_cancel.json"))
    handle.create_worker(WorkerSpec(), idempotency_key="create-key-1")
    handle.send_input(WID, content="x", idempotency_key="input-key-1")
    handle.cancel_worker(WID, idempotency_key="cancel-key-1")
    assert_calls(rsps, 3)
    assert [c.request.headers["Idempotency-Key"] for c in rsps.calls] == [
        "create-key-1",
        "input-key-1",
        "cancel-key-1",
    ]


def test_worker_id_is_percent_encoded_in_the_path(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    rsps.add(
        "GET", url("/v1/workers/w%3Aa_b-1"), body=b'{"worker": {"worker_id": "w:a_b-1", "status": "running"}}'
    )
    worker = handle.get_worker("w:a_b-1")
    assert worker.worker_id == "w:a_b-1"
    assert_calls(rsps, 1)


# --------------------------------------------------------------------------------------------- event streams


def register_sse(rsps: responses.RequestsMock, body: bytes, *, content_type: str = "text/event-stream") -> None:
    rsps.add("GET", url(f"/v1/workers/{WID}/events"), body=body, content_type=content_type)


def test_event_stream_yields_worker_events_until_worker_exited(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register_sse(rsps, sse("echo_worker.txt"))
    stream = handle.open_events(WID, after=0)
    assert_no_leak(stream, stream._stream)
    items = list(stream)
    assert all(isinstance(i, WorkerEvent) for i in items)
    events = [i for i in items if isinstance(i, WorkerEvent)]
    assert [e.seq for e in events] == list(range(1, 8))
    assert events[-1].event == "worker_exited"
    assert events[1].data == {"content": "hello", "transcript_sequence": 1, "kind": "user"}
    assert all((e.runtime_id, e.worker_id) == (RID, WID) for e in events)
    assert_calls(rsps, 1)
    headers = rsps.calls[0].request.headers
    assert headers["Last-Event-ID"] == "0"
    assert headers["Accept"] == "text/event-stream"


def test_event_stream_without_cursor_sends_no_last_event_id(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register_sse(rsps, sse("echo_worker.txt"))
    assert len(list(handle.open_events(WID, after=None))) == 7
    assert "Last-Event-ID" not in rsps.calls[0].request.headers


def test_event_stream_reset_is_a_stream_reset(rsps: responses.RequestsMock, handle: RemoteRuntimeHandle) -> None:
    register_sse(rsps, sse("history_expired.txt"))
    items = list(handle.open_events(WID, after=3))
    assert items[0] == StreamReset(reason="history_expired", earliest_seq=40)
    assert [i.seq for i in items[1:] if isinstance(i, WorkerEvent)] == [40, 41]
    assert rsps.calls[0].request.headers["Last-Event-ID"] == "3"


@pytest.mark.parametrize(
    ("fixture", "error_class", "code", "good_events"),
    [
        pytest.param("bad_json.txt", RuntimeBadResponse, "runtime_bad_response", 1, id="bad_json"),
        pytest.param(
            "other_worker.txt", RuntimeBadResponse, "runtime_bad_response", 0, id="event_of_other_worker"
        ),
        pytest.param("cut_mid_event.txt", RuntimeUnreachable, "runtime_unreachable", 1, id="cut_mid_event"),
        pytest.param("ended_early.txt", RuntimeUnreachable, "runtime_unreachable", 2, id="ended_before_exit"),
    ],
)
def test_broken_event_stream_raises_typed_error_after_good_events(
    rsps: responses.RequestsMock,
    handle: RemoteRuntimeHandle,
    fixture: str,
    error_class: type[YoiError],
    code: str,
    good_events: int,
) -> None:
    register_sse(rsps, sse(fixture))
    seen: list[WorkerEvent | StreamReset] = []
    with pytest.raises(error_class) as info:
        seen.extend(handle.open_events(WID, after=0))
    assert len(seen) == good_events
    assert info.value.code == code
    assert info.value.worker_id == WID
    assert_calls(rsps, 1)
    assert_no_leak(info.value)


def test_event_stream_with_wrong_content_type_is_bad_response(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register_sse(rsps, canned("worker.json"), content_type="application/json")
    expect_error(rsps, handle, "events", RuntimeBadResponse, "runtime_bad_response", 502)


def test_event_stream_open_maps_refusal_like_commands(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register(rsps, "events", body=canned("error_invalid_request.json"), status=400)
    error = expect_error(rsps, handle, "events", RuntimeRejected, "runtime_rejected", 422)
    assert isinstance(error, RuntimeRejected) and error.upstream_code == "invalid_request"


def test_event_stream_rejects_negative_cursor_without_http_call(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    with pytest.raises(InvalidRequest):
        handle.open_events(WID, after=-1)
    assert len(rsps.calls) == 0


# --------------------------------------------------------------------------------------------- redaction


def test_repr_and_str_show_ids_only(client: RemoteRuntimeClient, handle: RemoteRuntimeHandle) -> None:
    assert repr(client) == f"RemoteRuntimeClient(runtime_id='{RID}', base_url=<backend-private>, token=<redacted>)"
    assert str(client) == repr(client)
    assert repr(handle) == f"RemoteRuntimeHandle(runtime_id='{RID}')"
    assert_no_leak(client, handle, [client, handle], {"handle": handle, "client": client}, (handle,))
    assert HOST_MARK not in repr(vars(handle))
