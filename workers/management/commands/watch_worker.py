"""``manage.py watch_worker RUNTIME WORKER [--after N]``: print a worker's live frames as a browser gets them.

It connects to a running Backend's event socket (``--url``, default ``http://127.0.0.1:8000``: what
``make run`` serves), so it sees exactly what a browser sees, through the same relay. It authenticates as
a user of this database (``--user``, default ``demo``) with a short-lived session it creates for the
purpose and deletes when it ends, so it must run with the Backend's settings (same database and
``DJANGO_SECRET_KEY``). Each frame is printed as one JSON line on stdout; the close is reported on stderr.
The exit status is 0 when the socket closed normally (1000/1001: the worker exited, or the Backend went
away) and 1 after an error frame (close 4000 + HTTP status).

The WebSocket client below is a minimal RFC 6455 client on the standard library (text frames, ping/pong,
close), so the command needs nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import ssl
import struct
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.serializers import id_errors

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONNECT_TIMEOUT = 5.0
# Daphne pings every 20 s; a socket silent for this long (not even a ping) is dead, not idle.
READ_TIMEOUT = 60.0
MAX_HEADER_BYTES = 64 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSES = {1000, 1001}


class WebSocketError(Exception):
    """The handshake was refused or the connection broke."""


class WebSocket:
    """A blocking client socket: ``recv()`` returns text messages (answering pings) until the close."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.close_code: int | None = None
        self.close_reason = ""
        self._buffer = b""

    @classmethod
    def connect(cls, url: str, *, headers: dict[str, str]) -> WebSocket:
        """Open ``ws://`` or ``wss://`` ``url`` with extra request ``headers``."""
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            raise WebSocketError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        key = base64.b64encode(os.urandom(16)).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        client = cls(sock)
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status, answer = client._read_response_head()
        except OSError as exc:
            sock.close()
            raise WebSocketError(f"handshake failed: {exc}") from exc
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()  # noqa: S324
        if status != 101 or answer.get("sec-websocket-accept") != expected:
            sock.close()
            raise WebSocketError(f"the Backend refused the socket (HTTP {status})")
        sock.settimeout(READ_TIMEOUT)
        return client

    def _read_response_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk or len(self._buffer) > MAX_HEADER_BYTES:
                raise WebSocketError("the Backend closed the connection during the handshake")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        answer = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            answer[name.strip().lower()] = value.strip()
        return status, answer

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise WebSocketError("the connection ended without a close frame")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exact(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        mask = self._read_exact(4) if second & 0x80 else b""
        payload = self._read_exact(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def send_frame(self, opcode: int, payload: bytes = b"") -> None:
        """Send one masked frame (clients must mask)."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 2**16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv(self) -> str | None:
        """The next text message, or None once the server closed (``close_code`` says how)."""
        parts: list[bytes] = []
        while True:
            fin, opcode, payload = self._read_frame()
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode("utf-8", errors="replace")
                self._answer_close()
                return None
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode("utf-8", errors="replace")

    def _answer_close(self) -> None:
        with contextlib.suppress(OSError):
            self.send_frame(OP_CLOSE, struct.pack("!H", self.close_code or 1000))
        self.sock.close()

    def close(self) -> None:
        """Close from our side (Ctrl-C), waiting briefly for the server's close frame."""
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", 1000))
            self.sock.settimeout(2.0)
            while self.recv() is not None:
                pass
        except (OSError, WebSocketError):
            pass
        finally:
            self.sock.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the watch like Ctrl-C does (the session is still deleted)."""
    raise KeyboardInterrupt


def socket_url(base_url: str, runtime_id: str, worker_id: str, after: int | None) -> str:
    """The worker's event socket URL on the Backend at ``base_url`` (http -> ws, https -> wss)."""
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise CommandError("--url must be the Backend's http:// or https:// address, e.g. http://127.0.0.1:8000")
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = f"?{urlencode({'after': after})}" if after is not None else ""
    prefix = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{prefix}/ws/runtimes/{runtime_id}/workers/{worker_id}/events/{query}"


def open_session(username: str) -> SessionStore:
    """A logged-in session of ``username`` (what a browser holds after logging in)."""
    users = get_user_model()
    try:
        user = users.objects.get(**{users.USERNAME_FIELD: username})
    except users.DoesNotExist:
        raise CommandError(f"no user {username!r} in this database (use --user)") from None
    if not user.is_active:
        raise CommandError(f"user {username!r} is not active")
    session = SessionStore()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session


class Command(BaseCommand):
    """Watch one worker's event socket on a running Backend and print every frame as a JSON line."""

    help = (
        "Print a worker's live event frames (one JSON line each) from a running Backend's WebSocket, as the "
        "given user would see them. Ends when the socket closes (the worker exited) or on Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("runtime_id")
        parser.add_argument("worker_id")
        parser.add_argument(
            "--after",
            type=int,
            default=None,
            help="resume after this seq (0 = from the first event); default: live only",
        )
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="the Backend's address (default: make run's)"
        )
        parser.add_argument("--user", default="demo", help="watch as this user (default: demo)")

    def handle(self, *args: Any, **options: Any) -> None:
        runtime_id, worker_id, after = options["runtime_id"], options["worker_id"], options["after"]
        fields = id_errors(runtime_id=runtime_id, worker_id=worker_id)
        if fields:
            raise CommandError(f"invalid id: {fields}")
        if after is not None and after < 0:
            raise CommandError("--after must be >= 0")
        url = socket_url(options["url"], runtime_id, worker_id, after)
        base = urlsplit(options["url"])
        session = open_session(options["user"])
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._watch(url, session_key=str(session.session_key), origin=f"{base.scheme}://{base.netloc}")
        finally:
            session.delete()

    def _watch(self, url: str, *, session_key: str, origin: str) -> None:
        headers = {"Origin": origin, "Cookie": f"{settings.SESSION_COOKIE_NAME}={session_key}"}
        try:
            ws = WebSocket.connect(url, headers=headers)
        except WebSocketError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(f"watching {url.split('/ws/', 1)[-1]} (Ctrl-C to stop)")
        try:
            while (message := ws.recv()) is not None:
                self.stdout.write(message)
                self.stdout.flush()
        except KeyboardInterrupt:
            ws.close()
            self.stderr.write("stopped")
            return
        except (OSError, WebSocketError) as exc:
            raise CommandError(f"the socket broke: {exc}") from exc
        code = ws.close_code
        self.stderr.write(f"closed: {code}{f' {ws.close_reason}' if ws.close_reason else ''}")
        if code not in NORMAL_CLOSES:
            raise CommandError(f"the socket closed with {code}")
