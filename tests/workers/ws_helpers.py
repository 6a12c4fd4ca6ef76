"""Async helpers of the event-socket and relay tests: sockets through the real router, bounded reads.

Every wait here has a deadline: a read that does not come in time fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from runtimes.handles.base import RuntimeHandle
from runtimes.registry import registry
from runtimes.types import WorkerDetail, WorkerSpec
from workers.relay import Subscriber
from workers.routing import websocket_urlpatterns

Frame = dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]
# Generous for a loaded CI machine; a passing test never waits this long.
READ_TIMEOUT = 10.0


def events_path(runtime_id: str, worker_id: str, query: str = "") -> str:
    """The event socket's path (``query`` without the ``?``)."""
    path = f"/ws/runtimes/{runtime_id}/workers/{worker_id}/events/"
    return f"{path}?{query}" if query else path


def with_user(app: ASGIApp, user: User | AnonymousUser) -> ASGIApp:
    """``app`` with ``scope["user"]`` set, as AuthMiddlewareStack would after a session login."""

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "user": user}, receive, send)

    return application


@dataclass
class Socket:
    """A browser's event socket: the communicator, whether it was accepted, and everything it received."""

    communicator: WebsocketCommunicator
    accepted: bool
    refused_code: int | None = None
    texts: list[str] = field(default_factory=list)
    close_code: int | None = None

    @property
    def frames(self) -> list[Frame]:
        """Every frame received so far, parsed."""
        return [json.loads(text) for text in self.texts]

    def events(self) -> list[Frame]:
        """The ``event`` frames received so far."""
        return [frame for frame in self.frames if frame["type"] == "event"]

    async def next_frame(self, *, deadline: float) -> Frame | None:
        """The next frame, or None when the server closed the socket (``close_code`` then says how)."""
        if self.close_code is not None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no frame before the deadline; received {self.texts!r}")
        try:
            message = await self.communicator.receive_output(timeout=remaining)
        except TimeoutError:
            raise AssertionError(f"no frame before the deadline; received {self.texts!r}") from None
        if message["type"] == "websocket.close":
            self.close_code = int(message.get("code", 1000))
            return None
        assert message["type"] == "websocket.send", message
        text = message["text"]
        assert isinstance(text, str)
        self.texts.append(text)
        frame: Frame = json.loads(text)
        return frame

    async def read_until(self, predicate: Callable[[Frame], bool], *, timeout: float = READ_TIMEOUT) -> Frame:
        """Read frames until one satisfies ``predicate``; returns it (fails on close or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next_frame(deadline=deadline)
            if frame is None:
                raise AssertionError(f"closed with {self.close_code} first; received {self.texts!r}")
            if predicate(frame):
                return frame

    async def read_event(self, kind: str, *, timeout: float = READ_TIMEOUT) -> Frame:
        """Read frames until an event of ``kind`` arrives."""
        return await self.read_until(lambda f: f["type"] == "event" and f["event"] == kind, timeout=timeout)

    async def read_until_closed(self, *, timeout: float = READ_TIMEOUT) -> int:
        """Read every frame until the server closes the socket; returns the close code."""
        deadline = time.monotonic() + timeout
        while await self.next_frame(deadline=deadline) is not None:
            pass
        assert self.close_code is not None
        return self.close_code

    async def send_text(self, text: str) -> None:
        """A data frame from the browser."""
        await self.communicator.send_to(text_data=text)

    async def disconnect(self) -> None:
        """The browser leaves (safe after a server-side close too)."""
        await self.communicator.disconnect()


async def open_socket(path: str, *, user: User | AnonymousUser, timeout: float = READ_TIMEOUT) -> Socket:
    """Connect a WebsocketCommunicator through ``URLRouter(websocket_urlpatterns)`` as ``user``."""
    communicator = WebsocketCommunicator(with_user(URLRouter(websocket_urlpatterns), user), path)
    accepted, detail = await communicator.connect(timeout=timeout)
    if accepted:
        return Socket(communicator, accepted=True)
    return Socket(communicator, accepted=False, refused_code=int(detail), close_code=int(detail))


async def expect_error(path: str, *, user: User | AnonymousUser, timeout: float = READ_TIMEOUT) -> Socket:
    """Open a socket that must be accepted, then get exactly one error frame and a close."""
    socket = await open_socket(path, user=user, timeout=timeout)
    try:
        assert socket.accepted, f"refused at the handshake with {socket.refused_code}"
        await socket.read_until_closed(timeout=timeout)
    finally:
        await socket.disconnect()
    frames = socket.frames
    assert len(frames) == 1 and frames[0]["type"] == "error", frames
    return socket


# ------------------------------------------------------------------------------------------- relay side


async def _read_queue(
    subscriber: Subscriber, predicate: Callable[[Frame], bool] | None, timeout: float
) -> list[Frame]:
    """Take frames straight from the queue, as the socket's sender does (no extra task per frame)."""
    frames: list[Frame] = []

    async def read() -> None:
        while True:
            text = await subscriber.queue.get()
            if text is None:
                if predicate is None:
                    return
                raise AssertionError(f"{subscriber!r} was closed ({subscriber.close_code}) first; got {frames!r}")
            frame: Frame = json.loads(text)
            frames.append(frame)
            if predicate is not None and predicate(frame):
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(f"{subscriber!r}: timed out after {timeout}s; got {frames[-5:]!r}") from None
    return frames


