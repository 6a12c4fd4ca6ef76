"""RemoteRuntimeClient over real sockets on 127.0.0.1: timeouts, refusals, slow drips, huge bodies, cut streams.

The servers are plain ``socket`` + ``threading``; every wait is bounded and every socket closed in teardown.
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from runtimes.client import PATH_RUNTIME, PATH_WORKER, RemoteRuntimeClient, SseMessage
from runtimes.errors import RuntimeBadResponse, RuntimeTimeout, RuntimeUnreachable, YoiError
from tests.runtimes.socket_server import EVENT_1, HALF_EVENT_2, SSE_HEADERS, WID, Handler, TestServer


def timed(call: Callable[[], Any], error_class: type[YoiError]) -> float:
    """Seconds until ``call`` raised ``error_class``."""
    started = time.monotonic()
    with pytest.raises(error_class):
        call()
    return time.monotonic() - started


def test_listener_that_never_answers_times_out_within_read_timeout(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def silent(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        server.stop.wait(10)

    server = serve(silent)
    client = make_client(server.base_url, read_timeout=0.5)
    elapsed = timed(lambda: client.request_json("GET", PATH_RUNTIME), RuntimeTimeout)
    assert 0.4 <= elapsed < 0.5 + 1.0
    assert server.first_request.is_set()


def test_refused_port_is_unreachable_fast(make_client: Callable[..., RemoteRuntimeClient]) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = make_client(f"http://127.0.0.1:{port}")
    elapsed = timed(lambda: client.request_json("POST", PATH_WORKER, worker_id=WID, body={}), RuntimeUnreachable)
    assert elapsed < 1.0


def test_slow_drip_body_hits_the_total_deadline(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def drip(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        # One byte every 100 ms: each read is well inside the read timeout, the whole body never is.
        while not server.stop.wait(0.1):
            conn.sendall(b" ")

    server = serve(drip)
    client = make_client(server.base_url, connect_timeout=0.5, read_timeout=0.5)
    elapsed = timed(lambda: client.request_json("GET", PATH_RUNTIME), RuntimeTimeout)
    assert 0.9 <= elapsed < 0.5 + 0.5 + 1.0


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content_length"])
def test_50_mb_body_is_refused_without_reading_it_all(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient], declared: bool
) -> None:
    total = 50 * 1024 * 1024
    block = b"x" * (256 * 1024)

    def huge(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        head += f"Content-Length: {total}\r\n".encode() if declared else b""
        conn.sendall(head + b"\r\n")
        while server.bytes_sent < total:
            conn.sendall(block)
            server.bytes_sent += len(block)
        server.completed = True

    server = serve(huge)
    client = make_client(server.base_url, read_timeout=5)
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeBadResponse):
            client.request_json("GET", PATH_RUNTIME)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 1024 * 1024  # the 8 MiB cap plus a chunk and copies, far from 50 MB
    server.stop.set()
    server.thread.join(10)
    assert not server.completed


def test_pooled_session_reuses_one_connection(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    body = b'{"runtime": {}}'

    def keep_alive(conn: socket.socket, server: TestServer) -> None:
        while server.read_request(conn):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )

    server = serve(keep_alive)
    client = make_client(server.base_url)
    for _ in range(5):
        assert client.request_json("GET", PATH_RUNTIME) == (200, {"runtime": {}})
    assert server.requests == 5
    assert server.connections == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["close_delimited", "chunked"])
def test_sse_stream_cut_mid_event_is_unreachable(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient], chunked: bool
) -> None:
    def cut(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        if chunked:
            conn.sendall(SSE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
            conn.sendall(f"{len(EVENT_1):x}\r\n".encode() + EVENT_1 + b"\r\n")
            conn.sendall(f"{len(HALF_EVENT_2) + 50:x}\r\n".encode() + HALF_EVENT_2)  # promised 50 more bytes
        else:
            conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1 + HALF_EVENT_2)
        conn.shutdown(socket.SHUT_RDWR)

    server = serve(cut)
    client = make_client(server.base_url)
    stream = client.open_event_stream(WID, after=0)
    seen: list[SseMessage] = []
    with pytest.raises(RuntimeUnreachable) as info:
        seen.extend(stream)
    assert [m.data["seq"] for m in seen] == [1]
    assert info.value.worker_id == WID


@pytest.mark.parametrize("chunked", [False, True], ids=["close_delimited", "chunked"])
def test_sse_idle_stream_times_out(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient], chunked: bool
) -> None:
    def idle(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        if chunked:
            body = f"{len(EVENT_1):x}\r\n".encode() + EVENT_1 + b"\r\n"
            conn.sendall(SSE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n" + body)
        else:
            conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1)
        server.stop.wait(10)

    server = serve(idle)
    client = make_client(server.base_url, read_timeout=0.2, stream_idle_timeout=0.8)
    stream = client.open_event_stream(WID, after=None)
    iterator = iter(stream)
    assert next(iterator).event == "status"
    elapsed = timed(lambda: next(iterator), RuntimeTimeout)
    assert 0.7 <= elapsed < 0.8 + 1.0  # the idle timeout, not the read timeout, governs an open stream


def test_sse_head_that_never_comes_times_out_within_read_timeout(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def silent(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        server.stop.wait(10)

    server = serve(silent)
    client = make_client(server.base_url, read_timeout=0.3, stream_idle_timeout=30)
    elapsed = timed(lambda: client.open_event_stream(WID, after=0), RuntimeTimeout)
    assert elapsed < 0.3 + 1.0


def test_sse_close_from_another_thread_unblocks_the_reader(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def hold(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1)
        server.stop.wait(10)

    server = serve(hold)
    client = make_client(server.base_url, stream_idle_timeout=30)
    stream = client.open_event_stream(WID, after=0)
    got_first = threading.Event()
    outcome: list[object] = []

    def read() -> None:
        try:
            for message in stream:
                outcome.append(message)
                got_first.set()
            outcome.append("ended")
        except BaseException as exc:  # pragma: no cover - reported by the asserts below
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert got_first.wait(5)
    started = time.monotonic()
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 2
    assert outcome[-1] == "ended"  # a closed stream ends quietly, it does not raise
    assert stream.closed
    stream.close()  # idempotent


def test_sse_event_larger_than_the_cap_is_bad_response(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def endless_line(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1 + b"data: ")
        while not server.stop.is_set():
            conn.sendall(b"y" * 65536)

    server = serve(endless_line)
    client = make_client(server.base_url, max_event_bytes=256 * 1024)
    stream = client.open_event_stream(WID, after=0)
    seen: list[SseMessage] = []
    with pytest.raises(RuntimeBadResponse):
        seen.extend(stream)
    assert len(seen) == 1
    server.stop.set()
