"""Bad browser input over real HTTP to daphne: every case is a JSON 4xx envelope, never a 500, never HTML.

Paths are sent byte for byte (``http.client``), so ``..``, ``%2e%2e`` and ``%2F`` reach the server exactly as
a hostile client would send them. Bad ids, bad bodies and bad queries are ``400 invalid_request`` with
``fields``, and no runtime is contacted: the remote runtime ``ok`` (a fake that records every request)
must see nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.faults.conftest import FAKE_WORKER_ID, FaultSite

ID_MESSAGE = "must be 1-120 characters of A-Z a-z 0-9 _ : -"
MAX_INPUT_BYTES = 1024 * 1024
BODY_CAP = 2_621_440  # YOI_MAX_REQUEST_BYTES' default (2.5 MiB, Django's DATA_UPLOAD_MAX_MEMORY_SIZE default)

# Id segments as they appear in the raw path (percent-encoded where a client would encode them).
BAD_ID_SEGMENTS = {
    "dotdot": "..",
    "dot": ".",
    "encoded-dotdot": "%2e%2e",
    "encoded-dotdot-upper": "%2E%2E",
    "dotted": "a.b",
    "encoded-slash": "%2F",
    "split-by-encoded-slash": "a%2Fb",
    "traversal-encoded": "..%2F..%2Fetc",
    "traversal-backslash": "..%5C..%5Cetc",
    "overlong-utf8-dots": "%C0%AE%C0%AE",
    "latin-accent": "caf%C3%A9",
    "rtl-override": "w%E2%80%AE1",
    "emoji": "%F0%9F%98%80",
    "fullwidth-letter": "%EF%BC%A1",
    "nul": "%00",
    "newline": "w%0A1",
    "crlf": "w%0D%0A1",
    "escape": "%1B",
    "delete": "%7F",
    "next-line": "%C2%85",
    "invalid-utf8": "%FF",
    "bad-percent": "%ZZ",
    "space": "a%20b",
    "tilde": "~",
    "too-long": "a" * 121,
}

RUNTIME_ID_ROUTES = [
    ("GET", "/api/v1/runtimes/{id}/", None),
    ("GET", "/api/v1/runtimes/{id}/workers/", None),
    ("POST", "/api/v1/runtimes/{id}/workers/", {}),
    ("GET", f"/api/v1/runtimes/{{id}}/workers/{FAKE_WORKER_ID}/", None),
    ("POST", f"/api/v1/runtimes/{{id}}/workers/{FAKE_WORKER_ID}/input/", {"content": "x"}),
    ("GET", f"/api/v1/runtimes/{{id}}/workers/{FAKE_WORKER_ID}/transcript/", None),
]
WORKER_ID_ROUTES = [
    ("GET", "/api/v1/runtimes/ok/workers/{id}/", None),
    ("POST", "/api/v1/runtimes/ok/workers/{id}/input/", {"content": "x"}),
    ("POST", "/api/v1/runtimes/ok/workers/{id}/stop/", {}),
    ("POST", "/api/v1/runtimes/ok/workers/{id}/cancel/", {"reason": "r"}),
    ("GET", "/api/v1/runtimes/ok/workers/{id}/transcript/", None),
]


def encode(body: Any) -> bytes:
    """JSON as a browser sends it: UTF-8 text; ``\\u`` escapes only for what UTF-8 cannot carry (surrogates)."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode()


def call(
    site: FaultSite, method: str, path: str, body: Any = None, *, raw: bytes | None = None, **kw: Any
) -> tuple[int, dict[str, Any]]:
    """Send one request; the status and the parsed JSON body (failing on HTML or any non-JSON answer)."""
    data = raw if raw is not None else (None if body is None else encode(body))
    status, headers, content = site.backend.raw(method, path, data, **kw)
    assert status != 500 and status < 500, (status, content[:500])
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, content[:300])
    parsed = json.loads(content)
    assert isinstance(parsed, dict)
    return status, parsed


def assert_invalid(status: int, body: dict[str, Any], *, field: str) -> dict[str, Any]:
    """A 400 invalid_request whose ``fields`` names ``field``."""
    assert status == 400, body
    error = body["error"]
    assert error["code"] == "invalid_request", error
    assert error["retryable"] is False
    assert isinstance(error.get("fields"), dict) and field in error["fields"], error
    assert all(isinstance(m, str) for messages in error["fields"].values() for m in messages)
    return error


