"""A per-runtime bulkhead: at most ``limit`` calls in flight to one runtime, the next one refused at once.

A call to a hanging runtime holds its request thread until the read timeout. Without a bound, a burst of
calls to one such runtime takes every request thread of the process, and ``/healthz`` and calls to
healthy runtimes queue behind them. With it, that runtime holds at most ``limit`` threads and every call
beyond answers ``503 runtime_busy`` with ``Retry-After`` without waiting (docs/operations.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from runtimes.errors import RuntimeBusy

DEFAULT_MAX_IN_FLIGHT = 32
# A slot frees as soon as one call ends; a second is long enough for a client not to spin on the refusal.
BUSY_RETRY_AFTER = 1.0


class Bulkhead:
    """A counter of calls in flight to one runtime, refusing (never queueing) beyond ``limit``."""

    def __init__(self, runtime_id: str, *, limit: int) -> None:
        if limit < 1:
            raise ValueError("a bulkhead's limit must be at least 1")
        self.runtime_id = runtime_id
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"Bulkhead(runtime_id={self.runtime_id!r}, in_flight={self._in_flight}, limit={self.limit})"

    @property
    def in_flight(self) -> int:
        """How many calls hold a slot now."""
        return self._in_flight

    def acquire(self) -> None:
        """Take one slot; RuntimeBusy at once when all ``limit`` are taken."""
        with self._lock:
            if self._in_flight >= self.limit:
                raise RuntimeBusy(runtime_id=self.runtime_id, retry_after=BUSY_RETRY_AFTER)
            self._in_flight += 1

    def release(self) -> None:
        """Give back a slot taken by ``acquire``."""
        with self._lock:
            self._in_flight -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block (``acquire`` ... ``release``)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()
