"""The runtime's HTTP face: the REST commands and SSE event streams of runtime protocol v1 on Starlette.

Interfaces only: every route parses its input, calls the synchronous core in a worker thread (commands
fsync), and renders the answer. Event streams hold no thread: the core's listener hands each batch to the
event loop with ``call_soon_threadsafe`` and the stream's bounded queue feeds the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from worker_runtime.core import Subscription, WorkerRuntime
from worker_runtime.errors import InvalidJson, InvalidQuery, InvalidRequest, PayloadTooLarge, RuntimeApiError
from worker_runtime.idempotency import (
    IdempotencyCache,
    canonical_body,
    is_replayable,
    parse_key,
    request_fingerprint,
)
from worker_runtime.ids import ID_PATTERN, is_valid_id
from worker_runtime.model import FINAL_EVENT, Event, compact_json
from worker_runtime.store import Store

logger = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL = 15.0
# The response header naming the epoch of the worker event log a stream comes from.
EPOCH_HEADER = "Yoi-Stream-Epoch"
STREAM_QUEUE_BATCHES = 10_000
BACKLOG_CHUNK_EVENTS = 512
THREAD_TOKENS = 100
INTERNAL_ERROR_MESSAGE = "the runtime hit an internal error"
UNAUTHORIZED_MESSAGE = "authentication required"
_UINT_RE = re.compile(r"[0-9]{1,30}")

Answer = tuple[int, dict[str, Any]]
# The summary's counter of each worker status.
WORKER_COUNT_KEYS = {
    "running": "active_worker_count",
    "stopped": "stopped_worker_count",
    "cancelled": "cancelled_worker_count",
    "failed": "failed_worker_count",
}
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(compact_json(body), status_code=status, media_type="application/json", headers=headers)


def _error_response(exc: RuntimeApiError, headers: dict[str, str] | None = None) -> Response:
    return _json_response(exc.status, exc.to_json(), headers)


def _internal_error_response() -> Response:
    return _error_response(RuntimeApiError(INTERNAL_ERROR_MESSAGE))


# --------------------------------------------------------------------------------------------- middleware


class BearerToken:
    """The runtime's bearer token; it never shows in a repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value.encode("utf-8")

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    __str__ = __repr__

    def matches(self, presented: bytes) -> bool:
        """Constant-time comparison with a presented credential."""
        return hmac.compare_digest(presented, self._value)


