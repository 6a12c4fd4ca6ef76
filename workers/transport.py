"""Step 5 of the event path: a frame written straight to a browser's WebSocket under daphne.

Every frame sent through a Channels consumer costs a task wake-up and an ``await`` chain, which with a
thousand browsers on one worker is most of the process's time. This module looks through the ``send``
callable daphne gives each connection to its protocol and Twisted transport, and writes a frame
synchronously from the relay's own fan-out pass, encoded once for all browsers (``DirectWriter``).
Backpressure comes from Twisted's producer API: the writer registers as the transport's push producer, so
Twisted tells it when the browser stops reading (``pauseProducing``) and when it has caught up
(``resumeProducing``). It is the only place that knows daphne's, Twisted's and autobahn's internals; the
versions it is tested with are pinned in pyproject.toml, and under any other server it answers ``None``
and the relay falls back to the consumer's ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

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


class _TurnFlush:
    """The direct writers of one event loop that have frames waiting, each flushed once per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._writers: list[DirectWriter] = []

    def __repr__(self) -> str:
        return f"_TurnFlush(waiting={len(self._writers)})"

    def add(self, writer: DirectWriter) -> None:
        if not self._writers:
            self._loop.call_soon(self._run)
        self._writers.append(writer)

    def _run(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            try:
                writer.flush()
            except Exception:
                # One broken connection must not leave the others' frames waiting for a flush that never runs.
                logger.exception("workers.transport.flush_failed")


_turn_flushes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TurnFlush] = weakref.WeakKeyDictionary()


class DirectWriter:
    """Writes text frames to one daphne WebSocket connection without a task or an ``await``.

    A frame goes to the connection as bytes: what autobahn would write for it, without autobahn's
    per-message work (its debug-log arguments alone are formatted for every frame). Frames written in one
    loop turn are sent together at its end (one ``send`` per browser per turn, however many events the
    turn relayed). When autobahn would write something else — a compressed or fragmented message, or one
    over its size limit — the frame goes through daphne's own ``handle_reply`` instead.
    """

    def __init__(self, protocol: Any, turn_flush: _TurnFlush) -> None:
        self._protocol = protocol
        self._turn_flush = turn_flush
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._stopped = False
        self.previous: Any = None  # the producer the transport had before (see direct_writer)

    def __repr__(self) -> str:
        return f"DirectWriter(waiting_bytes={self._out_bytes})"

    def backed_up(self) -> bool:
        """More than WRITE_HIGH_WATER bytes written that the browser has not read yet."""
        pending = _buffered_bytes(self._protocol.transport)
        return pending is None or pending + self._out_bytes > WRITE_HIGH_WATER

    async def drained(self) -> None:
        """Return once the browser is no longer backed up (or the connection is gone)."""
        while self.backed_up() and not self._stopped and self._protocol.state == self._protocol.STATE_OPEN:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # Twisted's IPushProducer: the transport pauses us when its buffer fills and resumes us once empty.
    def pauseProducing(self) -> None:
        """The browser stopped reading for now (Twisted's buffer is full): ``backed_up`` says how far."""
        if self.previous is not None:
            self.previous.pauseProducing()

    def resumeProducing(self) -> None:
        """Twisted wrote out everything it had buffered for this connection."""
        if self.previous is not None:
            self.previous.resumeProducing()
        self._wake()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self._stopped = True
        if self.previous is not None:
            self.previous.stopProducing()
        self._wake()

    def writable(self) -> bool:
        """Open, nothing of autobahn's own waiting to go out, and not backed up."""
        protocol = self._protocol
        return protocol.state == protocol.STATE_OPEN and not protocol.send_queue and not self.backed_up()

    def write(self, text: str) -> None:
        """Send one text frame at the end of this loop turn (a closed socket drops it, as daphne does)."""
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN:
            return
        wire = text_frame(text)
        limit = protocol.maxMessagePayloadSize
        if protocol._perMessageCompress is not None or protocol.autoFragmentSize or (limit and len(wire) > limit):
            self.flush()  # what is waiting goes first
            protocol.handle_reply({"type": "websocket.send", "text": text})
            return
        if not self._out:
            self._turn_flush.add(self)
        self._out.append(wire)
        self._out_bytes += len(wire)

    def flush(self) -> None:
        """Send what is waiting now (before anything else is written to the connection, e.g. a close)."""
        if not self._out:
            return
        wire = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        if self._protocol.state == self._protocol.STATE_OPEN:
            self._send(wire)
        if self._waiters and not self.backed_up():
            self._wake()

    def _send(self, wire: bytes) -> None:
        """Hand bytes to the socket now when Twisted has nothing buffered for it (as asyncio's own transports
        do), else to Twisted's buffer. Twisted always buffers first and registers the socket for writing,
        then unregisters it once written: two epoll updates and a loop callback per connection per write,
        which is what a thousand-browser fan-out spent most of its time on."""
        transport = self._protocol.transport
        if _buffered_bytes(transport) == 0 and not transport.TLS:
            try:
                sent = transport.socket.send(wire)
            except OSError:
                sent = 0  # would block, or the connection broke: Twisted's own write finds out and reports it
            if sent == len(wire):
                return
            wire = wire[sent:]
        transport.write(wire)


