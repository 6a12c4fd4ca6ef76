"""BodyPolicy: what the server refuses from a request's headers alone (the process-level test of the same is
tests/faults/test_limits.py)."""

from __future__ import annotations

import json

import pytest

from yoi_backend.bodylimits import BodyPolicy, has_session_cookie, request_path

POLICY = BodyPolicy(
    max_body=1000, max_login_body=100, login_paths=frozenset({"/login/", "/admin/login/"}), session_cookie=b"sid"
)


def check(target: bytes, *, length: int | None = None, chunked: bool = False, credentials: bool = True) -> object:
    refusal, cap = POLICY.check_headers(target=target, length=length, chunked=chunked, credentials=credentials)
    return (refusal.status if refusal else None, cap)


@pytest.mark.parametrize(
    ("target", "length", "chunked", "credentials", "expected"),
    [
        (b"/api/v1/runtimes/x/workers/", 1000, False, True, (None, 1000)),  # at the cap
        (b"/api/v1/runtimes/x/workers/", 1001, False, True, (413, 0)),  # over it
        (b"/api/v1/runtimes/x/workers/", None, True, True, (None, 1000)),  # chunked: counted as it arrives
        (b"/api/v1/runtimes/x/workers/", 10, False, False, (401, 0)),  # a body without credentials
        (b"/api/v1/runtimes/x/workers/", None, True, False, (401, 0)),
        (b"/api/v1/runtimes/x/workers/", 10**9, False, False, (413, 0)),  # over the cap first
        (b"/api/v1/runtimes/", 0, False, False, (None, 0)),  # no body: the API answers 401 itself
        (b"/api/v1/runtimes/", None, False, False, (None, 0)),
        (b"/admin/runtimes/runtime/add/", 10, False, False, (403, 0)),
        (b"/login/", 100, False, False, (None, 100)),  # the login form takes a small anonymous body
        (b"/login/?next=/x", 101, False, False, (413, 0)),
        (b"/admin/login/", None, True, False, (None, 100)),
        (b"/log%69n/", 50, False, False, (None, 100)),  # decoded like the router decodes it
        (b"/login/", 500, False, True, (None, 1000)),  # with a session: the ordinary cap
        (b"http://host:8000/login/", 50, False, False, (None, 100)),  # absolute form
        (b"/loginx/", 50, False, False, (403, 0)),
    ],
)
def test_check_headers(
    target: bytes, length: int | None, chunked: bool, credentials: bool, expected: tuple[object, int]
) -> None:
    assert check(target, length=length, chunked=chunked, credentials=credentials) == expected


def test_api_refusals_are_the_error_envelope_and_close_the_connection() -> None:
    refusal, _ = POLICY.check_headers(target=b"/api/v1/x/", length=5000, chunked=False, credentials=True)
    assert refusal is not None
    raw = refusal.to_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 413 Payload Too Large"
    assert "Content-Type: application/json" in lines and f"Content-Length: {len(body)}" in lines
    assert "Connection: close" in lines and "X-Content-Type-Options: nosniff" in lines
    assert any(line.startswith("Content-Security-Policy: default-src 'none'") for line in lines)
    assert json.loads(body) == {
        "error": {"code": "payload_too_large", "message": "the request body is too large", "retryable": False}
    }
    anonymous, _ = POLICY.check_headers(target=b"/api/v1/x/", length=5, chunked=False, credentials=False)
    assert anonymous is not None and b"WWW-Authenticate: Token" in anonymous.to_bytes()
    assert json.loads(anonymous.body)["error"]["code"] == "not_authenticated"


def test_other_refusals_are_plain_text() -> None:
    refusal, _ = POLICY.check_headers(target=b"/login/", length=5000, chunked=False, credentials=False)
    assert refusal is not None and refusal.content_type.startswith("text/plain")
    assert refusal.body.startswith(b"413 Payload Too Large")


def test_session_cookie_and_paths() -> None:
    assert has_session_cookie([b"csrftoken=a; sid=abc"], b"sid")
    assert not has_session_cookie([b"csrftoken=a; sid="], b"sid")
    assert not has_session_cookie([b"xsid=abc", b"sidx=1"], b"sid")
    assert request_path(b"/a%20b/?q=1") == "/a b/"
    assert request_path(b"https://h/p?x") == "/p"
    assert request_path(b"*") == "*"  # OPTIONS *: no path a login form has


@pytest.mark.django_db
def test_policy_from_settings_knows_both_login_forms(settings: object) -> None:
    policy = BodyPolicy.from_settings()
    assert policy.login_paths == {"/login/", "/admin/login/"}
    assert (policy.max_body, policy.max_login_body, policy.session_cookie) == (2_621_440, 65_536, b"sessionid")
