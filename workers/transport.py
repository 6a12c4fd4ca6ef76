"""What the relay may know about a browser's WebSocket under daphne: its unsent bytes, and a direct write.

Under daphne an ASGI ``websocket.send`` returns at once and the bytes pile up in Twisted's write buffer, so
a browser that stops reading is invisible to the application; and every frame sent through the consumer
costs a task wake-up and an ``await`` chain, which with a thousand browsers on one worker is most of the
process's time. This module looks through the ``send`` callable daphne gives each connection to its
protocol and Twisted transport, to read the transport's buffer size (backpressure) and to write a frame
synchronously from the relay's own fan-out pass, encoded once for all browsers (``DirectWriter``). It is
the only place that knows those internals; under any other server it answers ``None`` and the relay falls
back to the consumer's ``send`` and its own bounded queue.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

MAX_UNWRAP = 8
# A browser with more than this many bytes sent but not yet read is slow: frames wait in its bounded queue.
WRITE_HIGH_WATER = 256 * 1024
FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)


def _protocol_of(send: Callable[..., Any]) -> Any | None:
    """daphne's per-connection protocol behind ``send`` (daphne passes ``partial(handle_reply, protocol)``)."""
    candidate: Any = send
    for _ in range(MAX_UNWRAP):
        if isinstance(candidate, functools.partial):
            return candidate.args[0] if candidate.args else None
        owner = getattr(candidate, "__self__", None)
        inner = getattr(owner, "real_send", None) or getattr(owner, "base_send", None)
        if inner is None or inner is candidate:
            return None
        candidate = inner
    return None


def _buffered_bytes(transport: Any) -> int | None:
    try:
        return len(transport.dataBuffer) - int(transport.offset) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return None


def pending_write_bytes(send: Callable[..., Any]) -> int | None:
    """Bytes queued in the connection's transport, or None when the server does not let us see them."""
    return _buffered_bytes(getattr(_protocol_of(send), "transport", None))


@functools.lru_cache(maxsize=4)
def text_frame(text: str) -> bytes:
    """``text`` as one unfragmented, unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it.

    Cached: a fan-out writes the same frame to every browser in turn, so it is encoded once, not once per
    browser (a few entries: a fan-out pass may interleave a state frame).
    """
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", FIN_TEXT, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", FIN_TEXT, 127, size)
    return header + payload


class DirectWriter:
    """Writes text frames straight to one daphne WebSocket connection, without a task or an ``await``.

    A frame goes to the Twisted transport as bytes: what autobahn would write for it, without autobahn's
    per-message work (its debug-log arguments alone are formatted for every frame). When autobahn would
    write something else — a compressed or fragmented message, or one over its size limit — the frame goes
    through daphne's own ``handle_reply`` instead.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def __repr__(self) -> str:
        return "DirectWriter()"

    def writable(self) -> bool:
        """Open, and not backed up (more than WRITE_HIGH_WATER bytes the browser has not read)."""
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN or protocol.send_queue:
            return False
        pending = _buffered_bytes(protocol.transport)
        return pending is not None and pending <= WRITE_HIGH_WATER

    def write(self, text: str) -> None:
        """Send one text frame (a closed socket drops it, as daphne does)."""
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN:
            return
        wire = text_frame(text)
        limit = protocol.maxMessagePayloadSize
        if protocol._perMessageCompress is not None or protocol.autoFragmentSize or (limit and len(wire) > limit):
            protocol.handle_reply({"type": "websocket.send", "text": text})
            return
        protocol.transport.write(wire)


def direct_writer(send: Callable[..., Any]) -> DirectWriter | None:
    """A DirectWriter for the connection behind ``send``, or None when it is not a daphne WebSocket."""
    protocol = _protocol_of(send)
    required = (
        "handle_reply",
        "state",
        "STATE_OPEN",
        "transport",
        "send_queue",
        "maxMessagePayloadSize",
        "autoFragmentSize",
        "_perMessageCompress",
    )
    if protocol is None or not all(hasattr(protocol, name) for name in required):
        return None
    if _buffered_bytes(protocol.transport) is None:
        return None
    return DirectWriter(protocol)
