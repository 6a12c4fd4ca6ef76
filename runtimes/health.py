"""Runtime health: probing runtimes and keeping the status + capability cache on their rows fresh."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.utils import timezone

from runtimes.errors import TRANSPORT_FAILURES, RuntimeDisabled, RuntimeNotFound, YoiError
from runtimes.models import Runtime
from runtimes.registry import StatusWriter, registry
from runtimes.status import DeferredWrites, record_failure, status_for_error
from runtimes.types import RuntimeSummary

logger = logging.getLogger(__name__)
MAX_PARALLEL_PROBES = 16


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of probing one runtime."""

    runtime_id: str
    state: str  # online | offline | unauthorized | error | disabled | not_found
    error_code: str
    latency_ms: float


def _probe_upstream(
    runtime_id: str, *, refresh: bool = True, writes: StatusWriter | None = None
) -> tuple[RuntimeSummary | YoiError, float]:
    """Ask the runtime for its summary; with ``refresh=False`` and ``writes`` no database access (pool
    threads)."""
    started = time.perf_counter()
    try:
        summary: RuntimeSummary = registry.call(
            runtime_id, lambda handle: handle.summary(), guarded=False, refresh=refresh, writes=writes
        )
    except YoiError as error:
        return error, (time.perf_counter() - started) * 1000
    return summary, (time.perf_counter() - started) * 1000


def _record_probe(runtime_id: str, outcome: RuntimeSummary | YoiError, latency_ms: float) -> ProbeResult:
    """The probe's result; a success also refreshes the capabilities cache (the call marked the status)."""
    if isinstance(outcome, RuntimeDisabled | RuntimeNotFound):
        state = "disabled" if isinstance(outcome, RuntimeDisabled) else "not_found"
        return ProbeResult(runtime_id, state, outcome.code, 0.0)
    if isinstance(outcome, YoiError):
        if not isinstance(outcome, TRANSPORT_FAILURES):
            # Up, but not answering as a runtime must (no summary route, a refusal): an error state.
            record_failure(runtime_id, outcome)
        logger.info("runtimes.probe.failed", extra={"runtime_id": runtime_id, "code": outcome.code})
        return ProbeResult(runtime_id, status_for_error(outcome), outcome.code, latency_ms)
    now = timezone.now()
    Runtime.objects.filter(runtime_id=runtime_id).update(
        status="online",
        status_error_code="",
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
    writes = DeferredWrites()
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(ids)), thread_name_prefix="probe") as pool:
        # The rows were loaded just above: pool threads must not reload them (no database access there).
        outcomes = list(
            pool.map(lambda runtime_id: _probe_upstream(runtime_id, refresh=False, writes=writes), ids)
        )
    writes.apply()
    return [_record_probe(runtime_id, *outcome) for runtime_id, outcome in zip(ids, outcomes, strict=True)]