# Which way this process writes frames, logged once each: the process-level guard test reads the log
# (tests/relay_e2e/test_direct_writes.py), so an upgrade of daphne, Twisted or autobahn that loses the
# direct path fails a test instead of slowing the relay down silently.
_reported: set[str] = set()


def _report(mode: str, reason: str) -> None:
    if mode in _reported:
        return
    _reported.add(mode)
    if mode == "direct":
        logger.info("workers.transport.direct_writes", extra={"reason": reason})
    else:
        logger.warning("workers.transport.direct_writes_unavailable", extra={"reason": reason})


def direct_writer(send: Callable[..., Any]) -> DirectWriter | None:
    """A DirectWriter for the connection behind ``send`` (call on its event loop), or None when it is not a
    daphne WebSocket this module knows how to write to."""
    protocol = _protocol_of(send)
    if protocol is None:
        _report("fallback", "not_daphne")
        return None
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
    missing = [name for name in required if not hasattr(protocol, name)]
    transport: Any = getattr(protocol, "transport", None)
    if not missing and (_buffered_bytes(transport) is None or not hasattr(transport, "socket")):
        missing = ["transport.buffer"]
    if not missing:
        missing = [
            f"transport.{name}" for name in ("TLS", "producer", "registerProducer") if not hasattr(transport, name)
        ]
    if missing:
        _report("fallback", "missing:" + ",".join(missing))
        return None
    loop = asyncio.get_running_loop()
    turn_flush = _turn_flushes.get(loop)
    if turn_flush is None:
        turn_flush = _turn_flushes[loop] = _TurnFlush(loop)
    writer = DirectWriter(protocol, turn_flush)
    # The HTTP channel that accepted the upgrade is still the transport's producer (Twisted's HTTPChannel
    # registers itself); the writer takes its place and passes every call on to it, so it behaves as before.
    writer.previous = transport.producer
    if writer.previous is not None:
        transport.unregisterProducer()
    transport.registerProducer(writer, True)
    _report("direct", "daphne")
    return writer


def limit_incoming(send: Callable[..., Any], *, max_messages: int, max_bytes: int) -> bool:
    """Under daphne, hold a client to ``max_messages`` messages of at most ``max_bytes`` each, at the transport.

    The message that passes a limit still reaches the application (which closes the socket); every later
    one is dropped as it is parsed, and the connection is not read any more until ``resume_incoming``: a
    client flooding the socket is held back by TCP, instead of each of its messages growing daphne's queue
    for the application (unbounded) faster than the application can take them. daphne's own ``muted`` flag
    also means it will not deliver the disconnect. False (nothing done) when the server is not daphne.
    """
    protocol = _protocol_of(send)
    if protocol is None or not all(hasattr(protocol, name) for name in ("onMessage", "muted", "transport")):
        return False
    deliver = protocol.onMessage
    seen = 0

    def on_message(payload: bytes, is_binary: bool) -> None:
        nonlocal seen
        if protocol.muted:
            return
        seen += 1
        deliver(payload, is_binary)
        if seen > max_messages or len(payload) > max_bytes:
            protocol.muted = True
            with contextlib.suppress(Exception):
                protocol.transport.pauseProducing()

    protocol.onMessage = on_message
    return True


def resume_incoming(send: Callable[..., Any]) -> None:
    """Read the connection again after ``limit_incoming`` stopped it (messages stay dropped): the client's
    answer to a close is read, so the closing handshake can complete."""
    protocol = _protocol_of(send)
    with contextlib.suppress(Exception):
        if protocol is not None:
            protocol.transport.resumeProducing()


def close_going_away(send: Callable[..., Any]) -> bool:
    """Close the connection behind ``send`` with 1001 ("going away", RFC 6455 §7.4.1: a server going
    down). autobahn's public close refuses every code but 1000 and 3000-4999, so daphne cannot send 1001
    for an application; this sends the close frame as autobahn's own close does. False when the server is
    not daphne or the connection is not open."""
    protocol = _protocol_of(send)
    if protocol is None or not hasattr(protocol, "sendCloseFrame") or not hasattr(protocol, "STATE_OPEN"):
        return False
    if protocol.state != protocol.STATE_OPEN:
        return False
    protocol.sendCloseFrame(code=1001, isReply=False)
    return True
