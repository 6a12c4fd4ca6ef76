"""A per-runtime circuit breaker: fast-fail while a runtime keeps failing, half-open to probe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from runtimes import metrics
from runtimes.errors import RuntimeCircuitOpen

FAILURE_THRESHOLD = 5
BASE_COOLDOWN = 5.0
MAX_COOLDOWN = 60.0


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open → (cooldown) → half-open: one trial call.

    A trial success closes it; a trial failure opens it again with a doubled cooldown (capped).
    """

    def __init__(
        self,
        runtime_id: str,
        *,
        threshold: int = FAILURE_THRESHOLD,
        base_cooldown: float = BASE_COOLDOWN,
        max_cooldown: float = MAX_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime_id = runtime_id
        self._threshold = threshold
        self._base_cooldown = base_cooldown
        self._max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._cooldown = base_cooldown
        self._trial_in_flight = False

    def __repr__(self) -> str:
        return f"CircuitBreaker(runtime_id={self.runtime_id!r}, state={self.state!r})"

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._cooldown:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Raise RuntimeCircuitOpen unless a call may go through now."""
        with self._lock:
            state = self._state_locked()
            if state == "closed":
                return
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return
            assert self._opened_at is not None
            remaining = self._cooldown - (self._clock() - self._opened_at)
        raise RuntimeCircuitOpen(runtime_id=self.runtime_id, retry_after=max(remaining, 1.0))

    def record_success(self) -> None:
        """A call reached the runtime and it answered."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._cooldown = self._base_cooldown
            self._trial_in_flight = False

    def record_failure(self) -> None:
        """A call failed in a way that says the runtime is unhealthy."""
        with self._lock:
            self._failures += 1
            tripped = False
            if self._trial_in_flight:
                self._cooldown = min(self._cooldown * 2, self._max_cooldown)
                self._opened_at = self._clock()
                tripped = True
            elif self._opened_at is None and self._failures >= self._threshold:
                self._opened_at = self._clock()
                tripped = True
            self._trial_in_flight = False
        if tripped:
            metrics.breaker_tripped(self.runtime_id)

    def record_inconclusive(self) -> None:
        """A call ended without saying anything about the runtime (this process could not make it): a
        half-open trial is given back, nothing else changes."""
        with self._lock:
            self._trial_in_flight = False
