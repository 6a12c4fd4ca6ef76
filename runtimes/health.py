"""Runtime health: probing runtimes and keeping the status + capability cache on their rows fresh.

A probe writes to the runtime's shared row only what it learnt about the runtime: a failure of the
prober's own setup (``LOCAL_FAILURES``: a token ref that does not resolve in this process, an embedded
store that another process serves) is reported to the caller and leaves the row as it was. In a serving
process, ``HealthMonitor`` re-probes in the background every runtime whose breaker has half-opened (and,
less often, every runtime whose row says it failed), so a runtime that comes back is marked online
without any browser call.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from runtimes.errors import (
    LOCAL_FAILURES,
    TRANSPORT_FAILURES,
    RuntimeBusy,
    RuntimeCircuitOpen,
    RuntimeDisabled,
    RuntimeMisconfigured,
    RuntimeNotFound,
    YoiError,
)
from runtimes.models import ProbeRecord, Runtime
from runtimes.registry import StatusWriter, registry
from runtimes.status import DeferredWrites, record_failure, status_for_error
from runtimes.types import RuntimeSummary

logger = logging.getLogger(__name__)
MAX_PARALLEL_PROBES = 16
# Failures the call itself already wrote to the row (runtimes/registry.py RuntimeCall).
RECORDED_BY_CALL: tuple[type[YoiError], ...] = (*TRANSPORT_FAILURES, RuntimeMisconfigured)
# Probe records kept per runtime (the admin shows the newest).
PROBE_HISTORY = 50
# The state of a probe this process could not make (LOCAL_FAILURES): nothing was learnt about the runtime.
LOCAL_FAILURE = "local_failure"
FAILED_STATES = ("offline", "unauthorized", "error")


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of probing one runtime."""

    runtime_id: str
    state: str  # online | offline | unauthorized | error | disabled | not_found | busy | local_failure
    error_code: str
    latency_ms: float
    reason: str = ""  # "tls", or the setting at fault, when the failure says

    @property
    def local(self) -> bool:
        """True when this process could not probe: the row was left as it was."""
        return self.state == LOCAL_FAILURE


def _probe_upstream(
    runtime_id: str, *, refresh: bool = True, guarded: bool = False, writes: StatusWriter | None = None
) -> tuple[RuntimeSummary | YoiError, float]:
    """Ask the runtime for its summary; with ``refresh=False`` and ``writes`` no database access (pool
    threads). ``guarded=True`` goes through the breaker: in half-open the probe is its one trial call."""
    started = time.perf_counter()
    try:
        summary: RuntimeSummary = registry.call(
            runtime_id, lambda handle: handle.summary(), guarded=guarded, refresh=refresh, writes=writes
        )
    except YoiError as error:
        return error, (time.perf_counter() - started) * 1000
    return summary, (time.perf_counter() - started) * 1000


def _record_probe(
    runtime_id: str, outcome: RuntimeSummary | YoiError, latency_ms: float, *, source: str
) -> ProbeResult:
    """The probe's result, kept in the runtime's probe history; a success also refreshes the capabilities
    cache (the call itself marked the status)."""
    if isinstance(outcome, RuntimeDisabled | RuntimeNotFound):
        state = "disabled" if isinstance(outcome, RuntimeDisabled) else "not_found"
        return ProbeResult(runtime_id, state, outcome.code, 0.0)
    if isinstance(outcome, RuntimeBusy):
        # This process already has max_in_flight calls waiting on it: no new answer, the row keeps the last.
        return ProbeResult(runtime_id, "busy", outcome.code, 0.0)
    if isinstance(outcome, LOCAL_FAILURES):
        # What this process lacks says nothing about the runtime: the shared row keeps what others learnt.
        logger.warning(
            "runtimes.probe.local_failure",
            extra={"runtime_id": runtime_id, "code": outcome.code, "reason": type(outcome).__name__},
        )
        return ProbeResult(runtime_id, LOCAL_FAILURE, outcome.code, latency_ms)
    if isinstance(outcome, YoiError):
        if not isinstance(outcome, RECORDED_BY_CALL):
            # Up, but not answering as a runtime must (no summary route, a refusal): an error state.
            record_failure(runtime_id, outcome)
        logger.info(
            "runtimes.probe.failed",
            extra={
                "runtime_id": runtime_id,
                "code": outcome.code,
                "reason": outcome.reason,
                "latency_ms": round(latency_ms, 1),
            },
        )
        state = status_for_error(outcome)
        result = ProbeResult(runtime_id, state, outcome.code, latency_ms, outcome.reason or "")
    else:
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
        result = ProbeResult(runtime_id, "online", "", latency_ms)
    _remember_probe(result, source=source)
    return result


