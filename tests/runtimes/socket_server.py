"""Socket servers on 127.0.0.1 for the client tests (blocking and live streams), and a client factory.

The servers are plain ``socket`` + ``threading``; every wait is bounded and every socket closed in
teardown. ``serve`` and ``make_client`` are fixtures (tests/runtimes/conftest.py makes them available).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtimes.client import RemoteRuntimeClient

TOKEN = "tok-client-test-5e2b"
WID = "w-1"
SSE_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
EVENT_1 = b'id: 1\nevent: status\ndata: {"seq":1,"worker_id":"w-1","event":"status","data":{},"ts":1.0}\n\n'
HALF_EVENT_2 = b'id: 2\nevent: text_delta\ndata: {"seq":2,"worker_id":"w-1","ev'

Handler = Callable[[socket.socket, "TestServer"], None]


class TestServer:
    """Accepts connections on a free loopback port and runs ``handler`` on each, one at a time."""

    __test__ = False

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.first_request = threading.Event()
        self.connections = 0
        self.requests = 0
        self.bytes_sent = 0
        self.completed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                # OSError: the client went away, which is what several tests are about.
                with contextlib.suppress(OSError):
                    self.handler(conn, self)

    def read_request(self, conn: socket.socket) -> bytes:
        """One request head (these tests send no request bodies on GET)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return b""
            data += chunk
        self.requests += 1
        self.first_request.set()
        return data

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], TestServer]]:
    servers: list[TestServer] = []

    def start(handler: Handler) -> TestServer:
        server = TestServer(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def make_client() -> Iterator[Callable[..., RemoteRuntimeClient]]:
    clients: list[RemoteRuntimeClient] = []

    def make(base_url: str, **kwargs: Any) -> RemoteRuntimeClient:
        kwargs.setdefault("connect_timeout", 0.5)
        kwargs.setdefault("read_timeout", 0.5)
        client = RemoteRuntimeClient(
            runtime_id="rt-sock", base_url=base_url, token_provider=lambda: TOKEN, **kwargs
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
