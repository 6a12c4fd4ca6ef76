"""A per-process memory cache whose entries live at most its TIMEOUT, whatever lifetime a caller asks for.

Sessions are cached (``cached_db``) so that a request does not query the session table. Without a cache
shared by every process (Redis), a session ended elsewhere — a logout served by another Backend process,
``manage.py clearsessions``, ``watch_worker`` deleting its session — must stop working here soon, not when
the cached copy would expire (the session's own age: two weeks). So this cache caps every entry's
lifetime at its ``TIMEOUT`` (a few seconds): the database stays the truth, the cache only spares repeated
reads of it.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.locmem import LocMemCache


class BoundedLocMemCache(LocMemCache):
    """LocMemCache with every entry's timeout capped at the cache's TIMEOUT."""

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        cap = self.default_timeout
        if timeout is DEFAULT_TIMEOUT or timeout is None or (cap is not None and timeout > cap):
            timeout = cap
        return super().get_backend_timeout(timeout)
