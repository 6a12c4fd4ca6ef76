"""Per-user rate of worker commands (create, input, stop, cancel): DRF's UserRateThrottle at YOI_RATE_COMMANDS.

Counts live in the ``limits`` cache (Redis with REDIS_URL, so every Backend process shares one count per
user; otherwise per process). Over the rate, a command answers ``429 rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import caches
from rest_framework.throttling import UserRateThrottle


class CommandRateThrottle(UserRateThrottle):
    """At most YOI_RATE_COMMANDS commands per user (``N/period``; None = no limit)."""

    scope = "commands"

    def __init__(self) -> None:
        self.cache = caches["limits"]
        super().__init__()

    def get_rate(self) -> str | None:
        """The rate from settings, read when the throttle is made (once per request)."""
        rate: str | None = settings.YOI_RATE_COMMANDS
        return rate