class BearerAuthMiddleware:
    """Refuses every HTTP request without the runtime's bearer token (``token=None``: no auth)."""

    def __init__(self, app: ASGIApp, *, token: BearerToken | None) -> None:
        self.app = app
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuthMiddleware(token=<redacted>)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None:
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, credentials = header.partition(b" ")
        # Compare even when the scheme is wrong, so timing says nothing about which part failed.
        matches = self._token.matches(credentials.strip())
        if not (matches and scheme.lower() == b"bearer"):
            error = RuntimeApiError(UNAUTHORIZED_MESSAGE, code="unauthorized", status=401)
            response = _error_response(error, {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class EncodedSlashMiddleware:
    """Refuses paths with a percent-encoded ``/``: the server decodes it into a separator, so an id holding
    one would silently address another route (``a%2Finput`` -> ``a/input``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or b""
            if b"%2f" in raw.lower():
                error = InvalidRequest(f"worker_id must match {ID_PATTERN}")
                await _error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------------------------- metrics


class RuntimeMetrics:
    """The runtime's Prometheus series (``GET /metrics``, behind the bearer token like every route): workers
    by status, events written, streams open (read from the core at scrape), and request counts and times."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.registry = CollectorRegistry()
        self._runtime = runtime
        self.requests = Counter(
            "yoi_runtime_http_requests_total",
            "Requests served, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "yoi_runtime_http_request_duration_seconds",
            "Time to answer a request (to the response head, for event streams).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # collected only when scraped (registering must not read the core)

    def collect(self) -> list[Metric]:
        summary = self._runtime.summary()
        workers = GaugeMetricFamily("yoi_runtime_workers", "Workers by status.", labels=["status"])
        for status, key in WORKER_COUNT_KEYS.items():
            workers.add_metric([status], float(summary.get(key) or 0))
        events = CounterMetricFamily(
            "yoi_runtime_events_written",
            "Events made durable since this process started.",
            value=float(self._runtime.events_written),
        )
        streams = GaugeMetricFamily(
            "yoi_runtime_event_streams_open",
            "SSE event streams being served.",
            value=float(summary.get("event_streams_open", 0)),
        )
        return [workers, events, streams]

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request was answered."""
        self.requests.labels(route, method, str(status)).inc()
        self.durations.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------------- event streams


class EventStream:
    """One SSE stream: the core's listener on one side (any thread), the response generator on the other."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_batches: int, ping_interval: float) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Sequence[Event] | None] = asyncio.Queue(maxsize=max_batches)
        self._ping_interval = ping_interval
        self._overflowed = False
        self._ending = False
        self._closed = False
        self.subscription: Subscription | None = None
        self.on_close: Callable[[EventStream], None] | None = None

    def listener(self, events: Sequence[Event]) -> None:
        """The core's callback: hand the batch to the event loop, never block."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            self._loop.call_soon_threadsafe(self._deliver, events)

    def _deliver(self, events: Sequence[Event] | None) -> None:
        if self._overflowed or self._closed:
            return
        try:
            self._queue.put_nowait(events)
        except asyncio.QueueFull:
            # A client too slow for its worker: end the stream after what is queued; it resumes by id.
            self._overflowed = True
            logger.warning("worker_runtime.server.stream_overflow")

    def end(self) -> None:
        """End the stream soon (server shutdown); call on the event loop."""
        self._ending = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def close(self) -> None:
        """Release the core subscription (idempotent); the stream is then no longer counted as open."""
        if self._closed:
            return
        self._closed = True
        if self.subscription is not None:
            # Closing takes the worker's lock, which is held across fsyncs: keep it off the event loop.
            try:
                self._loop.run_in_executor(None, self.subscription.close)
            except RuntimeError:  # the loop or its executor is shut down
                self.subscription.close()
        if self.on_close is not None:
            self.on_close(self)

    async def frames(self) -> AsyncIterator[bytes]:
        """The SSE body: reset notice, backlog, then live batches and pings until the worker exits."""
        sub = self.subscription
        assert sub is not None
        try:
            if sub.reset_earliest_seq is not None:
                reset = {"reason": sub.reset_reason, "earliest_seq": sub.reset_earliest_seq, "epoch": sub.epoch}
                yield f"event: reset\ndata: {compact_json(reset)}\n\n".encode()
            last_seq = 0
            backlog = sub.backlog
            for start in range(0, len(backlog), BACKLOG_CHUNK_EVENTS):
                chunk = backlog[start : start + BACKLOG_CHUNK_EVENTS]
                payload, last_seq, exited = _encode(chunk, last_seq)
                yield payload
                if exited:
                    return
            if sub.finished:
                return
            while not self._ending:
                if self._overflowed and self._queue.empty():
                    return
                try:
                    async with asyncio.timeout(self._ping_interval):
                        batch = await self._queue.get()
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if batch is None:
                    continue
                payload, last_seq, exited = _encode(batch, last_seq)
                if payload:
                    yield payload
                if exited:
                    return
        finally:
            self.close()


def _encode(events: Sequence[Event], last_seq: int) -> tuple[bytes, int, bool]:
    """SSE frames for events after ``last_seq``, up to and including a ``worker_exited``."""
    parts: list[str] = []
    exited = False
    for event in events:
        if event.seq <= last_seq:
            continue
        parts.append(f"id: {event.seq}\nevent: {event.kind}\ndata: {event.text}\n\n")
        last_seq = event.seq
        if event.kind == FINAL_EVENT:
            exited = True
            break
    return "".join(parts).encode("utf-8"), last_seq, exited


class EventStreamResponse(StreamingResponse):
    """A streaming response that always releases its stream, even when it never got to iterate."""

    def __init__(self, stream: EventStream) -> None:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if stream.subscription is not None and stream.subscription.epoch:
            headers[EPOCH_HEADER] = stream.subscription.epoch
        super().__init__(stream.frames(), media_type="text/event-stream", headers=headers)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.close()


# --------------------------------------------------------------------------------------------- routes


class RuntimeServer:
    """The route handlers over one WorkerRuntime, and their ASGI app (``app``)."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        *,
        idempotency: IdempotencyCache,
        token: str | None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        stream_queue_batches: int = STREAM_QUEUE_BATCHES,
    ) -> None:
        self.runtime = runtime
        self.idempotency = idempotency
        self.ping_interval = ping_interval
        self.stream_queue_batches = stream_queue_batches
        self._streams: set[EventStream] = set()
        self._shutting_down = False
        self.metrics = RuntimeMetrics(runtime)
        self.app: Starlette = _build_app(self, token=token)

    def __repr__(self) -> str:
        return f"RuntimeServer(runtime_id={self.runtime.runtime_id!r})"

    def begin_shutdown(self) -> None:
        """End every open event stream (clients resume by id elsewhere or later); call on the loop."""
        self._shutting_down = True
        for stream in list(self._streams):
            stream.end()

    # ---- queries

    async def metrics_text(self, request: Request) -> Response:
        body = await run_in_threadpool(self.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def runtime_summary(self, request: Request) -> Response:
        summary = await run_in_threadpool(self.runtime.summary)
        return _json_response(200, {"runtime": summary})

    async def list_workers(self, request: Request) -> Response:
        workers = await run_in_threadpool(self.runtime.list_workers)
        return _json_response(200, {"workers": workers})

    async def get_worker(self, request: Request) -> Response:
        worker = await run_in_threadpool(self.runtime.get_worker, request.path_params["worker_id"])
        return _json_response(200, {"worker": worker})

    async def transcript(self, request: Request) -> Response:
        start = _query_uint(request, "start")
        limit = _query_uint(request, "limit")
        kwargs = {k: v for k, v in (("start", start), ("limit", limit)) if v is not None}
        page = await run_in_threadpool(self.runtime.transcript, request.path_params["worker_id"], **kwargs)
        return _json_response(200, {"transcript": page})

    async def events(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]
        after = _event_cursor(request)
        if request.method == "HEAD":
            worker = await run_in_threadpool(self.runtime.get_worker, worker_id)
            return Response(media_type="text/event-stream", headers={EPOCH_HEADER: worker["epoch"]})
        stream = EventStream(
            asyncio.get_running_loop(), max_batches=self.stream_queue_batches, ping_interval=self.ping_interval
        )

        def subscribe() -> None:
            # Stored from the thread itself, so a cancel while it runs cannot leak the subscription.
            stream.subscription = self.runtime.subscribe(worker_id, after=after, listener=stream.listener)

        try:
            await run_in_threadpool(subscribe)
        except BaseException:
            stream.close()
            raise
        self._streams.add(stream)
        stream.on_close = self._streams.discard
        if self._shutting_down:
            stream.end()
        return EventStreamResponse(stream)

    # ---- commands

    async def create_worker(self, request: Request) -> Response:
        def run(body: Any) -> Answer:
            return 201, {"worker": self.runtime.create_worker(body)}

        return await self._command(request, run)

    async def send_input(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]

        def run(body: Any) -> Answer:
            return 200, {"ack": self.runtime.send_input(worker_id, body)}

        return await self._command(request, run)

    async def stop_worker(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]

        def run(body: Any) -> Answer:
            return 200, {"ack": self.runtime.stop_worker(worker_id, reason=_reason(body))}

        return await self._command(request, run)

    async def cancel_worker(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]

        def run(body: Any) -> Answer:
            return 200, {"ack": self.runtime.cancel_worker(worker_id, reason=_reason(body))}

        return await self._command(request, run)

    async def _command(self, request: Request, run: Callable[[Any], Answer]) -> Response:
        """Read the body, then run the command once per Idempotency-Key."""
        key = parse_key(request.headers.get("idempotency-key"))
        raw = await _read_body(request, self.runtime.config.max_body_bytes)
        parsed, parse_error = _parse_json(raw)
        if key is None:
            return _json_response(*await _execute(run, parsed, parse_error))
        canonical = canonical_body(parsed, raw, parsed_ok=parse_error is None)
        fingerprint = request_fingerprint(method=request.method, path=request.url.path, body=canonical)
        async with self.idempotency.hold(key):
            stored = await run_in_threadpool(self.idempotency.lookup, key, fingerprint)
            if stored is not None:
                return _json_response(stored.status, stored.body, {"Idempotent-Replayed": "true"})
            status, body = await _execute(run, parsed, parse_error)
            if is_replayable(status, body):
                await run_in_threadpool(self.idempotency.record, key, fingerprint, status, body)
        return _json_response(status, body)


async def _execute(run: Callable[[Any], Answer], parsed: Any, parse_error: RuntimeApiError | None) -> Answer:
    if parse_error is not None:
        return parse_error.status, parse_error.to_json()
    try:
        return await run_in_threadpool(run, parsed)
    except RuntimeApiError as exc:
        return exc.status, exc.to_json()


def _reason(body: Any) -> Any:
    if body is None:
        return None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body.get("reason")


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to be over ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
    return bytes(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes) -> tuple[Any, RuntimeApiError | None]:
    """The parsed body (None when empty), or the error to answer with."""
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant), None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, InvalidJson("the body is not valid JSON")


def _query_uint(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _UINT_RE.fullmatch(raw):
        raise InvalidQuery(f"{name} must be a non-negative integer")
    return int(raw)


def _event_cursor(request: Request) -> int | None:
    """``Last-Event-ID`` (what a reconnecting client sends) wins over ``?after=``; neither means live."""
    header = request.headers.get("last-event-id", "").strip()
    if header:
        if not _UINT_RE.fullmatch(header):
            raise InvalidRequest("Last-Event-ID must be a non-negative integer")
        return int(header)
    return _query_uint(request, "after")


# --------------------------------------------------------------------------------------------- the app


def _guard(handler: Callable[[Request], Any], metrics: RuntimeMetrics) -> Callable[[Request], Any]:
    """Turn typed errors into protocol error bodies and anything unexpected into a bare 500; count and time
    every answer."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        response = await _answer(request)
        metrics.observe(handler.__name__, request.method, response.status_code, time.perf_counter() - started)
        return response

    async def _answer(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except RuntimeApiError as exc:
            return _error_response(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # the client left mid-body; nobody reads this answer
        except Exception:
            logger.exception("worker_runtime.server.internal_error", extra={"route": handler.__name__})
            return _internal_error_response()

    endpoint.__name__ = handler.__name__
    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (and any other HTTPException) in the protocol's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        prefix = "/v1/workers/"
        path = request.url.path
        if path.startswith(prefix):
            segments = [s for s in path[len(prefix) :].split("/") if s]
            if not all(is_valid_id(s) for s in segments):
                return _error_response(InvalidRequest(f"worker_id must match {ID_PATTERN}"))
        return _error_response(RuntimeApiError("no such route", code="not_found", status=404))
    if exc.status_code == 405:
        error = RuntimeApiError("method not allowed on this route", code="method_not_allowed", status=405)
        return _error_response(error, dict(exc.headers or {}))
    code = "payload_too_large" if exc.status_code == 413 else "invalid_request"
    status = exc.status_code if 400 <= exc.status_code < 500 else 400
    return _error_response(RuntimeApiError("the request was refused", code=code, status=status))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("worker_runtime.server.unhandled_error", extra={"error_type": type(exc).__name__})
    return _internal_error_response()


def create_server(
    runtime: WorkerRuntime,
    *,
    store: Store,
    token: str | None,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    stream_queue_batches: int = STREAM_QUEUE_BATCHES,
) -> RuntimeServer:
    """The server for an opened runtime (its ASGI app is ``.app``); ``token=None`` serves without auth,
    which the CLI allows on loopback only. Takes over the idempotency entries the runtime loaded."""
    cache = IdempotencyCache(store, runtime.idempotency_entries)
    runtime.idempotency_entries = []
    return RuntimeServer(
        runtime,
        idempotency=cache,
        token=token,
        ping_interval=ping_interval,
        stream_queue_batches=stream_queue_batches,
    )


def _build_app(server: RuntimeServer, *, token: str | None) -> Starlette:
    worker = "/v1/workers/{worker_id}"
    metrics = server.metrics
    routes = [
        Route("/v1/runtime", _guard(server.runtime_summary, metrics), methods=["GET"]),
        Route("/v1/workers", _guard(server.list_workers, metrics), methods=["GET"]),
        Route("/v1/workers", _guard(server.create_worker, metrics), methods=["POST"]),
        Route(worker, _guard(server.get_worker, metrics), methods=["GET"]),
        Route(f"{worker}/input", _guard(server.send_input, metrics), methods=["POST"]),
        Route(f"{worker}/stop", _guard(server.stop_worker, metrics), methods=["POST"]),
        Route(f"{worker}/cancel", _guard(server.cancel_worker, metrics), methods=["POST"]),
        Route(f"{worker}/transcript", _guard(server.transcript, metrics), methods=["GET"]),
        Route(f"{worker}/events", _guard(server.events, metrics), methods=["GET"]),
        # Prometheus, under the same bearer token as every route.
        Route("/metrics", _guard(server.metrics_text, metrics), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Stop/cancel wait for the worker to end in a thread; leave room for many at once.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREAD_TOKENS
        yield

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.add_middleware(EncodedSlashMiddleware)
    bearer = BearerToken(token) if token is not None else None
    app.add_middleware(BearerAuthMiddleware, token=bearer)  # added last = outermost: auth comes first
    return app