@pytest.fixture
def untouched(fault_site: FaultSite) -> Iterator[None]:
    """Asserts after the test that the remote runtime ``ok`` got no request at all."""
    before = len(fault_site.fakes.requests_to("ok"))
    yield
    assert fault_site.fakes.requests_to("ok")[before:] == []


# ------------------------------------------------------------------------------------------------ ids


@pytest.mark.parametrize("segment", BAD_ID_SEGMENTS.values(), ids=BAD_ID_SEGMENTS.keys())
def test_bad_runtime_id_is_400_with_fields_on_every_route(
    fault_site: FaultSite, untouched: None, segment: str
) -> None:
    for method, template, body in RUNTIME_ID_ROUTES:
        status, answer = call(fault_site, method, template.format(id=segment), body)
        error = assert_invalid(status, answer, field="runtime_id")
        assert error["fields"]["runtime_id"] == [ID_MESSAGE]
        assert "runtime_id" not in error and "worker_id" not in error  # a bad id is never echoed


@pytest.mark.parametrize("segment", BAD_ID_SEGMENTS.values(), ids=BAD_ID_SEGMENTS.keys())
def test_bad_worker_id_is_400_with_fields_and_never_reaches_the_runtime(
    fault_site: FaultSite, untouched: None, segment: str
) -> None:
    for method, template, body in WORKER_ID_ROUTES:
        status, answer = call(fault_site, method, template.format(id=segment), body)
        error = assert_invalid(status, answer, field="worker_id")
        assert error["fields"]["worker_id"] == [ID_MESSAGE]
        assert "runtime_id" not in error and "worker_id" not in error


def test_empty_ids_are_400(fault_site: FaultSite, untouched: None) -> None:
    status, answer = call(fault_site, "GET", "/api/v1/runtimes//workers/")
    assert_invalid(status, answer, field="runtime_id")
    status, answer = call(fault_site, "POST", "/api/v1/runtimes/ok/workers//input/", {"content": "x"})
    assert_invalid(status, answer, field="worker_id")
    status, answer = call(fault_site, "GET", "/api/v1/runtimes/ok/workers//")
    assert_invalid(status, answer, field="worker_id")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        # The route cannot match at all: a JSON 404, not a 400 (the ids it does have are fine).
        ("GET", "/api/v1/runtimes/ok/workers/w1/../../../workers/", 404, "not_found"),
        ("GET", "/api/v1/runtimes/ok/workers/w1/input/extra/", 404, "not_found"),
        ("GET", "/api/v1/../../etc/passwd", 404, "not_found"),
        # A valid id the user cannot see / that does not exist.
        ("GET", "/api/v1/runtimes/no-such-runtime/workers/", 404, "runtime_not_found"),
        # The method is checked before the ids: GET on a POST-only route is a 405 whatever the id.
        ("GET", "/api/v1/runtimes/ok/workers/%2e%2e/input/", 405, "method_not_allowed"),
        ("POST", "/api/v1/runtimes/caf%C3%A9/", 405, "method_not_allowed"),
    ],
)
def test_unroutable_paths_have_their_exact_answer(
    fault_site: FaultSite, untouched: None, method: str, path: str, status: int, code: str
) -> None:
    got, answer = call(fault_site, method, path, {} if method == "POST" else None)
    assert (got, answer["error"]["code"]) == (status, code), answer


@pytest.mark.parametrize("segment", ["%2e%2e", "caf%C3%A9", "w%00", "a" * 121])
def test_bad_id_on_the_event_socket_is_an_error_frame_and_close_4400(fault_site: FaultSite, segment: str) -> None:
    backend = fault_site.backend
    url = f"ws://127.0.0.1:{backend.port}/ws/runtimes/ok/workers/{segment}/events/"
    with ws_connect(
        url,
        origin=backend.origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
        additional_headers={"Cookie": f"sessionid={backend.session_key}"},
        open_timeout=10,
        close_timeout=5,
    ) as ws:
        frame = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4400
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "invalid_request"
    assert "worker_id" in frame["error"]["fields"]


# ------------------------------------------------------------------------------------------------ bodies

