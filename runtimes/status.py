"""A runtime row's status as the Backend's calls see it: marked offline/unauthorized/error at once after a
transport-class failure, online after an answer (at most once per interval per process, so the hot path
does not write to the database). Written only by the one call path (``RuntimeRegistry.call``) and probes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.db.models import F
from django.utils import timezone

from runtimes.errors import RuntimeAuthFailed, RuntimeTimeout, RuntimeUnreachable, YoiError
from runtimes.models import Runtime

# A success refreshes last_seen_at on the row at most this often (keeps DB writes off the hot path).
LAST_SEEN_WRITE_INTERVAL = timedelta(seconds=10)

StatusWrite = Callable[[], None]


def status_for_error(error: YoiError) -> str:
    """The row status a failure leaves (a peer that fails TLS verification is not down: ``error``)."""
    if isinstance(error, RuntimeUnreachable | RuntimeTimeout) and error.reason != "tls":
        return "offline"
    if isinstance(error, RuntimeAuthFailed):
        return "unauthorized"
    return "error"


def record_online(runtime_id: str) -> None:
    """The runtime answered: online, seen now."""
    now = timezone.now()
    Runtime.objects.filter(runtime_id=runtime_id).update(
        status="online",
        status_error_code="",
        status_reason="",
        last_seen_at=now,
        checked_at=now,
        consecutive_failures=0,
    )


def record_failure(runtime_id: str, error: YoiError) -> None:
    """A call failed in a way that says the runtime is unhealthy, or that its settings cannot be used."""
    Runtime.objects.filter(runtime_id=runtime_id).update(
        status=status_for_error(error),
        status_error_code=error.code,
        status_reason=(error.reason or "")[:64],
        checked_at=timezone.now(),
        consecutive_failures=F("consecutive_failures") + 1,
    )


class DeferredWrites:
    """Status writes collected on threads that must not touch the database, applied later by their owner."""

    def __init__(self) -> None:
        self._writes: list[StatusWrite] = []

    def __repr__(self) -> str:
        return f"DeferredWrites(pending={len(self._writes)})"

    def __call__(self, write: StatusWrite) -> None:
        self._writes.append(write)

    def apply(self) -> None:
        """Run what was collected, in order (on the caller's thread)."""
        writes, self._writes = self._writes, []
        for write in writes:
            write()