def _remember_probe(result: ProbeResult, *, source: str) -> None:
    """Add the probe to the runtime's history, keeping the newest PROBE_HISTORY."""
    ProbeRecord.objects.create(
        runtime_id=result.runtime_id,
        state=result.state,
        code=result.error_code,
        latency_ms=result.latency_ms,
        source=source,
    )
    older = ProbeRecord.objects.filter(runtime_id=result.runtime_id).values_list("id", flat=True)[PROBE_HISTORY:]
    stale_ids = list(older)
    if stale_ids:
        ProbeRecord.objects.filter(id__in=stale_ids).delete()


def runtime_probe(*, runtime_id: str, source: str = "stale") -> ProbeResult:
    """Ask one runtime for its summary and record status, capabilities and timestamps on its row."""
    return _record_probe(runtime_id, *_probe_upstream(runtime_id), source=source)


def probe_runtimes(*, runtime_ids: list[str] | None = None, source: str = "command") -> list[ProbeResult]:
    """Probe many runtimes in parallel (bounded); every probe is bounded by its runtime's timeouts."""
    connections = registry.connections(fresh=True)
    ids = sorted(connections) if runtime_ids is None else list(runtime_ids)
    if not ids:
        return []
    writes = DeferredWrites()
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(ids)), thread_name_prefix="probe") as pool:
        # The rows were loaded just above: pool threads must not reload them nor write (no database there).
        outcomes = list(
            pool.map(lambda runtime_id: _probe_upstream(runtime_id, refresh=False, writes=writes), ids)
        )
    writes.apply()
    return [
        _record_probe(runtime_id, *outcome, source=source)
        for runtime_id, outcome in zip(ids, outcomes, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------
# Background re-probe (serving processes)
# ---------------------------------------------------------------------------------------------------------


class HealthMonitor:
    """A thread that makes health recover without a browser call.

    Every ``interval`` seconds it probes each enabled runtime whose breaker (in this process) has
    half-opened, as the breaker's one trial call: an answer closes the breaker and marks the row online, a
    failure opens it again with a longer cooldown. Every ``sweep_interval`` seconds it also probes the
    runtimes whose row says they failed (offline, unauthorized, error) while their breaker here is closed,
    so a runtime that failed a few calls and came back is not left marked offline.
    """

    def __init__(self, *, interval: float, sweep_interval: float) -> None:
        self.interval = interval
        self.sweep_interval = sweep_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep = time.monotonic()

    def __repr__(self) -> str:
        return f"HealthMonitor(interval={self.interval:g})"

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, waiting at most ``timeout`` for a probe in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                logger.exception("runtimes.health.monitor_failed")
            finally:
                close_old_connections()

    def run_once(self) -> list[ProbeResult]:
        """One pass: the half-open trials, and the failed-row sweep when it is due."""
        connections = registry.connections()
        due = [
            runtime_id
            for runtime_id, connection in sorted(connections.items())
            if connection.enabled and registry.breaker_state(runtime_id) == "half_open"
        ]
        results = [result for result in map(self._trial, due) if result is not None]
        now = time.monotonic()
        if now - self._last_sweep >= self.sweep_interval:
            self._last_sweep = now
            results += [
                result for result in map(self._trial, self._failed_rows(exclude=due)) if result is not None
            ]
        return results

    def _failed_rows(self, *, exclude: list[str]) -> list[str]:
        rows = Runtime.objects.filter(enabled=True, status__in=FAILED_STATES).exclude(runtime_id__in=exclude)
        return [
            rid for rid in rows.values_list("runtime_id", flat=True) if registry.breaker_state(rid) == "closed"
        ]

    def _trial(self, runtime_id: str) -> ProbeResult | None:
        outcome, latency_ms = _probe_upstream(runtime_id, guarded=True)
        if isinstance(outcome, RuntimeCircuitOpen):
            return None  # another call holds the trial, or the breaker opened again meanwhile
        result = _record_probe(runtime_id, outcome, latency_ms, source="background")
        if result.state == "online":
            logger.info("runtimes.health.recovered", extra={"runtime_id": runtime_id})
        return result


def start_health_monitor() -> HealthMonitor | None:
    """Start the background re-probe of this serving process (None when ``YOI_HEALTH_MONITOR_SECONDS`` is 0)."""
    interval = float(getattr(settings, "YOI_HEALTH_MONITOR_SECONDS", 1.0))
    if interval <= 0:
        return None
    monitor = HealthMonitor(interval=interval, sweep_interval=float(settings.YOI_STATUS_STALE_SECONDS))
    monitor.start()
    return monitor
