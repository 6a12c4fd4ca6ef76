"""Runtime health: probing runtimes and keeping the status + capability cache on their rows fresh."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from django.db.models import F
from django.utils import timezone

from runtimes.errors import (
    TRANSPORT_FAILURES,
    RuntimeAuthFailed,
    RuntimeDisabled,
    RuntimeMisconfigured,
    RuntimeNotFound,
    RuntimeRejected,
    RuntimeTimeout,
    RuntimeUnreachable,
    RuntimeUnsupported,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.base import RuntimeHandle
from runtimes.registry import registry
from runtimes.types import RuntimeSummary

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Errors that are the runtime's own answer: it is up, whatever it said.
ANSWERED_ERRORS: tuple[type[YoiError], ...] = (WorkerNotFound, RuntimeRejected, RuntimeUnsupported)
# Failures written to the row at once: the runtime's own, and settings of ours that cannot be used.
RECORDED_FAILURES: tuple[type[YoiError], ...] = (*TRANSPORT_FAILURES, RuntimeMisconfigured)
MAX_PARALLEL_PROBES = 16
# A success refreshes last_seen_at on the row at most this often (keeps DB writes off the hot path).
LAST_SEEN_WRITE_INTERVAL = timedelta(seconds=10)


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of probing one runtime."""

    runtime_id: str
    state: str  # online | offline | unauthorized | error | disabled | not_found
    error_code: str
    latency_ms: float
    reason: str = ""  # "tls", or the setting at fault, when the failure says


def status_for_error(error: YoiError) -> str:
    """The row status a failed probe leaves (a peer that fails TLS verification is not down: ``error``)."""
    if isinstance(error, RuntimeUnreachable | RuntimeTimeout) and error.reason != "tls":
        return "offline"
    if isinstance(error, RuntimeAuthFailed):
        return "unauthorized"
    return "error"


def _probe_upstream(runtime_id: str, *, refresh: bool = True) -> tuple[RuntimeSummary | YoiError, float]:
    """Ask the runtime for its summary; with ``refresh=False`` no database access (runs in pool threads)."""
    started = time.perf_counter()
    try:
        summary: RuntimeSummary = registry.call(
            runtime_id, lambda handle: handle.summary(), guarded=False, refresh=refresh
        )
    except YoiError as error:
        return error, (time.perf_counter() - started) * 1000
    return summary, (time.perf_counter() - started) * 1000


def _record_probe(runtime_id: str, outcome: RuntimeSummary | YoiError, latency_ms: float) -> ProbeResult:
    from runtimes.models import Runtime

    if isinstance(outcome, RuntimeDisabled | RuntimeNotFound):
        state = "disabled" if isinstance(outcome, RuntimeDisabled) else "not_found"
        return ProbeResult(runtime_id, state, outcome.code, 0.0)
    if isinstance(outcome, YoiError):
        _record_failure(runtime_id=runtime_id, error=outcome)
        logger.info(
            "runtimes.probe.failed",
            extra={"runtime_id": runtime_id, "code": outcome.code, "reason": outcome.reason},
        )
        return ProbeResult(runtime_id, status_for_error(outcome), outcome.code, latency_ms, outcome.reason or "")
    now = timezone.now()
    Runtime.objects.filter(runtime_id=runtime_id).update(
        status="online",
        status_error_code="",
        status_reason="",
        capabilities=outcome.capabilities.to_json(),
        checked_at=now,
        last_seen_at=now,
        consecutive_failures=0,
    )
    return ProbeResult(runtime_id, "online", "", latency_ms)


def runtime_probe(*, runtime_id: str) -> ProbeResult:
    """Ask one runtime for its summary and record status, capabilities and timestamps on its row."""
    return _record_probe(runtime_id, *_probe_upstream(runtime_id))


def probe_runtimes(*, runtime_ids: list[str] | None = None) -> list[ProbeResult]:
    """Probe many runtimes in parallel (bounded); every probe is bounded by its runtime's timeouts."""
    connections = registry.connections(fresh=True)
    ids = sorted(connections) if runtime_ids is None else list(runtime_ids)
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(ids)), thread_name_prefix="probe") as pool:
        # The rows were loaded just above: pool threads must not reload them (no database access there).
        outcomes = list(pool.map(lambda runtime_id: _probe_upstream(runtime_id, refresh=False), ids))
    return [_record_probe(runtime_id, *outcome) for runtime_id, outcome in zip(ids, outcomes, strict=True)]


def runtime_call(runtime_id: str, operation: Callable[[RuntimeHandle], T]) -> T:
    """Run a command or query on a runtime through its breaker, and keep its row's status honest.

    A transport-class failure marks the row at once; an answer from the runtime — a result, or a refusal
    such as worker_not_found — marks it online, at most once per interval per process, so the hot path does
    not write to the database.
    """
    try:
        result = registry.call(runtime_id, operation)
    except RECORDED_FAILURES as error:
        registry.forget_online_mark(runtime_id)
        _record_failure(runtime_id=runtime_id, error=error)
        raise
    except ANSWERED_ERRORS:
        _mark_online(runtime_id)
        raise
    _mark_online(runtime_id)
    return result


def _mark_online(runtime_id: str) -> None:
    if registry.take_online_mark(runtime_id, interval=LAST_SEEN_WRITE_INTERVAL.total_seconds()):
        _record_success(runtime_id=runtime_id)


def _record_success(*, runtime_id: str) -> None:
    from runtimes.models import Runtime

    now = timezone.now()
    Runtime.objects.filter(runtime_id=runtime_id).update(
        status="online",
        status_error_code="",
        status_reason="",
        last_seen_at=now,
        checked_at=now,
        consecutive_failures=0,
    )


def _record_failure(*, runtime_id: str, error: YoiError) -> None:
    from runtimes.models import Runtime

    Runtime.objects.filter(runtime_id=runtime_id).update(
        status=status_for_error(error),
        status_error_code=error.code,
        status_reason=(error.reason or "")[:64],
        checked_at=timezone.now(),
        consecutive_failures=F("consecutive_failures") + 1,
    )
