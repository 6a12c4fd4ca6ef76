"""ASGI middleware around every browser WebSocket: its request id, and the socket metrics.

A socket gets a request id like an HTTP request (the caller's ``X-Request-ID`` header when usable, else a
new one): it is in the scope as ``request_id`` and bound for the life of the connection, so every log line
and error frame the socket causes carries it. The middleware also sees the ``websocket.accept`` and
``websocket.close`` the application sends and the ``websocket.disconnect`` it receives, which is all
``yoi_ws_connections_open`` and ``yoi_ws_closes_total`` need; the consumer is left alone.
"""

from __future__ import annotations

import re
from typing import Any

from runtimes import metrics
from runtimes.request_context import bind_request_id, request_id_from, unbind_request_id
from runtimes.types import is_valid_id

Scope = dict[str, Any]
Message = dict[str, Any]
_RUNTIME_PATH_RE = re.compile(r"^/ws/runtimes/([^/]+)/")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class _ObservedSocket:
    """One connection's ``send`` and ``receive``, watched. ``real_send`` is what workers/transport.py looks
    through to reach the server's connection."""

    def __init__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.real_send = send
        self._receive = receive
        match = _RUNTIME_PATH_RE.match(str(scope.get("path", "")))
        self.runtime_id = match.group(1) if match and is_valid_id(match.group(1)) else None
        self.accepted = False
        self.close_code: int | None = None

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "websocket.accept" and not self.accepted:
            self.accepted = True
            metrics.socket_opened(self.runtime_id)
        elif kind == "websocket.close" and self.close_code is None:
            self.close_code = int(message.get("code") or 1000)
        await self.real_send(message)

    async def receive(self) -> Message:
        message: Message = await self._receive()
        if message.get("type") == "websocket.disconnect" and self.close_code is None:
            code = message.get("code")
            self.close_code = int(code) if isinstance(code, int) else None
        return message

    def ended(self) -> None:
        if self.accepted:
            metrics.socket_closed(self.runtime_id, self.close_code)
        else:
            metrics.socket_refused(self.close_code)


class SocketObserver:
    """Wraps the WebSocket application (see the module docstring); other scopes pass through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __repr__(self) -> str:
        return f"SocketObserver({self.app!r})"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(_header(scope, b"x-request-id"))
        socket = _ObservedSocket(scope, receive, send)
        token = bind_request_id(request_id)
        try:
            await self.app({**scope, "request_id": request_id}, socket.receive, socket.send)
        finally:
            unbind_request_id(token)
            socket.ended()
