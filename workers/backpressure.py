"""How many bytes a WebSocket has accepted but the browser has not read yet (transport backpressure).

Under daphne an ASGI ``websocket.send`` returns at once and the bytes pile up in Twisted's write buffer,
so a browser that stops reading is invisible to the application. This module looks through the ``send``
callable daphne gives each connection to the Twisted transport and reads its buffer size. It is the only
place that knows those internals; under any other server it answers ``None`` and the relay falls back to
its own bounded queue.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

MAX_UNWRAP = 8


def _transport_of(send: Callable[..., Any]) -> Any | None:
    candidate: Any = send
    for _ in range(MAX_UNWRAP):
        if isinstance(candidate, functools.partial):
            protocol = candidate.args[0] if candidate.args else None
            return getattr(protocol, "transport", None)
        owner = getattr(candidate, "__self__", None)
        inner = getattr(owner, "real_send", None) or getattr(owner, "base_send", None)
        if inner is None or inner is candidate:
            return None
        candidate = inner
    return None


def pending_write_bytes(send: Callable[..., Any]) -> int | None:
    """Bytes queued in the connection's transport, or None when the server does not let us see them."""
    transport = _transport_of(send)
    if transport is None:
        return None
    try:
        return len(transport.dataBuffer) - int(transport.offset) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return None
