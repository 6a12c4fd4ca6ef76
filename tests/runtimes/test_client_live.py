"""The live event streams of RemoteRuntimeClient (read on the event loop) over real sockets on 127.0.0.1:
the request it sends, SSE decoding across any chunking, timeouts, refusals, cut and oversized streams."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from runtimes.client import LiveEventStream, RemoteRuntimeClient, SseDecoder
from runtimes.errors import (
    InvalidRequest,
    RuntimeAuthFailed,
    RuntimeBadResponse,
    RuntimeRejected,
    RuntimeTimeout,
    RuntimeUnreachable,
    WorkerNotFound,
    YoiError,
)
from tests.runtimes.socket_server import EVENT_1, HALF_EVENT_2, SSE_HEADERS, TOKEN, WID, Handler, TestServer


class Sink:
    """Collects what a live stream delivers; ``ended`` resolves with its end (None or the error)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.ended: asyncio.Future[YoiError | None] = asyncio.get_running_loop().create_future()

    def message(self, name: str, data: dict[str, Any]) -> None:
        self.messages.append((name, data))

    def end(self, error: YoiError | None) -> None:
        assert not self.ended.done(), "on_end called twice"
        self.ended.set_result(error)


async def open_live(client: RemoteRuntimeClient, *, after: int | None = 0) -> tuple[LiveEventStream, Sink]:
    sink = Sink()
    stream = client.live_event_stream(WID, on_message=sink.message, on_end=sink.end)
    await stream.open(after=after)
    return stream, sink


def event(seq: int, kind: str = "text_delta") -> bytes:
    data = json.dumps({"seq": seq, "worker_id": WID, "event": kind, "data": {"i": seq}, "ts": 1.0})
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()


def chunked(*parts: bytes) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)


# ------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_sse_decoder_gives_the_same_events_however_the_bytes_are_cut(step: int) -> None:
    body = (
        b": ping\n\n"
        + event(1)
        + b'id: 2\r\nevent: status\r\ndata: {"seq": 2,\r\ndata:  "x": 1}\r\n\r\n'  # CRLF, two data lines
        + b"event: nothing\n\n"  # no data: not dispatched
        + b'data:{"seq":3}\r\r: ping\n'  # CR line ends, no space after the colon
    )
    decoder = SseDecoder()
    got = []
    for start in range(0, len(body), step):
        got.extend(decoder.feed(body[start : start + step]))
    assert [(name, json.loads(raw)["seq"]) for name, _, raw in got] == [
        ("text_delta", 1),
        ("status", 2),
        ("message", 3),
    ]
    assert got[1][2] == b'{"seq": 2,\n "x": 1}' and got[1][1] == "2"
    assert not decoder.mid_event and decoder.pending == 0


# ------------------------------------------------------------------------------------------- streams


async def test_live_stream_sends_the_protocol_request_and_delivers_each_event(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    requests: list[bytes] = []

    def stream(conn: socket.socket, server: TestServer) -> None:
        requests.append(server.read_request(conn))
        conn.sendall(
            SSE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(event(4), event(5)[:9], event(5)[9:])
        )
        conn.sendall(chunked(b": ping\n\n", event(6, "worker_exited")) + b"0\r\n\r\n")
        server.stop.wait(5)

    client = make_client(serve(stream).base_url)
    live, sink = await open_live(client, after=3)
    assert await asyncio.wait_for(sink.ended, 5) is None  # the runtime ended the response cleanly
    assert [(name, data["seq"]) for name, data in sink.messages] == [
        ("text_delta", 4),
        ("text_delta", 5),
        ("worker_exited", 6),
    ]
    head = requests[0].decode("latin-1")
    assert head.startswith(f"GET /v1/workers/{WID}/events HTTP/1.1\r\n")
    assert f"Authorization: Bearer {TOKEN}\r\n" in head and "Last-Event-ID: 3\r\n" in head
    assert "Accept: text/event-stream\r\n" in head and "Host: 127.0.0.1:" in head
    assert live.closed


@pytest.mark.parametrize("chunked_body", [False, True], ids=["close_delimited", "chunked"])
async def test_live_stream_cut_mid_event_is_unreachable(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient], chunked_body: bool
) -> None:
    def cut(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        if chunked_body:
            conn.sendall(SSE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(EVENT_1))
            conn.sendall(f"{len(HALF_EVENT_2) + 50:x}\r\n".encode() + HALF_EVENT_2)
        else:
            conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1 + HALF_EVENT_2)
        conn.shutdown(socket.SHUT_RDWR)

    client = make_client(serve(cut).base_url)
    _, sink = await open_live(client)
    error = await asyncio.wait_for(sink.ended, 5)
    assert isinstance(error, RuntimeUnreachable) and error.worker_id == WID
    assert [data["seq"] for _, data in sink.messages] == [1]