async def subscriber_frames_until(
    subscriber: Subscriber, predicate: Callable[[Frame], bool], *, timeout: float = READ_TIMEOUT
) -> list[Frame]:
    """Queued frames up to and including the first that satisfies ``predicate``."""
    return await _read_queue(subscriber, predicate, timeout)


async def subscriber_frames_until_closed(subscriber: Subscriber, *, timeout: float = READ_TIMEOUT) -> list[Frame]:
    """Every queued frame until the relay closes the subscriber."""
    return await _read_queue(subscriber, None, timeout)


def queued_frames(subscriber: Subscriber) -> list[Frame | None]:
    """What the subscriber's queue holds right now, taken without waiting."""
    frames: list[Frame | None] = []
    while not subscriber.queue.empty():
        text = subscriber.queue.get_nowait()
        frames.append(None if text is None else json.loads(text))
    return frames


def seqs(frames: list[Frame]) -> list[int]:
    """The seqs of the event frames, in order."""
    return [frame["seq"] for frame in frames if frame["type"] == "event"]


def is_event(kind: str, seq: int | None = None) -> Callable[[Frame], bool]:
    """A predicate: an event frame of ``kind`` (and ``seq`` when given)."""
    return lambda f: f["type"] == "event" and f["event"] == kind and (seq is None or f["seq"] == seq)


def has_seq(seq: int) -> Callable[[Frame], bool]:
    """A predicate: the event frame with ``seq``."""
    return lambda f: f["type"] == "event" and f["seq"] == seq


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = READ_TIMEOUT,
    interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not true within {timeout}s")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------------- runtime side


async def runtime_handle(runtime_id: str = "local") -> RuntimeHandle:
    """The registry's handle of a runtime row (built on first use)."""
    handle: RuntimeHandle = await sync_to_async(registry.get)(runtime_id)
    return handle


async def create_worker(
    handle: RuntimeHandle,
    worker_id: str,
    *,
    profile: str = "builtin:echo",
    initial_input: str | None = "hi",
    options: dict[str, Any] | None = None,
) -> WorkerDetail:
    """Create a worker through the handle (echo answering ``initial_input`` by default)."""
    spec = WorkerSpec(worker_id=worker_id, profile=profile, initial_input=initial_input, options=options)
    worker: WorkerDetail = await sync_to_async(handle.create_worker)(spec)
    return worker


async def worker_settled(handle: RuntimeHandle, worker_id: str, *, transcript_len: int) -> WorkerDetail:
    """Wait until the worker's transcript holds ``transcript_len`` items (its answer is complete)."""
    latest: list[WorkerDetail] = []

    async def settled() -> bool:
        latest[:] = [await sync_to_async(handle.get_worker)(worker_id)]
        return (latest[0].transcript_len or 0) >= transcript_len

    await wait_until(settled, message=f"transcript of {worker_id} reaching {transcript_len}")
    return latest[0]


async def send_input(handle: RuntimeHandle, worker_id: str, content: str) -> None:
    """Send a user input through the handle."""
    await sync_to_async(handle.send_input)(worker_id, content=content)


async def stop_worker(handle: RuntimeHandle, worker_id: str) -> None:
    """Stop a worker through the handle (it ends with ``worker_exited``)."""
    await sync_to_async(handle.stop_worker)(worker_id)


async def streams_open(handle: RuntimeHandle) -> int:
    """How many event streams the runtime is serving now (its summary's ``event_streams_open``)."""
    summary = await sync_to_async(handle.summary)()
    assert summary.event_streams_open is not None
    return summary.event_streams_open