INPUT_PATH = f"/api/v1/runtimes/ok/workers/{FAKE_WORKER_ID}/input/"
STOP_PATH = f"/api/v1/runtimes/ok/workers/{FAKE_WORKER_ID}/stop/"
CANCEL_PATH = f"/api/v1/runtimes/ok/workers/{FAKE_WORKER_ID}/cancel/"
CREATE_PATH = "/api/v1/runtimes/ok/workers/"
TOO_BIG_TEXT = "x" * (MAX_INPUT_BYTES + 1)
TOO_BIG_UTF8 = "é" * (MAX_INPUT_BYTES // 2 + 1)  # under the limit in characters, over it in UTF-8 bytes

CREATE_CASES: list[tuple[str, Any]] = [
    ("profile", 5),
    ("profile", True),
    ("profile", []),
    ("profile", {}),
    ("profile", ""),
    ("profile", "   "),
    ("profile", "x" * 201),
    ("profile", "\ud800"),
    ("intent", "assistant"),
    ("intent", 5),
    ("intent", []),
    ("intent", None),
    ("intent", {}),
    ("intent", {"kind": "bogus"}),
    ("intent", {"kind": 5}),
    ("initial_input", 5),
    ("initial_input", False),
    ("initial_input", []),
    ("initial_input", {}),
    ("initial_input", ""),
    ("initial_input", " \n\t "),
    ("initial_input", TOO_BIG_TEXT),
    ("initial_input", TOO_BIG_UTF8),
    ("initial_input", "a\u0000b"),
    ("initial_input", "\udfff"),
    ("worker_id", 5),
    ("worker_id", None),
    ("worker_id", ""),
    ("worker_id", "../x"),
    ("worker_id", "a/b"),
    ("worker_id", "%2e%2e"),
    ("worker_id", "café"),
    ("worker_id", "w\u202e1"),
    ("worker_id", "w\u0000"),
    ("worker_id", "w\n"),
    ("worker_id", "x" * 121),
    ("options", "x"),
    ("options", 5),
    ("options", []),
]
INPUT_CASES: list[tuple[str, Any]] = [
    ("content", None),
    ("content", 5),
    ("content", 1.5),
    ("content", True),
    ("content", []),
    ("content", {}),
    ("content", ""),
    ("content", "   "),
    ("content", TOO_BIG_TEXT),
    ("content", TOO_BIG_UTF8),
    ("content", "\ud800"),
    ("content", "a\u0000b"),
    ("kind", "admin"),
    ("kind", 5),
    ("kind", None),
    ("kind", []),
    ("kind", "USER"),
]
END_CASES: list[tuple[str, Any]] = [
    ("reason", 5),
    ("reason", True),
    ("reason", []),
    ("reason", {}),
    ("reason", "x" * 501),
    ("reason", "\ud800"),
]


def _case_id(case: tuple[str, Any]) -> str:
    field, value = case
    text = repr(value)
    return f"{field}={text[:20]}{'...' if len(text) > 20 else ''}"


@pytest.mark.parametrize("case", CREATE_CASES, ids=[_case_id(c) for c in CREATE_CASES])
def test_create_with_a_bad_field_is_400_with_that_field(
    fault_site: FaultSite, untouched: None, case: tuple[str, Any]
) -> None:
    field, value = case
    status, answer = call(fault_site, "POST", CREATE_PATH, {field: value})
    assert_invalid(status, answer, field=field)


@pytest.mark.parametrize("case", INPUT_CASES, ids=[_case_id(c) for c in INPUT_CASES])
def test_input_with_a_bad_field_is_400_with_that_field(
    fault_site: FaultSite, untouched: None, case: tuple[str, Any]
) -> None:
    field, value = case
    body = {"content": "hello", field: value}
    status, answer = call(fault_site, "POST", INPUT_PATH, body)
    assert_invalid(status, answer, field=field)


def test_input_without_content_is_400(fault_site: FaultSite, untouched: None) -> None:
    status, answer = call(fault_site, "POST", INPUT_PATH, {"kind": "user"})
    assert_invalid(status, answer, field="content")


@pytest.mark.parametrize("path", [STOP_PATH, CANCEL_PATH], ids=["stop", "cancel"])
@pytest.mark.parametrize("case", END_CASES, ids=[_case_id(c) for c in END_CASES])
def test_stop_and_cancel_with_a_bad_reason_are_400(
    fault_site: FaultSite, untouched: None, path: str, case: tuple[str, Any]
) -> None:
    field, value = case
    status, answer = call(fault_site, "POST", path, {field: value})
    assert_invalid(status, answer, field=field)


def _nested(depth: int) -> bytes:
    return b'{"options": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


WHOLE_BODY_CASES = {
    "invalid-json": b"{not json",
    "truncated": b'{"content": "x"',
    "trailing-garbage": b'{"content": "x"} x',
    "nan": b'{"content": NaN}',
    "infinity": b'{"options": {"x": Infinity}}',
    "huge-int": b'{"options": {"x": 1' + b"0" * 5000 + b"}}",
    "array": b"[]",
    "string": b'"content"',
    "number": b"5",
    "true": b"true",
    "null": b"null",
    "not-utf8": b'{"content": "\xff\xfe"}',
    "utf16-bom": '{"content": "x"}'.encode("utf-16"),
    "deep-array-100000": b"[" * 100_000,
    "deep-object-50000": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nested-150-in-options": _nested(150),
    "nested-990-in-options": _nested(990),
}


@pytest.mark.parametrize("path", [CREATE_PATH, INPUT_PATH, STOP_PATH], ids=["create", "input", "stop"])
@pytest.mark.parametrize("raw", WHOLE_BODY_CASES.values(), ids=WHOLE_BODY_CASES.keys())
def test_malformed_or_non_object_body_is_400_non_field_errors(
    fault_site: FaultSite, untouched: None, path: str, raw: bytes
) -> None:
    status, answer = call(fault_site, "POST", path, raw=raw)
    error = assert_invalid(status, answer, field="non_field_errors")
    assert "Traceback" not in json.dumps(error)


def test_nesting_within_the_limit_is_accepted(fault_site: FaultSite) -> None:
    status, answer = call(fault_site, "POST", CREATE_PATH, raw=_nested(50))
    assert status == 201, answer


@pytest.mark.parametrize("path", [CREATE_PATH, INPUT_PATH, STOP_PATH], ids=["create", "input", "stop"])
def test_body_over_the_upload_cap_is_413(fault_site: FaultSite, untouched: None, path: str) -> None:
    raw = json.dumps({"content": "x" * (BODY_CAP + 10), "initial_input": "x", "reason": "x"}).encode()
    status, answer = call(fault_site, "POST", path, raw=raw)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large"), answer
    assert answer["error"]["retryable"] is False


MULTIPART_BODY = b'--xyz\r\nContent-Disposition: form-data; name="content"\r\n\r\nhello\r\n--xyz--\r\n'


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", b"content=x"),
        ("application/x-www-form-urlencoded", b"content=x"),
        ("multipart/form-data; boundary=xyz", MULTIPART_BODY),
        ("application/xml", b"<content>x</content>"),
    ],
)
def test_a_body_that_is_not_json_is_415(
    fault_site: FaultSite, untouched: None, content_type: str, raw: bytes
) -> None:
    status, answer = call(fault_site, "POST", INPUT_PATH, raw=raw, headers={"Content-Type": content_type})
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")


