"""Session authentication without a user query on every request, and revocation when credentials change.

Django resolves a session's user with ``backend.get_user(user_id)``, one query per request. This backend
reads the user from the cache first (the same cache as sessions: Redis with ``REDIS_URL``, else this
process's memory, entries kept at most ``YOI_SESSION_CACHE_SECONDS``). Saving or deleting a user drops
the cached copy, so a deactivation or a password change made through this process (or, with Redis, any)
applies at once; made elsewhere, within ``YOI_SESSION_CACHE_SECONDS``.

A password change (``set_password``, or an unusable password) or a deactivation also revokes the user's
API tokens and deletes their sessions (``user_revoke_credentials``). The session that made a change of its
own password lives on: Django's password-change views cycle it to a new key after saving.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils import timezone

logger = logging.getLogger(__name__)

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


def user_revoke_credentials(*, user_id: int) -> tuple[int, int]:
    """Delete the user's API tokens and sessions; ``(tokens, sessions)`` deleted.

    Sessions do not record their user in a column: the live ones are decoded (a rare, operator-driven
    event). Each is deleted through the session engine, so its cached copy goes too.
    """
    from rest_framework.authtoken.models import Token

    tokens, _ = Token.objects.filter(user_id=user_id).delete()
    store = import_module(settings.SESSION_ENGINE).SessionStore
    sessions = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if session.get_decoded().get("_auth_user_id") == str(user_id):
            store(session.session_key).delete()
            sessions += 1
    logger.info("yoi.auth.credentials_revoked", extra={"user_id": user_id, "tokens": tokens, "sessions": sessions})
    return tokens, sessions


def _note_credential_change(sender: type[User], instance: User, **kwargs: Any) -> None:
    """Before a save: will it change the password or deactivate the user?"""
    instance._yoi_revoke = False  # type: ignore[attr-defined]
    if instance.pk is None:
        return
    update_fields = kwargs.get("update_fields")
    # set_password() leaves the raw password in _password until the save (a hasher upgrade at login does not).
    changed = getattr(instance, "_password", None) is not None
    if not changed and (update_fields is None or {"password", "is_active"} & set(update_fields)):
        before = User.objects.filter(pk=instance.pk).values_list("password", "is_active").first()
        if before is not None:
            password, was_active = before
            unusable_now = password != instance.password and not instance.has_usable_password()
            changed = unusable_now or (was_active and not instance.is_active)
    instance._yoi_revoke = changed  # type: ignore[attr-defined]


def _revoke_after_change(sender: type[User], instance: User, **kwargs: Any) -> None:
    if getattr(instance, "_yoi_revoke", False):
        instance._yoi_revoke = False  # type: ignore[attr-defined]
        user_revoke_credentials(user_id=instance.pk)


# Connected on import, which YoiBackendConfig.ready() does in every process.
post_save.connect(forget_user, sender=User, dispatch_uid="yoi_backend.auth.forget_user.save")
post_delete.connect(forget_user, sender=User, dispatch_uid="yoi_backend.auth.forget_user.delete")
pre_save.connect(_note_credential_change, sender=User, dispatch_uid="yoi_backend.auth.note_credential_change")
post_save.connect(_revoke_after_change, sender=User, dispatch_uid="yoi_backend.auth.revoke_after_change")
