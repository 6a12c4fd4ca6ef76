"""Per-user rate of worker commands (create, input, stop, cancel): DRF's UserRateThrottle at YOI_RATE_COMMANDS.

Counts live in the ``limits`` cache (Redis with REDIS_URL, so every Backend process shares one count per
user, give or take requests checked at the same instant in two processes; otherwise per process). Over the
rate, a command answers ``429 rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle


class CommandRateThrottle(UserRateThrottle):
    """At most YOI_RATE_COMMANDS commands per user (``N/period``; None = no limit)."""

    scope = "commands"
    # DRF reads a user's history, then writes it back: two request threads at once would both pass. One
    # lock per process makes that read-and-write one step (with Redis, processes still race each other).
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.cache = caches["limits"]
        super().__init__()

    def get_rate(self) -> str | None:
        """The rate from settings, read when the throttle is made (once per request)."""
        rate: str | None = settings.YOI_RATE_COMMANDS
        return rate

    def allow_request(self, request: Request, view: Any) -> bool:
        """DRF's sliding-window check, one request at a time."""
        if self.rate is None:
            return True
        with self._lock:
            return super().allow_request(request, view)