async def test_live_stream_silent_past_the_idle_timeout_times_out(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def idle(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1)
        server.stop.wait(10)

    client = make_client(serve(idle).base_url, read_timeout=0.2, stream_idle_timeout=0.8)
    _, sink = await open_live(client)
    started = time.monotonic()
    error = await asyncio.wait_for(sink.ended, 5)
    assert isinstance(error, RuntimeTimeout)
    assert 0.6 <= time.monotonic() - started < 0.8 + 1.0  # the idle timeout, not the read timeout


async def test_live_stream_head_that_never_comes_times_out_within_read_timeout(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def silent(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        server.stop.wait(10)

    client = make_client(serve(silent).base_url, read_timeout=0.3, stream_idle_timeout=30)
    started = time.monotonic()
    with pytest.raises(RuntimeTimeout):
        await open_live(client)
    assert time.monotonic() - started < 0.3 + 1.0


async def test_live_stream_to_a_closed_port_is_unreachable(
    make_client: Callable[..., RemoteRuntimeClient],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}")
    with pytest.raises(RuntimeUnreachable) as info:
        await open_live(client)
    assert str(port) not in str(info.value) and str(port) not in repr(info.value)


@pytest.mark.parametrize(
    ("status", "body", "error_class"),
    [
        (401, b'{"error":{"code":"unauthorized","message":"no"}}', RuntimeAuthFailed),
        (404, b'{"error":{"code":"worker_not_found","message":"no such worker"}}', WorkerNotFound),
        (400, b'{"error":{"code":"invalid_query","message":"bad cursor"}}', RuntimeRejected),
        (500, b"oops", RuntimeBadResponse),
    ],
)
@pytest.mark.parametrize("delimited", [True, False], ids=["content_length", "close_delimited"])
async def test_live_stream_refusal_maps_like_commands(
    serve: Callable[[Handler], TestServer],
    make_client: Callable[..., RemoteRuntimeClient],
    status: int,
    body: bytes,
    error_class: type[YoiError],
    delimited: bool,
) -> None:
    def refuse(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        length = f"Content-Length: {len(body)}\r\n" if delimited else "Connection: close\r\n"
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{length}\r\n".encode() + body)
        if not delimited:
            conn.shutdown(socket.SHUT_RDWR)
        server.stop.wait(2)

    client = make_client(serve(refuse).base_url)
    with pytest.raises(error_class) as info:
        await open_live(client)
    assert info.value.worker_id == WID


async def test_live_stream_with_another_content_type_is_bad_response(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def json_body(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        server.stop.wait(2)

    client = make_client(serve(json_body).base_url)
    with pytest.raises(RuntimeBadResponse):
        await open_live(client)


@pytest.mark.parametrize(
    ("tail", "reason"),
    [(b"data: not json\n\n", "json"), (b"data: [1, 2]\n\n", "object"), (b"data: " + b"y" * 300_000, "size")],
)
async def test_live_stream_bad_event_ends_it_as_bad_response_after_good_ones(
    serve: Callable[[Handler], TestServer],
    make_client: Callable[..., RemoteRuntimeClient],
    tail: bytes,
    reason: str,
) -> None:
    def bad(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1 + tail)
        server.stop.wait(5)

    client = make_client(serve(bad).base_url, max_event_bytes=256 * 1024)
    _, sink = await open_live(client)
    assert isinstance(await asyncio.wait_for(sink.ended, 5), RuntimeBadResponse), reason
    assert len(sink.messages) == 1


async def test_a_closed_live_stream_tells_nothing_more(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    def hold(conn: socket.socket, server: TestServer) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + EVENT_1)
        server.stop.wait(1)
        conn.sendall(event(2))

    server = serve(hold)
    client = make_client(server.base_url)
    live, sink = await open_live(client)
    deadline = time.monotonic() + 5
    while not sink.messages and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    live.close()
    live.close()  # idempotent
    server.stop.set()
    await asyncio.sleep(0.2)
    assert [data["seq"] for _, data in sink.messages] == [1] and not sink.ended.done()


async def test_live_stream_rejects_a_bad_cursor_or_id_without_connecting(
    serve: Callable[[Handler], TestServer], make_client: Callable[..., RemoteRuntimeClient]
) -> None:
    server = serve(lambda conn, server: None)
    client = make_client(server.base_url)
    with pytest.raises(InvalidRequest):
        await open_live(client, after=-1)
    sink = Sink()
    with pytest.raises(InvalidRequest):
        await client.live_event_stream("a/b", on_message=sink.message, on_end=sink.end).open(after=None)
    assert server.connections == 0
