"""The Backend's Prometheus series: one place that defines them, small calls where things happen.

Labels are bounded: runtime ids (from the registry), route names, error codes, HTTP statuses and close
codes; never worker ids, URLs or users. Series that describe state rather than events (runtime up, breaker
state) are read when ``/metrics`` is scraped, from the rows and this process's breakers, so the hot paths
pay nothing for them. Every figure is this process's own: daphne serves the Backend from one process; a
deployment that runs several scrapes each of them (docs/operations.md).

Besides the series, this module keeps per-runtime tallies of open upstream streams and browser sockets in
this process, for the admin's operator view (``stream_counts``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

# Upstream and API latencies: loopback answers take a millisecond, a dead runtime its read timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CHILD_CACHE = 4096
BREAKER_STATE_VALUES = {"closed": 0.0, "half_open": 0.5, "open": 1.0}
# Reset reasons the Backend itself sends; anything else a runtime reports is counted as "other".
KNOWN_RESET_REASONS = frozenset(
    {"history_expired", "cursor_ahead", "slow_consumer", "stream_replaced", "history_unavailable"}
)

UPSTREAM_REQUESTS = Counter(
    "yoi_upstream_requests_total",
    "Requests from this Backend to runtimes, by runtime, route and outcome (ok or the error code).",
    ["runtime_id", "route", "code"],
)
UPSTREAM_DURATION = Histogram(
    "yoi_upstream_request_duration_seconds",
    "Time of requests to runtimes (to the response head, for event streams).",
    ["runtime_id", "route"],
    buckets=LATENCY_BUCKETS,
)
API_REQUESTS = Counter(
    "yoi_api_requests_total",
    "HTTP requests served, by route name, method and status.",
    ["route", "method", "status"],
)
API_DURATION = Histogram(
    "yoi_api_request_duration_seconds",
    "Time to build an HTTP response, by route name and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
BREAKER_TRIPS = Counter(
    "yoi_breaker_trips_total", "Times a runtime's circuit breaker opened in this process.", ["runtime_id"]
)
RELAY_UPSTREAMS_OPEN = Gauge("yoi_relay_upstreams_open", "Upstream event streams open in this process.")
RELAY_SUBSCRIBERS = Gauge("yoi_relay_subscribers", "Browser sockets subscribed to a relay in this process.")
RELAY_EVENTS = Counter(
    "yoi_relay_events_total", "Events the relay took from upstreams (each once, however many watch)."
)
RELAY_RESETS = Counter("yoi_relay_resets_total", "Reset frames sent to browsers, by reason.", ["reason"])
RELAY_RECONNECTS = Counter(
    "yoi_relay_reconnects_total", "Upstream event streams lost and scheduled to reconnect.", ["runtime_id"]
)
WS_OPEN = Gauge("yoi_ws_connections_open", "Browser WebSocket connections accepted and still open.")
WS_CLOSES = Counter("yoi_ws_closes_total", "Browser WebSocket connections ended, by close code.", ["code"])


# The labelled children of the hot-path series, looked up once per label set (``labels()`` validates and
# locks on every call); the label sets are bounded, and so are these caches.
_upstream_count = functools.lru_cache(maxsize=CHILD_CACHE)(UPSTREAM_REQUESTS.labels)
_upstream_time = functools.lru_cache(maxsize=CHILD_CACHE)(UPSTREAM_DURATION.labels)
_api_count = functools.lru_cache(maxsize=CHILD_CACHE)(API_REQUESTS.labels)
_api_time = functools.lru_cache(maxsize=CHILD_CACHE)(API_DURATION.labels)


def observe_upstream(runtime_id: str, route: str, code: str, seconds: float) -> None:
    """One request to a runtime ended: ``code`` is ``ok`` or the typed error's code."""
    _upstream_count(runtime_id, route, code).inc()
    _upstream_time(runtime_id, route).observe(seconds)


@contextmanager
def upstream_request(runtime_id: str, route: str) -> Iterator[None]:
    """Time and count the request made inside the block; an exception's ``code`` (a typed error) is its
    outcome, anything else counts as ``internal_error``."""
    started = time.perf_counter()
    code = "ok"
    try:
        yield
    except BaseException as exc:
        code = str(getattr(exc, "code", "internal_error"))
        raise
    finally:
        observe_upstream(runtime_id, route, code, time.perf_counter() - started)


