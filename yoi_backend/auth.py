"""Session authentication without a user query on every request.

Django resolves a session's user with ``backend.get_user(user_id)``, one query per request. This backend
reads the user from the cache first (the same cache as sessions: Redis with ``REDIS_URL``, else this
process's memory, entries kept at most ``YOI_SESSION_CACHE_SECONDS``). Saving or deleting a user drops
the cached copy, so a deactivation or a password change made through this process (or, with Redis, any)
applies at once; made elsewhere, within ``YOI_SESSION_CACHE_SECONDS``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save

KEY_PREFIX = "yoi.auth.user."


def _key(user_id: Any) -> str:
    return f"{KEY_PREFIX}{user_id}"


class CachedModelBackend(ModelBackend):
    """ModelBackend whose per-request user lookup is served from the cache."""

    def get_user(self, user_id: Any) -> Any:
        user = cache.get(_key(user_id))
        if user is None:
            user = super().get_user(user_id)
            if user is not None:  # inactive or missing users are not cached: they are looked up every time
                cache.set(_key(user_id), user, timeout=settings.YOI_SESSION_CACHE_SECONDS)
        return user


def forget_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    """Drop a changed or deleted user's cached copy."""
    cache.delete(_key(instance.pk))


# Connected on import: nothing is cached before this module is loaded (only its backend caches users).
post_save.connect(forget_user, sender=User, dispatch_uid="yoi_backend.auth.forget_user.save")
post_delete.connect(forget_user, sender=User, dispatch_uid="yoi_backend.auth.forget_user.delete")
