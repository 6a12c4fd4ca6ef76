"""Who may go on watching: the access an open event socket depends on, and whether it still holds.

A socket is allowed when it opens (workers.consumers). From then on it depends on three things: the
login session it was opened with, that session's user (still active, still the same password) and the
visibility of its runtime to that user (the runtime still exists, is enabled and shares a group with the
user, see runtimes.selectors). ``socket_verdicts`` answers, for many sockets at once, which of them must
close and with which error; workers.sockets runs it whenever one of those things may have changed.

Sockets are also reachable through channel-layer groups named after what they depend on
(``policy_group``), so a change seen by any Backend process reaches the sockets of every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any
from uuid import uuid4

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.contrib.auth.models import User
from django.utils.crypto import constant_time_compare

from runtimes.errors import NotAuthenticated, RuntimeDisabled, RuntimeNotFound, YoiError
from runtimes.registry import registry
from runtimes.selectors import runtime_is_visible

GROUP_PREFIX = "yoi-policy"
# Channels accepts group names of ASCII letters, digits, hyphens, underscores and periods, under 100 chars.
GROUP_DIGEST_CHARS = 40


def policy_group(kind: str, key: str) -> str:
    """THE channel-layer group name of one policy subject (``session``, ``user`` or ``runtime`` + its key).

    Keys are hashed: runtime ids may hold ``:`` (not in Channels' alphabet), and a session key must not
    appear in clear in the channel layer. The name is at most 70 characters.
    """
    if not kind.isascii() or not kind.isalpha() or len(kind) > 16:
        raise ValueError("a policy subject kind is a short ASCII word")
    digest = hashlib.sha256(f"{kind}\0{key}".encode()).hexdigest()[:GROUP_DIGEST_CHARS]
    return f"{GROUP_PREFIX}.{kind}.{digest}"


@dataclass(frozen=True)
class SocketAccess:
    """What one open socket was allowed on: its user, the session it logged in with, its runtime."""

    user_id: int
    session_key: str | None
    runtime_id: str
    # Tells two sockets with the same access apart (the per-user socket count).
    socket_id: str = field(default_factory=lambda: uuid4().hex, compare=False)

    def __repr__(self) -> str:
        # Never the session key: it is a credential.
        return f"SocketAccess(user_id={self.user_id}, runtime_id={self.runtime_id!r})"

    @property
    def groups(self) -> list[str]:
        """The channel-layer groups this socket joins: its session's, its user's and its runtime's."""
        groups = [policy_group("user", str(self.user_id)), policy_group("runtime", self.runtime_id)]
        if self.session_key:
            groups.append(policy_group("session", self.session_key))
        return groups


def scope_session_key(scope: dict[str, Any]) -> str | None:
    """The session key of a socket's scope (Channels' SessionMiddleware), or None without a session."""
    session = scope.get("session")
    key = getattr(session, "session_key", None) if session is not None else None
    return key if isinstance(key, str) and key else None


def _session_user_id(session_key: str) -> str | None:
    """The user id a live session is logged in as, verified as django.contrib.auth.get_user does (the
    backend is still configured, the password hash still matches), but without its side effects: a
    request flushes a stale session or cycles its key, which would log out the browser behind a socket."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    data = store.load()  # an empty dict when the session ended or expired
    user_id, backend_path = data.get(SESSION_KEY), data.get(BACKEND_SESSION_KEY)
    session_hash = data.get(HASH_SESSION_KEY)
    if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS or not session_hash:
        return None
    user = load_backend(backend_path).get_user(User._meta.pk.to_python(user_id))
    if user is None or not hasattr(user, "get_session_auth_hash"):
        return None
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not any(constant_time_compare(session_hash, known) for known in hashes):
        return None
    return str(user.pk)


def _current_user(access: SocketAccess) -> User | None:
    """The socket's user as the database has it now, if its session (when it has one) still names it."""
    if access.session_key is not None and _session_user_id(access.session_key) != str(access.user_id):
        return None
    # From the database, not the per-request user cache: a change that triggered this check may be seconds
    # younger than the cached copy.
    return User.objects.filter(pk=access.user_id, is_active=True).first()


def socket_verdicts(*, accesses: Iterable[SocketAccess], fresh: bool) -> dict[SocketAccess, YoiError]:
    """The sockets among ``accesses`` that must close now, with the error each is told (sync: database).

    ``fresh`` re-reads the runtime rows first (a change was just announced); otherwise the registry's copy
    is used, at most ``YOI_REGISTRY_REFRESH_SECONDS`` old. An invisible runtime is ``runtime_not_found``
    whatever its state, as at the door; a visible disabled one is ``runtime_disabled``.
    """
    connections = registry.connections(fresh=fresh)
    users: dict[tuple[str | None, int], User | None] = {}
    verdicts: dict[SocketAccess, YoiError] = {}
    for access in accesses:
        login = (access.session_key, access.user_id)
        if login not in users:
            users[login] = _current_user(access)
        user = users[login]
        if user is None:
            verdicts[access] = NotAuthenticated()
            continue
        connection = connections.get(access.runtime_id)
        if connection is None or not runtime_is_visible(connection=connection, user=user):
            verdicts[access] = RuntimeNotFound(runtime_id=access.runtime_id)
        elif not connection.enabled:
            verdicts[access] = RuntimeDisabled(runtime_id=access.runtime_id)
    return verdicts


def runtime_policy_rows() -> dict[str, tuple[bool, frozenset[int]]]:
    """``{runtime_id: (enabled, group_ids)}`` from the registry (re-read when stale): what socket policy
    depends on, to compare between two looks."""
    return {rid: (conn.enabled, conn.group_ids) for rid, conn in registry.connections().items()}
