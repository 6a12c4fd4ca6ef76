"""The one HTTP boundary of the Backend: ``RemoteRuntimeClient`` talks runtime protocol v1 to a remote runtime.

This is the only module that imports ``requests`` and ``sseclient``. It owns the path constants, the bearer
header, one pooled session per runtime, explicit ``(connect, read)`` timeouts, redirects off, a response
size cap with a total deadline, TLS (the row's ``SSLContext``: the CA it trusts, the mTLS pair; see
runtimes/tls.py), and ``_map_failure``: the one place a transport failure or an unwanted status becomes a
typed error of ``runtimes.errors``. Exception text is never used (it contains the URL). A certificate that
does not verify fails the handshake, before any request (and so any token) is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urlsplit

import httptools
import orjson
import requests
import sseclient
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from runtimes import metrics
from runtimes.errors import (
    TRANSPORT_FAILURES,
    CredentialUnavailable,
    IdempotencyKeyReused,
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
from runtimes.scrub import MAX_UPSTREAM_MESSAGE, Scrubber
from runtimes.types import ID_PATTERN, is_valid_id

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Three of the runtime's 15 s pings: a stream silent for longer is dead, not idle.
DEFAULT_STREAM_IDLE_TIMEOUT = 45.0
# One SSE event (bytes between two blank lines) may not grow past this.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
POOL_MAXSIZE = 32
USER_AGENT = "yoi-workspace-backend"
READ_CHUNK_BYTES = 64 * 1024

PATH_RUNTIME = "/v1/runtime"
PATH_WORKERS = "/v1/workers"
PATH_WORKER = "/v1/workers/{worker_id}"
PATH_WORKER_INPUT = "/v1/workers/{worker_id}/input"
PATH_WORKER_STOP = "/v1/workers/{worker_id}/stop"
PATH_WORKER_CANCEL = "/v1/workers/{worker_id}/cancel"
PATH_WORKER_TRANSCRIPT = "/v1/workers/{worker_id}/transcript"
PATH_WORKER_EVENTS = "/v1/workers/{worker_id}/events"
# The runtime's error code for a key reused with another request (docs/runtime-protocol.md, Idempotency).
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
# The SSE response header naming the epoch of the worker event log a stream comes from.
HEADER_STREAM_EPOCH = "Yoi-Stream-Epoch"
_EPOCH_HEADER_BYTES = HEADER_STREAM_EPOCH.lower().encode("latin-1")
# Route names of the metrics: the RuntimeHandle method each request serves (the embedded handle uses the same).
ROUTE_NAMES: dict[tuple[str, str], str] = {
    ("GET", PATH_RUNTIME): "summary",
    ("GET", PATH_WORKERS): "list_workers",
    ("POST", PATH_WORKERS): "create_worker",
    ("GET", PATH_WORKER): "get_worker",
    ("POST", PATH_WORKER_INPUT): "send_input",
    ("POST", PATH_WORKER_STOP): "stop_worker",
    ("POST", PATH_WORKER_CANCEL): "cancel_worker",
    ("GET", PATH_WORKER_TRANSCRIPT): "transcript",
    ("GET", PATH_WORKER_EVENTS): "open_events",
}

# A token goes into a header: printable ASCII without spaces, or it is not a usable credential.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
_SSE_TERMINATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")

TokenProvider = Callable[[], str]

_UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,  # refused, DNS, TLS, proxy
    requests.exceptions.ChunkedEncodingError,  # reset mid-body
    requests.exceptions.InvalidURL,  # a base_url that cannot be dialled
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    urllib3.exceptions.ProtocolError,  # reset / incomplete read while streaming a body
    urllib3.exceptions.SSLError,
    urllib3.exceptions.NewConnectionError,
    http.client.HTTPException,
    OSError,
)


@dataclass(frozen=True)
class SseMessage:
    """One dispatched SSE event: name, id and the JSON object of its data (parsed further by handles)."""

    event: str
    id: str | None
    data: dict[str, Any]


class _TlsAdapter(HTTPAdapter):
    """An adapter whose connections use one ``SSLContext``, the only source of trust: requests would
    otherwise add its own CA bundle to every context (``cert_verify``)."""

    def __init__(self, *, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        self._ssl_context = ssl_context
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


class RemoteRuntimeClient:
    """HTTP client of one remote runtime; thread-safe, one pooled session, every failure typed."""

    def __init__(
        self,
        *,
        runtime_id: str,
        base_url: str,
        token_provider: TokenProvider,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        pool_maxsize: int = POOL_MAXSIZE,
        ssl_context: ssl.SSLContext | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0 or stream_idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_body_bytes <= 0 or max_event_bytes <= 0:
            raise ValueError("size limits must be positive")
        self.runtime_id = runtime_id
        self._base_url = base_url.rstrip("/")
        self._token_provider = token_provider
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_body_bytes = int(max_body_bytes)
        self.stream_idle_timeout = float(stream_idle_timeout)
        self.max_event_bytes = int(max_event_bytes)
        # The scrub of everything this runtime says (its own address, known secrets, paths, tracebacks).
        self.scrubber = scrubber or Scrubber(base_url=base_url)
        self._https = self._base_url.lower().startswith("https:")
        if ssl_context is None and self._https:
            ssl_context = ssl.create_default_context()  # the system store
        # The one trust source of this runtime: the session's adapter and the live streams use it alike.
        self._ssl: ssl.SSLContext | None = ssl_context
        self._session = self._make_session(pool_maxsize, ssl_context)

    @staticmethod
    def _make_session(pool_maxsize: int, ssl_context: ssl.SSLContext | None) -> requests.Session:
        session = requests.Session()
        # No proxies or .netrc from the environment (netrc would replace our Authorization header).
        session.trust_env = False
        session.headers["User-Agent"] = USER_AGENT
        # A runtime has no business setting cookies on the Backend.
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        # No transport retries: a POST must never be sent twice behind the caller's back.
        # read=False re-raises read errors as they are (a ReadTimeout stays a timeout, not a ConnectionError).
        retries = Retry(total=0, read=False, redirect=False, raise_on_status=False)
        pool: dict[str, Any] = {"pool_connections": 1, "pool_maxsize": pool_maxsize, "max_retries": retries}
        session.mount("http://", HTTPAdapter(**pool))
        if ssl_context is not None:
            session.mount("https://", _TlsAdapter(ssl_context=ssl_context, **pool))
        return session

    def __repr__(self) -> str:
        return f"RemoteRuntimeClient(runtime_id={self.runtime_id!r}, base_url=<backend-private>, token=<redacted>)"

    __str__ = __repr__

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # ----------------------------------------------------------------------------------------- requests

    def request_json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        worker_id: str | None = None,
        idempotency_key: str | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one protocol request; return ``(status, JSON object)`` for a 2xx, raise a typed error otherwise.

        ``path`` is one of the ``PATH_*`` constants; ``{worker_id}`` in it is filled from ``worker_id``.
        """
        method = method.upper()
        url = self._url(path, worker_id)
        headers = self._headers(accept="application/json")
        data: bytes | None = None
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self.connect_timeout + self.read_timeout
        with metrics.upstream_request(self.runtime_id, ROUTE_NAMES.get((method, path), "other")):
            response = self._send(method, url, headers=headers, worker_id=worker_id, data=data, params=params)
            try:
                raw = self._read_body(response, deadline=deadline, worker_id=worker_id)
            finally:
                response.close()
            status = response.status_code
            if not 200 <= status < 300:
                raise self._map_failure(status=status, body=raw, worker_id=worker_id)
            return status, self._json_object(raw, worker_id=worker_id)

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        worker_id: str | None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        """Send one request to the runtime and return the response with its body unread. Redirects are never
        followed (the bearer token goes nowhere else); a transport failure is raised as its typed error."""
        try:
            return self._session.request(
                method,
                url,
                data=data,
                params=dict(params) if params else None,
                headers=headers,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=False,
                stream=True,
            )
        except Exception as exc:
            raise self._map_failure(exc=exc, worker_id=worker_id, before_response=True) from exc

    def open_event_stream(self, worker_id: str, *, after: int | None) -> ClientEventStream:
        """Open the SSE stream of one worker; ``after`` is the last seq seen (``0`` = from the first event).

        The response head must come within the read timeout; after that the stream may be silent for up to
        ``stream_idle_timeout`` (the runtime pings every 15 s) before iteration raises RuntimeTimeout.
        """
        _check_after(after, runtime_id=self.runtime_id)
        url = self._url(PATH_WORKER_EVENTS, worker_id)
        headers = self._headers(accept="text/event-stream")
        headers["Cache-Control"] = "no-cache"
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        deadline = time.monotonic() + self.connect_timeout + self.read_timeout
        with metrics.upstream_request(self.runtime_id, ROUTE_NAMES[("GET", PATH_WORKER_EVENTS)]):
            response = self._send("GET", url, headers=headers, worker_id=worker_id)
            status = response.status_code
            # The head came within the read timeout; from here on silence is only fatal past the idle timeout.
            _set_read_timeout(response, self.stream_idle_timeout)
            if not 200 <= status < 300:
                try:
                    raw = self._read_body(response, deadline=deadline, worker_id=worker_id)
                finally:
                    response.close()
                raise self._map_failure(status=status, body=raw, worker_id=worker_id)
            content_type = response.headers.get("Content-Type", "")
            if not content_type.lower().startswith("text/event-stream"):
                response.close()
                self._log_bad_response("not_event_stream", worker_id)
                raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=worker_id)
        return ClientEventStream(self, response, worker_id=worker_id)

    def live_event_stream(
        self, worker_id: str, *, on_message: MessageCallback, on_end: EndCallback
    ) -> LiveEventStream:
        """A stream of one worker's events read on the running event loop; ``await stream.open(after=...)``.

        ``open`` returns once the runtime answered with an event stream (connect and read timeouts apply; a
        refusal is raised as its typed error). Then every event goes to ``on_message`` as it arrives, and
        the end to ``on_end`` once: ``None`` when the runtime closed the stream at an event boundary, else
        the typed error. An open stream may be silent for ``stream_idle_timeout``.
        """
        return LiveEventStream(self, worker_id=worker_id, on_message=on_message, on_end=on_end)

    # ----------------------------------------------------------------------------------------- internals

    def _url(self, path: str, worker_id: str | None) -> str:
        return self._base_url + self._path(path, worker_id)

    def _path(self, path: str, worker_id: str | None) -> str:
        if "{worker_id}" in path:
            if not is_valid_id(worker_id):
                raise InvalidRequest(
                    runtime_id=self.runtime_id, fields={"worker_id": [f"must match {ID_PATTERN}"]}
                )
            assert worker_id is not None
            path = path.format(worker_id=quote(worker_id, safe=""))
        return path

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings of an https runtime for connections made outside the session (live streams);
        None for plain http."""
        return self._ssl

    def _headers(self, *, accept: str) -> dict[str, str]:
        try:
            token = self._token_provider()
        except RuntimeAuthFailed as exc:
            # No request is made: this process cannot resolve the credential, which says nothing of the runtime.
            raise CredentialUnavailable(runtime_id=self.runtime_id, message=exc.message) from None
        if not isinstance(token, str) or _TOKEN_RE.fullmatch(token) is None:
            logger.warning(
                "runtimes.client.token_unusable",
                extra={
                    "runtime_id": self.runtime_id,
                    "code": RuntimeAuthFailed.code,
                    "reason": "not_a_header_value",
                },
            )
            raise CredentialUnavailable(runtime_id=self.runtime_id)
        self.scrubber.secrets.add(token)  # whatever the runtime echoes back, the token never shows
        return {
            "Authorization": f"Bearer {token}",
            "Accept": accept,
            # No compression asked for; a proxy that compresses anyway is decoded chunk by chunk under the cap.
            "Accept-Encoding": "identity",
        }

    def _read_body(self, response: requests.Response, *, deadline: float, worker_id: str | None) -> bytes:
        """The whole body, at most ``max_body_bytes``, read before ``deadline`` (slow drips time out)."""
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            self._log_bad_response("body_too_large", worker_id)
            raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=worker_id)
        buffer = bytearray()
        raw = response.raw
        try:
            while True:
                if time.monotonic() > deadline:
                    logger.warning(
                        "runtimes.client.deadline_exceeded",
                        extra={
                            "runtime_id": self.runtime_id,
                            "worker_id": worker_id,
                            "code": RuntimeTimeout.code,
                            "reason": "body_deadline",
                        },
                    )
                    raise RuntimeTimeout(runtime_id=self.runtime_id, worker_id=worker_id)
                # read1: at most one recv, so the deadline is checked between the bytes of a slow drip.
                chunk = raw.read1(READ_CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > self.max_body_bytes:
                    self._log_bad_response("body_too_large", worker_id)
                    raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=worker_id)
        except YoiError:
            raise
        except Exception as exc:
            raise self._map_failure(exc=exc, worker_id=worker_id) from exc
        return bytes(buffer)

    def _json_object(self, raw: bytes, *, worker_id: str | None) -> dict[str, Any]:
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            self._log_bad_response("not_json", worker_id)
            raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=worker_id) from exc
        if not isinstance(parsed, dict):
            self._log_bad_response("not_an_object", worker_id)
            raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=worker_id)
        return parsed

    def _log_bad_response(self, reason: str, worker_id: str | None) -> None:
        logger.warning(
            "runtimes.client.bad_response",
            extra={
                "runtime_id": self.runtime_id,
                "worker_id": worker_id,
                "code": RuntimeBadResponse.code,
                "reason": reason,
            },
        )

    def _map_failure(
        self,
        *,
        exc: BaseException | None = None,
        status: int | None = None,
        body: bytes = b"",
        worker_id: str | None = None,
        before_response: bool = False,
    ) -> YoiError:
        """THE mapping of a transport exception or a non-2xx status to a typed error (docs/api.md).

        Never reads ``str(exc)``: requests puts the URL in it. ``before_response``: the failure came before
        any byte of an answer (so an https connection closed then is a refused TLS session, see below).
        """
        ids: dict[str, Any] = {"runtime_id": self.runtime_id, "worker_id": worker_id}
        if exc is not None:
            if isinstance(exc, YoiError):
                return exc
            # Under TLS 1.3 a runtime that refuses the Backend's client certificate (or gets none) does so
            # after the handshake has completed on the Backend's side: the connection just closes, unanswered.
            tls = _is_tls_failure(exc) or (before_response and self._https and _closed_unanswered(exc))
            # A certificate that does not verify, a wrong host name, a refused client certificate.
            error = RuntimeUnreachable(reason="tls", **ids) if tls else _error_for_exception(exc, ids)
            logger.warning(
                "runtimes.client.transport_error",
                extra={
                    **ids,
                    "code": error.code,
                    "reason": "tls" if tls else type(exc).__name__,
                    "error_class": type(exc).__name__,
                },
            )
            return error
        assert status is not None
        upstream_code, message = _error_fields(body, scrubber=self.scrubber)
        error = _error_for_status(status, upstream_code, message, ids)
        # A refusal (worker_not_found, worker_not_running) is the runtime doing its job; a 401 or a 5xx is not.
        level = logging.WARNING if isinstance(error, TRANSPORT_FAILURES) else logging.INFO
        logger.log(
            level,
            "runtimes.client.upstream_status",
            extra={
                **ids,
                "code": error.code,
                "reason": f"http_{status}",
                "status": status,
                "upstream_code": upstream_code,
            },
        )
        return error


def _error_for_exception(exc: BaseException, ids: dict[str, Any]) -> YoiError:
    """The typed error of a transport exception (its text is never read: it holds the URL)."""
    if _is_timeout(exc):
        return RuntimeTimeout(**ids)
    if isinstance(exc, _UNREACHABLE_ERRORS):
        return RuntimeUnreachable(**ids)
    # Anything else requests/urllib3 raise (decoding, invalid headers, ...) is a broken answer.
    return RuntimeBadResponse(**ids)


def _error_for_status(status: int, code: str | None, message: str, ids: dict[str, Any]) -> YoiError:
    """The typed error of a non-2xx answer (docs/api.md's error table)."""
    if 300 <= status < 400:
        return RuntimeBadResponse(**ids)  # redirects are never followed
    if status in (401, 403):
        return RuntimeAuthFailed(**ids)
    if status == 404:
        if ids.get("worker_id") is not None and code == "worker_not_found":
            return WorkerNotFound(**ids)
        return RuntimeUnsupported(**ids)
    if status in (405, 501):
        return RuntimeUnsupported(**ids)
    if status == 422 and code == IDEMPOTENCY_KEY_REUSED:
        return IdempotencyKeyReused(**ids)  # the caller's key, not the runtime, is at fault
    if status == 413:
        return RuntimeRejected(
            upstream_code=code or "payload_too_large", upstream_status=status, detail=message, **ids
        )
    if 400 <= status < 500:
        return RuntimeRejected(upstream_code=code or "unknown", upstream_status=status, detail=message, **ids)
    return RuntimeBadResponse(**ids)


def _set_read_timeout(response: requests.Response, timeout: float) -> None:
    """Change the socket timeout of an open streamed response (a no-op when there is no real socket)."""
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        # http.client drops the connection's socket reference for close-delimited bodies; the body's
        # reader still has it (http.client.HTTPResponse.fp -> BufferedReader -> SocketIO._sock).
        reader = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (``args``, ``reason``, cause, context), each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        stack.extend(item for item in linked if isinstance(item, BaseException))


def _is_tls_failure(exc: BaseException) -> bool:
    """A handshake or certificate failure, however requests/urllib3 wrapped it."""
    tls_errors = (ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError)
    return any(isinstance(link, tls_errors) for link in _causes(exc))


def _closed_unanswered(exc: BaseException) -> bool:
    """The peer closed or reset the connection without sending a response."""
    closed = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
    return any(isinstance(link, closed) for link in _causes(exc))


def _check_after(after: int | None, *, runtime_id: str) -> None:
    if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
        raise InvalidRequest(runtime_id=runtime_id, fields={"after": ["must be an integer >= 0"]})


def _is_timeout(exc: BaseException) -> bool:
    """A connect or read timeout, however requests/urllib3 wrapped it."""
    if isinstance(exc, requests.exceptions.Timeout):  # ConnectTimeout and ReadTimeout
        return True
    reason: BaseException | None = exc
    if isinstance(reason, requests.exceptions.ConnectionError) and reason.args:
        reason = reason.args[0] if isinstance(reason.args[0], BaseException) else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    # urllib3 makes NewConnectionError (refused, DNS) a subclass of ConnectTimeoutError: it is not a timeout.
    if reason is None or isinstance(reason, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError)


def _error_fields(body: bytes, *, scrubber: Scrubber) -> tuple[str | None, str]:
    """``(code, message)`` of a protocol error body ``{"error": {"code", "message"}}``; lenient.

    Both are upstream text and go through the runtime's scrub, which removes secrets and addresses before it
    cuts to length (so no secret survives in part).
    """
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None, ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    message = error.get("message")
    code = scrubber.text(code, limit=MAX_UPSTREAM_MESSAGE) if isinstance(code, str) else None
    text = scrubber.text(message, limit=MAX_UPSTREAM_MESSAGE) if isinstance(message, str) else ""
    return (code or None), text


class _ChunkSource:
    """The byte source sseclient reads: one recv at a time, an event size cap, and cut-mid-event detection."""

    def __init__(self, stream: ClientEventStream, response: requests.Response) -> None:
        self._stream = stream
        self._raw = response.raw
        self._pending = 0  # bytes since the last event terminator
        self._pending_content = False  # any non-newline byte since the last terminator
        self._tail = b""

    def __repr__(self) -> str:
        return repr(self._stream)

    def __iter__(self) -> _ChunkSource:
        return self

    def __next__(self) -> bytes:
        chunk: bytes = self._raw.read1(READ_CHUNK_BYTES, decode_content=True)
        if not chunk:
            if self._pending_content:
                raise _StreamCut
            raise StopIteration
        self._track(chunk)
        return chunk

    def _track(self, chunk: bytes) -> None:
        window = self._tail + chunk
        end = max((window.rfind(t) + len(t) if window.rfind(t) >= 0 else -1) for t in _SSE_TERMINATORS)
        if end >= 0:
            after = window[end:]
            self._pending = len(after)
            self._pending_content = bool(after.strip(b"\r\n"))
        else:
            self._pending += len(chunk)
            self._pending_content = self._pending_content or bool(chunk.strip(b"\r\n"))
        self._tail = window[-3:]
        if self._pending > self._stream._max_event_bytes:
            raise _EventTooLarge

    def close(self) -> None:
        self._stream.close()


class _StreamCut(Exception):
    """The connection ended inside an event."""


class _EventTooLarge(Exception):
    """One event grew past the cap."""


class ClientEventStream:
    """One open SSE stream: iterate ``SseMessage`` items; ``close()`` may be called from any thread."""

    def __init__(self, client: RemoteRuntimeClient, response: requests.Response, *, worker_id: str) -> None:
        self.runtime_id = client.runtime_id
        self.worker_id = worker_id
        self._client = client
        self._response = response
        self._max_event_bytes = client.max_event_bytes
        # As the runtime sent it (None without one); the handle checks it like any runtime-supplied field.
        self.epoch_header: str | None = response.headers.get(HEADER_STREAM_EPOCH)
        self._closed = threading.Event()
        self._close_lock = threading.Lock()
        self._released = False

    def __repr__(self) -> str:
        return f"ClientEventStream(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    __str__ = __repr__

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (not when the runtime ended the stream)."""
        return self._closed.is_set()

    def __iter__(self) -> Iterator[SseMessage]:
        ids: dict[str, Any] = {"runtime_id": self.runtime_id, "worker_id": self.worker_id}
        events = sseclient.SSEClient(_ChunkSource(self, self._response)).events()
        try:
            while True:
                try:
                    event = next(events)
                except StopIteration:
                    return
                except _StreamCut as exc:
                    if self.closed:
                        return
                    logger.warning(
                        "runtimes.client.stream_cut",
                        extra={**ids, "code": RuntimeUnreachable.code, "reason": "cut_mid_event"},
                    )
                    raise RuntimeUnreachable(**ids) from exc
                except _EventTooLarge as exc:
                    if self.closed:
                        return
                    self._client._log_bad_response("event_too_large", self.worker_id)
                    raise RuntimeBadResponse(**ids) from exc
                except Exception as exc:
                    if self.closed:
                        return  # the reader was interrupted by close(): not a failure
                    raise self._client._map_failure(exc=exc, worker_id=self.worker_id) from exc
                if self.closed:
                    return
                yield self._message(event)
        finally:
            self._release()

    def _message(self, event: Any) -> SseMessage:
        try:
            data = json.loads(event.data)
        except (ValueError, RecursionError) as exc:
            self._client._log_bad_response("event_not_json", self.worker_id)
            raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=self.worker_id) from exc
        if not isinstance(data, dict):
            self._client._log_bad_response("event_not_an_object", self.worker_id)
            raise RuntimeBadResponse(runtime_id=self.runtime_id, worker_id=self.worker_id)
        name = event.event if isinstance(event.event, str) else "message"
        event_id = event.id if isinstance(event.id, str) else None
        return SseMessage(event=name, id=event_id, data=data)

    def close(self) -> None:
        """Stop the stream; wakes a reader blocked in another thread (idempotent)."""
        self._closed.set()
        self._release()

    def _release(self) -> None:
        with self._close_lock:
            if self._released:
                return
            self._released = True
        raw = self._response.raw
        # Shut the socket down first: a blocked recv returns at once, and closing cannot deadlock
        # on the buffered reader's lock held by that recv.
        with contextlib.suppress(ValueError, RuntimeError, OSError, AttributeError):
            raw.shutdown()
        # Close without handing the connection back to the pool: it is finished. Never raises.
        with contextlib.suppress(Exception):
            raw.close()


# --------------------------------------------------------------------------------------------- live streams
#
# The relay reads hundreds of streams at once on the event loop: one asyncio connection per stream, the
# response parsed by httptools (llhttp) and the SSE body decoded as it arrives, so that an event goes from
# the socket to the relay in the same loop turn, with no thread and no hand-off. The blocking
# ``open_event_stream`` above stays for scripts and tests; both map failures through ``_map_failure``.


class SseDecoder:
    """Push-style SSE decoding (the WHATWG event-stream rules): bytes in, ``(event, id, data bytes)`` out.

    Lines end with CRLF, LF or CR; a blank line dispatches; ``:`` lines are comments (the runtime's pings);
    ``data`` lines join with LF; an event without data is not dispatched. ``pending`` is the size of the
    event being received (the caller caps it).
    """

    def __init__(self) -> None:
        self._tail = b""
        self._event = ""
        self._id: str | None = None
        self._data: list[bytes] = []
        self._data_bytes = 0

    def __repr__(self) -> str:
        return f"SseDecoder(pending={self.pending})"

    @property
    def pending(self) -> int:
        """Bytes of the event not yet dispatched."""
        return len(self._tail) + self._data_bytes

    @property
    def mid_event(self) -> bool:
        """Something of an event was received but not its end."""
        return bool(self._data) or bool(self._tail.strip(b"\r\n"))

    def feed(self, chunk: bytes) -> list[tuple[str, str | None, bytes]]:
        """Decode ``chunk``; return the events it completes."""
        text = self._tail + chunk if self._tail else chunk
        if b"\r" in text:
            # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
            keep_cr = text.endswith(b"\r")
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                text = text[:-1]
            end = text.rfind(b"\n")
            self._tail = text[end + 1 :] + (b"\r" if keep_cr else b"")
        else:
            end = text.rfind(b"\n")
            self._tail = text[end + 1 :]
        if end < 0:
            return []
        out: list[tuple[str, str | None, bytes]] = []
        for line in text[:end].split(b"\n"):
            if not line:
                if self._data:
                    data = self._data
                    out.append(
                        (self._event or "message", self._id, data[0] if len(data) == 1 else b"\n".join(data))
                    )
                    self._data, self._data_bytes = [], 0
                self._event = ""
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
                self._data_bytes += len(value) + 1
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id" and b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
            # comments (empty name), retry and unknown fields are ignored
        return out


def load_json(raw: bytes) -> Any:
    """JSON from bytes: orjson, or the standard library for what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


# A live stream's event: its name and its data object (the id is the data's seq in this protocol).
MessageCallback = Callable[[str, dict[str, Any]], None]
EndCallback = Callable[["YoiError | None"], None]


class _LiveProtocol(asyncio.Protocol):
    """One live SSE response on the event loop: head, then events to ``on_message``, then one ``on_end``."""

    def __init__(self, stream: LiveEventStream) -> None:
        self._stream = stream
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.content_type = ""
        self.content_length: int | None = None
        self.epoch_header: str | None = None
        self.error_body = bytearray()
        self.streaming = False
        self.last_data = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = self._stream.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # A callback failed (httptools wraps what it raised): the relay's code, not the runtime's answer.
            logger.error(
                "runtimes.client.stream_callback_failed", exc_info=exc.__context__, extra=self._stream.ids()
            )
            self._stream.fail(RuntimeBadResponse(**self._stream.ids()))
        except httptools.HttpParserError:
            self._stream.fail(self._stream.bad_response("not_http"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost says how the body ended

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream.lost(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value.decode("latin-1").lower()
        elif lowered == _EPOCH_HEADER_BYTES:
            self.epoch_header = value.decode("latin-1")
        elif lowered == b"content-length" and value.strip().isdigit():
            self.content_length = int(value)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._stream.head_complete(self)

    def on_body(self, body: bytes) -> None:
        if self.streaming:
            self._stream.body(body)
            return
        self.error_body += body
        if len(self.error_body) > self._stream.client.max_body_bytes:
            self._stream.fail(self._stream.bad_response("body_too_large"))

    def on_message_complete(self) -> None:
        self._stream.message_complete(self)


class LiveEventStream:
    """One worker's SSE stream read on the event loop; ``close()`` ends it without a callback."""

    def __init__(
        self, client: RemoteRuntimeClient, *, worker_id: str, on_message: MessageCallback, on_end: EndCallback
    ) -> None:
        self.client = client
        self.runtime_id = client.runtime_id
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_end = on_end
        self._decoder = SseDecoder()
        self._protocol: _LiveProtocol | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._done = False

    def __repr__(self) -> str:
        return f"LiveEventStream(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    __str__ = __repr__

    @property
    def closed(self) -> bool:
        """True once the stream ended or was closed."""
        return self._done

    def ids(self) -> dict[str, Any]:
        """The ids for log lines and errors."""
        return {"runtime_id": self.runtime_id, "worker_id": self.worker_id}

    def bad_response(self, reason: str) -> RuntimeBadResponse:
        """The typed error of a malformed answer (the reason goes to the log only)."""
        self.client._log_bad_response(reason, self.worker_id)
        return RuntimeBadResponse(**self.ids())

    @property
    def epoch_header(self) -> str | None:
        """The ``Yoi-Stream-Epoch`` header of the response (once open), unparsed."""
        protocol = self._protocol
        return protocol.epoch_header if protocol is not None else None

    async def open(self, *, after: int | None) -> None:
        """Connect and wait for a 2xx event-stream head (connect and read timeouts); raise a typed error."""
        with metrics.upstream_request(self.runtime_id, ROUTE_NAMES[("GET", PATH_WORKER_EVENTS)]):
            await self._open(after=after)

    async def _open(self, *, after: int | None) -> None:
        client = self.client
        _check_after(after, runtime_id=self.runtime_id)
        parts = urlsplit(client._base_url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise client._map_failure(exc=requests.exceptions.InvalidURL(), worker_id=self.worker_id)
        path = parts.path + client._path(PATH_WORKER_EVENTS, self.worker_id)
        headers = client._headers(accept="text/event-stream")
        headers["Cache-Control"] = "no-cache"
        headers["User-Agent"] = USER_AGENT
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        host = parts.netloc.rsplit("@", 1)[-1]
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            async with asyncio.timeout(client.connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: _LiveProtocol(self),
                    parts.hostname,
                    port,
                    ssl=client.ssl_context() if secure else None,
                    server_hostname=parts.hostname if secure else None,
                )
        except TimeoutError as exc:
            raise client._map_failure(exc=requests.exceptions.ConnectTimeout(), worker_id=self.worker_id) from exc
        except OSError as exc:
            raise client._map_failure(exc=exc, worker_id=self.worker_id) from exc
        self._protocol = protocol
        assert protocol.transport is not None
        protocol.transport.write((request + "\r\n").encode("latin-1"))
        try:
            async with asyncio.timeout(client.read_timeout):
                await protocol.head
        except TimeoutError as exc:
            self._shut()
            raise client._map_failure(exc=requests.exceptions.ReadTimeout(), worker_id=self.worker_id) from exc
        except BaseException:
            self._shut()
            raise
        protocol.last_data = self.loop.time()
        self._idle = self.loop.call_later(client.stream_idle_timeout, self._check_idle)

    # ------------------------------------------------------------------ protocol events (on the loop)

    def head_complete(self, protocol: _LiveProtocol) -> None:
        if not 200 <= protocol.status < 300:
            return  # the error body follows; message_complete maps it
        if not protocol.content_type.startswith("text/event-stream"):
            self._fail_head(self.bad_response("not_event_stream"))
            return
        protocol.streaming = True
        if not protocol.head.done():
            protocol.head.set_result(None)

    def message_complete(self, protocol: _LiveProtocol) -> None:
        if protocol.streaming:
            self.lost(None)  # the runtime ended the response: the caller decides what an early end means
            return
        error = self.client._map_failure(
            status=protocol.status, body=bytes(protocol.error_body), worker_id=self.worker_id
        )
        self._fail_head(error)

    def body(self, chunk: bytes) -> None:
        if self._done:
            return
        decoder = self._decoder
        for name, _, raw in decoder.feed(chunk):
            try:
                data = load_json(raw)
            except (ValueError, RecursionError):
                self.fail(self.bad_response("event_not_json"))
                return
            if not isinstance(data, dict):
                self.fail(self.bad_response("event_not_an_object"))
                return
            self._on_message(name, data)
            if self._done:
                return  # the consumer closed the stream from its callback
        if decoder.pending > self.client.max_event_bytes:
            self.fail(self.bad_response("event_too_large"))

    def lost(self, exc: BaseException | None) -> None:
        protocol = self._protocol
        if protocol is not None and not protocol.head.done():
            if protocol.status and not protocol.streaming:
                # A close-delimited error body ended: map its status.
                self.message_complete(protocol)
            else:
                # Closed before any answer: under TLS 1.3 that is how a refused client certificate shows.
                error = self.client._map_failure(
                    exc=exc or ConnectionResetError(), worker_id=self.worker_id, before_response=True
                )
                self._fail_head(error)
            return
        if self._done:
            return
        if exc is None and not self._decoder.mid_event:
            self._finish(None)
            return
        if exc is None:
            logger.warning("runtimes.client.stream_cut", extra=self.ids())
            self._finish(RuntimeUnreachable(**self.ids()))
        else:
            self._finish(self.client._map_failure(exc=exc, worker_id=self.worker_id))

    def fail(self, error: YoiError) -> None:
        """End the stream with ``error`` (told to ``on_end`` once the head has come)."""
        protocol = self._protocol
        if protocol is not None and not protocol.head.done():
            self._fail_head(error)
            return
        if not self._done:
            self._finish(error)

    def _fail_head(self, error: YoiError) -> None:
        protocol = self._protocol
        self._shut()
        if protocol is not None and not protocol.head.done():
            protocol.head.set_exception(error)

    def _check_idle(self) -> None:
        protocol = self._protocol
        if self._done or protocol is None:
            return
        silent = self.loop.time() - protocol.last_data
        timeout = self.client.stream_idle_timeout
        if silent < timeout:
            self._idle = self.loop.call_later(timeout - silent, self._check_idle)
            return
        logger.warning("runtimes.client.stream_idle", extra=self.ids())
        self._finish(RuntimeTimeout(**self.ids()))

    def _finish(self, error: YoiError | None) -> None:
        self._shut()
        self._on_end(error)

    def _shut(self) -> None:
        self._done = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    def pause_reading(self) -> None:
        """Read nothing more from the socket until ``resume_reading`` (the consumer is behind)."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None and not self._done:
            protocol.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None and not self._done:
            protocol.transport.resume_reading()
            protocol.last_data = self.loop.time()  # the pause was ours, not the runtime's silence

    def close(self) -> None:
        """Stop the stream; ``on_end`` is not called (idempotent)."""
        self._shut()
