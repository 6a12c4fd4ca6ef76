"""The id of the request (HTTP or WebSocket) being served, for the log lines and error envelopes it causes.

Bound by the Backend's middleware for the whole of a request (``yoi_backend/middleware.py``) and for the
life of a socket (``yoi_backend/sockets.py``); code anywhere below reads it with ``current_request_id()``.
It lives here, at the bottom of the import order, so that every layer can read it.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar, Token

# What a caller's X-Request-ID may be: a log field and a response header, so no spaces, quotes or controls.
_CALLER_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("yoi_request_id", default=None)


def request_id_from(header: str | bytes | None) -> str:
    """The caller's id when it is usable (``[A-Za-z0-9._:-]{1,128}``), else a new one."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if header and _CALLER_ID_RE.fullmatch(header):
        return header
    # 128 random bits as 32 hex digits, like a uuid4's: unique enough to find a request by, and no system
    # call per request (an id is no secret).
    return f"{random.getrandbits(128):032x}"


def bind_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` the current one; pass the token to ``unbind_request_id`` when the request ends."""
    return _request_id.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    """Back to what was current before ``bind_request_id``."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The id of the request being served here, if any."""
    return _request_id.get()