def test_malformed_multipart_is_refused_by_the_server_before_django(
    fault_site: FaultSite, untouched: None
) -> None:
    """Twisted (under daphne) parses multipart bodies itself and answers a malformed one with an empty 400.

    Not the §5 envelope — Django never sees the request — but a 400, never a 500 or a page.
    """
    status, _, content = fault_site.backend.raw(
        "POST", INPUT_PATH, b"content=x", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert (status, content) == (400, b"")
    assert fault_site.backend.alive()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-5", "limit"),
        ("limit=abc", "limit"),
        ("limit=%00", "limit"),
        ("limit=1e2", "limit"),
        ("start=-1", "start"),
        ("start=x", "start"),
        ("start=9007199254740992", "start"),
        ("start=99999999999999999999999999", "start"),
    ],
)
def test_bad_transcript_query_is_400_with_fields(
    fault_site: FaultSite, untouched: None, query: str, field: str
) -> None:
    status, answer = call(fault_site, "GET", f"/api/v1/runtimes/ok/workers/{FAKE_WORKER_ID}/transcript/?{query}")
    assert_invalid(status, answer, field=field)


def test_the_backend_logged_no_server_error(fault_site: FaultSite) -> None:
    """Run last in this module: none of the input above made the Backend log an unexpected exception."""
    log = fault_site.backend.log_text(2_000_000)
    assert "workers.api.unexpected_error" not in log
    assert "Internal Server Error" not in log
    assert "Traceback" not in log