def observe_api(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP response was built."""
    _api_count(route, method, str(status)).inc()
    _api_time(route, method).observe(seconds)


def breaker_tripped(runtime_id: str) -> None:
    """A circuit breaker opened (from closed, or again after a failed half-open trial)."""
    BREAKER_TRIPS.labels(runtime_id).inc()


def relay_event() -> None:
    """The relay took one new event from an upstream."""
    RELAY_EVENTS.inc()


def relay_reset(reason: str) -> None:
    """A reset frame went to a browser."""
    RELAY_RESETS.labels(reason if reason in KNOWN_RESET_REASONS else "other").inc()


def relay_reconnect(runtime_id: str) -> None:
    """An upstream ended before its worker did and will be reopened."""
    RELAY_RECONNECTS.labels(runtime_id).inc()


def count_relay_subscribers(counter: Callable[[], float]) -> None:
    """Read ``yoi_relay_subscribers`` from ``counter`` at each scrape (the relay's own bookkeeping)."""
    RELAY_SUBSCRIBERS.set_function(counter)


class _Tally:
    """Counts by runtime id; a key is dropped when it reaches zero, so it never outgrows what is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, key: str, delta: int) -> None:
        with self._lock:
            value = self._counts.get(key, 0) + delta
            if value > 0:
                self._counts[key] = value
            else:
                self._counts.pop(key, None)

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)


_upstreams = _Tally()
_sockets = _Tally()


@contextmanager
def relay_upstream(runtime_id: str) -> Iterator[None]:
    """An upstream event stream of ``runtime_id`` is open (being read) for the duration of the block."""
    RELAY_UPSTREAMS_OPEN.inc()
    _upstreams.add(runtime_id, 1)
    try:
        yield
    finally:
        _upstreams.add(runtime_id, -1)
        RELAY_UPSTREAMS_OPEN.dec()


def socket_opened(runtime_id: str | None) -> None:
    """A browser socket was accepted (``runtime_id``: the runtime it watches, when it names one)."""
    WS_OPEN.inc()
    if runtime_id:
        _sockets.add(runtime_id, 1)


def socket_closed(runtime_id: str | None, code: int | None) -> None:
    """An accepted browser socket ended with close ``code`` (None: the connection dropped without one)."""
    WS_OPEN.dec()
    if runtime_id:
        _sockets.add(runtime_id, -1)
    socket_refused(code)


def socket_refused(code: int | None) -> None:
    """A socket ended (refused at the handshake, or closed after it) with close ``code``."""
    WS_CLOSES.labels(close_code_label(code)).inc()


def close_code_label(code: int | None) -> str:
    """The label of a close code: the protocol's (1000-1015) and ours (4000-4599) as they are, else ``other``."""
    if code is None:
        return "none"
    if 1000 <= code <= 1015 or 4000 <= code <= 4599:
        return str(code)
    return "other"


@dataclass(frozen=True)
class StreamCounts:
    """What this process holds open for one runtime right now."""

    upstreams: int
    sockets: int


def stream_counts(runtime_id: str) -> StreamCounts:
    """Open upstream event streams and browser sockets of ``runtime_id`` in this process."""
    return StreamCounts(upstreams=_upstreams.get(runtime_id), sockets=_sockets.get(runtime_id))


class RuntimeStateCollector:
    """``yoi_runtime_up`` (from the shared rows) and ``yoi_breaker_state`` (this process), read at scrape.

    ``breaker_state`` is the registry's (runtimes/registry.py registers the collector): the metrics module
    depends on nothing that reports to it.
    """

    def __init__(self, breaker_state: Callable[[str], str]) -> None:
        self._breaker_state = breaker_state

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting: registering the collector must not query the database.
        yield GaugeMetricFamily("yoi_runtime_up", "", labels=["runtime_id"])
        yield GaugeMetricFamily("yoi_breaker_state", "", labels=["runtime_id"])

    def collect(self) -> Iterable[Metric]:
        from runtimes.models import Runtime

        up = GaugeMetricFamily(
            "yoi_runtime_up",
            "1 when the runtime's last probe or call reached it (status online), else 0; enabled runtimes only.",
            labels=["runtime_id"],
        )
        breaker = GaugeMetricFamily(
            "yoi_breaker_state",
            "The runtime's circuit breaker in this process: 0 closed, 0.5 half-open, 1 open.",
            labels=["runtime_id"],
        )
        try:
            rows = list(
                Runtime.objects.filter(enabled=True).order_by("runtime_id").values_list("runtime_id", "status")
            )
        except Exception as exc:
            # The scrape still answers (the rest of the series); no text: a database error may name its host.
            logger.warning("runtimes.metrics.rows_unavailable", extra={"error_class": type(exc).__name__})
            rows = []
        for runtime_id, status in rows:
            up.add_metric([runtime_id], 1.0 if status == Runtime.Status.ONLINE else 0.0)
            breaker.add_metric([runtime_id], BREAKER_STATE_VALUES[self._breaker_state(runtime_id)])
        yield up
        yield breaker


_state_collector: RuntimeStateCollector | None = None


def watch_breakers(breaker_state: Callable[[str], str]) -> None:
    """Export runtime up/breaker state at scrape time, reading breakers through ``breaker_state`` (once)."""
    global _state_collector
    if _state_collector is None:
        _state_collector = RuntimeStateCollector(breaker_state)
        REGISTRY.register(_state_collector)
