"""Which request bodies the server refuses before reading them, decided from the request's headers alone.

daphne (Twisted's ``http.Request``) buffers a whole body — in memory, or in a temporary file past 100 kB —
before the application runs, so Django's own cap would come too late. The server entry point
(``yoi_backend/serve.py``) asks ``BodyPolicy`` as soon as a request's headers are in:

* a ``Content-Length`` over the cap (``YOI_MAX_REQUEST_BYTES``) is answered ``413 payload_too_large`` at
  once; a chunked body is cut with the same answer when it passes the cap;
* a body on a request without credentials (no session cookie, no ``Authorization`` header) is refused
  (401 under /api/, 403 elsewhere) — except on the login forms, which take one of at most
  ``YOI_MAX_LOGIN_BODY_BYTES``.

Nothing here reads a body, a session or the database: only header bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

API_PREFIX = "/api/"
# Server-level answers are not pages: nothing in them may load or run anything.
REFUSAL_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Connection", "close"),
)


@dataclass(frozen=True)
class Refusal:
    """A complete HTTP/1.1 answer the server writes itself, then closes the connection."""

    status: int
    reason: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        """Status line, headers and body."""
        lines = [
            f"HTTP/1.1 {self.status} {self.reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            *(f"{name}: {value}" for name, value in (*self.headers, *REFUSAL_HEADERS)),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _refusal(path: str, status: int, reason: str, code: str, message: str, **headers: str) -> Refusal:
    """The §5 envelope under /api/, a short plain-text answer elsewhere."""
    extra = tuple((name.replace("_", "-"), value) for name, value in headers.items())
    if path.startswith(API_PREFIX):
        error = {"code": code, "message": message, "retryable": False}
        body = json.dumps({"error": error}, separators=(",", ":")).encode()
        return Refusal(status, reason, "application/json", body, extra)
    return Refusal(status, reason, "text/plain; charset=utf-8", f"{status} {reason}: {message}\n".encode(), extra)


def payload_too_large(path: str) -> Refusal:
    """413 ``payload_too_large``: the body is over the cap."""
    return _refusal(path, 413, "Payload Too Large", "payload_too_large", "the request body is too large")


def body_without_credentials(path: str) -> Refusal:
    """401 ``not_authenticated`` under /api/ (as the API answers anonymous requests), 403 elsewhere."""
    message = "authentication credentials were not provided"
    if path.startswith(API_PREFIX):
        return _refusal(path, 401, "Unauthorized", "not_authenticated", message, WWW_Authenticate="Token")
    return _refusal(path, 403, "Forbidden", "permission_denied", "log in before sending a request body")


def request_path(target: bytes) -> str:
    """The decoded path of a request target (origin form ``/p?q`` or absolute form ``http://h/p``)."""
    text = target.decode("latin-1")
    if not text.startswith("/"):
        text = urlsplit(text).path or "/"
    return unquote(text.split("?", 1)[0])


def has_session_cookie(cookie_headers: Iterable[bytes], name: bytes) -> bool:
    """Whether any ``Cookie`` header names the session cookie with a value."""
    for header in cookie_headers:
        for pair in header.split(b";"):
            key, _, value = pair.strip().partition(b"=")
            if key == name and value:
                return True
    return False


@dataclass(frozen=True)
class BodyPolicy:
    """The caps, and the paths that take a body without credentials (the login forms)."""

    max_body: int
    max_login_body: int
    login_paths: frozenset[str]
    session_cookie: bytes

    @classmethod
    def from_settings(cls) -> BodyPolicy:
        """From Django's settings and URLconf (called once the application is loaded)."""
        from django.conf import settings
        from django.urls import reverse

        return cls(
            max_body=int(settings.YOI_MAX_REQUEST_BYTES),
            max_login_body=int(settings.YOI_MAX_LOGIN_BODY_BYTES),
            login_paths=frozenset({str(settings.LOGIN_URL), reverse("admin:login")}),
            session_cookie=str(settings.SESSION_COOKIE_NAME).encode("latin-1"),
        )

    def body_cap(self, *, path: str, credentials: bool) -> int | None:
        """How many body bytes this request may send; None: none at all."""
        if credentials:
            return self.max_body
        if path in self.login_paths:
            return min(self.max_body, self.max_login_body)
        return None

    def check_headers(
        self, *, target: bytes, length: int | None, chunked: bool, credentials: bool
    ) -> tuple[Refusal | None, int]:
        """``(refusal or None, body cap)`` for a request whose headers are in; ``length`` from Content-Length."""
        path = request_path(target)
        cap = self.body_cap(path=path, credentials=credentials)
        has_body = chunked or bool(length)
        if length is not None and length > (cap if cap is not None else self.max_body):
            return payload_too_large(path), 0
        if has_body and cap is None:
            return body_without_credentials(path), 0
        return None, cap or 0
