"""A small asyncio WebSocket client for the relay end-to-end tests (a browser, as far as the Backend knows).

``WsClient.connect`` opens ``/ws/runtimes/{runtime_id}/workers/{worker_id}/events/`` with the session
cookie and an allowed ``Origin``. A reading task parses every frame into ``frames`` and wakes whoever waits
in ``wait_for`` (a condition with a deadline). A *slow* client is connected with ``reading=False``, a tiny
kernel receive buffer and a small websockets queue: it does not read at all until ``start_reading()``,
so the Backend sees a browser that has stopped taking frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]
OPEN_TIMEOUT = 15.0


class WsClient:
    """One browser socket: every frame it got, split by type, and its close code once closed."""

    def __init__(self, ws: ClientConnection, *, name: str) -> None:
        self.ws = ws
        self.name = name
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"WsClient({self.name!r}, frames={len(self.frames)}, close_code={self.close_code})"

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        session_key: str | None,
        origin: str,
        name: str = "client",
        reading: bool = True,
        max_queue: int = 1024,
        rcvbuf: int | None = None,
    ) -> WsClient:
        """Open the socket (raises ``websockets.exceptions.InvalidStatus`` when the handshake is refused)."""
        headers = [("Cookie", f"sessionid={session_key}")] if session_key else []
        kwargs: dict[str, Any] = {}
        if rcvbuf is not None:
            kwargs["sock"] = await _small_buffer_socket(url, rcvbuf)
        ws = await connect(
            url,
            origin=origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
            additional_headers=headers,
            ping_interval=None,  # a paused reader must not time itself out; daphne pings us instead
            open_timeout=OPEN_TIMEOUT,
            max_queue=max_queue,
            max_size=2**22,
            **kwargs,
        )
        client = cls(ws, name=name)
        if reading:
            client.start_reading()
        return client

    def start_reading(self) -> None:
        """Start taking frames off the socket (a slow client calls this late)."""
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                frame = json.loads(message)
                self.frames.append(frame)
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[WsClient], bool], *, timeout: float, what: str = "") -> None:
        """Wait until ``predicate(self)`` holds; fail with a readable message when ``timeout`` passes."""
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: {what or 'condition'} not met within {timeout}s; "
                f"{len(self.events())} events, last seq {self.last_seq()}, close {self.close_code}, "
                f"non-event frames {self.control_frames()[-5:]}"
            ) from None

    async def wait_closed(self, *, timeout: float) -> int | None:
        """Wait for the server to close the socket; its close code."""
        await self.wait_for(lambda c: c.closed.is_set(), timeout=timeout, what="close")
        return self.close_code

    async def close(self) -> None:
        """Close from the browser side and stop reading."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    # ----------------------------------------------------------------------------------- views

    def events(self) -> list[Frame]:
        """The event frames, in arrival order."""
        return [f for f in self.frames if f.get("type") == "event"]

    def seqs(self) -> list[int]:
        """The seq of every event frame, in arrival order."""
        return [int(f["seq"]) for f in self.events()]

    def last_seq(self) -> int | None:
        """The seq of the last event frame, if any."""
        events = self.events()
        return int(events[-1]["seq"]) if events else None

    def of_type(self, kind: str) -> list[Frame]:
        """Frames with ``type == kind`` (``state``, ``reset``, ``error``)."""
        return [f for f in self.frames if f.get("type") == kind]

    def control_frames(self) -> list[Frame]:
        """Every frame that is not an event."""
        return [f for f in self.frames if f.get("type") != "event"]

    def has_event(self, kind: str, *, after_seq: int = 0) -> bool:
        """True once an event of ``kind`` with a seq above ``after_seq`` arrived."""
        return any(f["event"] == kind and int(f["seq"]) > after_seq for f in self.events())


async def connect_many(
    count: int, url: str, *, session_key: str, origin: str, prefix: str = "browser"
) -> list[WsClient]:
    """Open ``count`` reading clients concurrently."""
    return list(
        await asyncio.gather(
            *(
                WsClient.connect(url, session_key=session_key, origin=origin, name=f"{prefix}-{i}")
                for i in range(count)
            )
        )
    )


async def close_all(clients: Sequence[WsClient]) -> None:
    """Close every client (browser side)."""
    await asyncio.gather(*(client.close() for client in clients))


async def _small_buffer_socket(url: str, rcvbuf: int) -> socket.socket:
    """A connected TCP socket whose kernel receive buffer is ``rcvbuf`` bytes (set before connecting)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    return sock


def assert_contiguous(seqs: Sequence[int], *, first: int, last: int, who: str = "") -> None:
    """``seqs`` is exactly ``first..last``: in order, no gap, no duplicate (with a short diagnosis)."""
    expected = list(range(first, last + 1))
    if list(seqs) == expected:
        return
    dups = len(seqs) - len(set(seqs))
    gaps = [s for s in expected if s not in set(seqs)][:10]
    disorder = next((i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]), None)
    raise AssertionError(
        f"{who}: expected seqs {first}..{last} ({len(expected)}), got {len(seqs)} "
        f"(first {seqs[:3]}, last {list(seqs[-3:])}); duplicates {dups}, missing {gaps}, "
        f"first disorder at index {disorder}"
    )
