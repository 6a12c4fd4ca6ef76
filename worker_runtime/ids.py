"""Runtime and worker ids: one alphabet, and a path encoding that never uses an id raw."""

from __future__ import annotations

import re

from worker_runtime.errors import InvalidRequest

ID_PATTERN = r"[A-Za-z0-9_:-]{1,120}"
_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    """True for a slug of the id alphabet, 1 to 120 characters."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def require_id(value: object, *, field: str) -> str:
    """Return ``value`` as an id or raise ``invalid_request`` naming ``field``."""
    if not is_valid_id(value):
        raise InvalidRequest(f"{field} must match {ID_PATTERN}")
    assert isinstance(value, str)
    return value


def path_component(worker_id: str) -> str:
    """A filesystem-safe directory name for an id (hex of its bytes: reversible, no separators)."""
    return "w" + worker_id.encode("utf-8").hex()
