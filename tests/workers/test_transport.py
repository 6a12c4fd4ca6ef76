"""workers.transport: frames written straight to a daphne connection, checked against an independent
WebSocket parser (the websockets library) over a real socket pair."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from workers.relay import Subscriber
from workers.transport import WRITE_HIGH_WATER, DirectWriter, direct_writer, text_frame


def parse_frames(data: bytes) -> list[Frame]:
    """Every complete frame in ``data``, as a client parses what a server sent (unmasked)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
            continue
        except EOFError:
            return frames
        raise AssertionError("incomplete frame")


class FakeTransport:
    """The attributes of Twisted's tcp.Server that the writer reads, on a real (non-blocking) socket."""

    TLS = False

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.written: list[bytes] = []
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered")  # as Twisted does
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._tempDataLen += len(data)


class FakeProtocol:
    """daphne's WebSocketProtocol, as far as the writer uses it."""

    STATE_OPEN = 3

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.state = self.STATE_OPEN
        self.send_queue: deque[Any] = deque()
        self.maxMessagePayloadSize = 0
        self.autoFragmentSize = 0
        self._perMessageCompress: Any = None
        self.replies: list[dict[str, Any]] = []

    def handle_reply(self, message: dict[str, Any]) -> None:
        self.replies.append(message)


async def server_reply(protocol: Any, message: dict[str, Any]) -> None:
    """Stands for daphne's ``Server.handle_reply``: daphne gives ``partial(handle_reply, protocol)``."""


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    yield server, client
    server.close()
    client.close()


def received(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def make_writer(server: socket.socket) -> tuple[DirectWriter, FakeProtocol]:
    protocol = FakeProtocol(FakeTransport(server))
    writer = direct_writer(functools.partial(server_reply, protocol))
    assert writer is not None
    return writer, protocol


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frame_is_what_a_websocket_client_parses(size: int) -> None:
    text = ("é" * size)[:size]  # multi-byte characters: the length is of the UTF-8 payload
    (frame,) = parse_frames(text_frame(text))
    assert frame.opcode is Opcode.TEXT and frame.fin and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert frame.data.decode("utf-8") == text


async def test_frames_of_one_loop_turn_go_out_together_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, protocol = await make_writer(server)
    for i in range(3):
        writer.write(f'{{"seq":{i}}}')
    assert received(client) == b""  # nothing sent before the turn ends
    await asyncio.sleep(0)
    assert [f.data for f in parse_frames(received(client))] == [b'{"seq":0}', b'{"seq":1}', b'{"seq":2}']
    assert protocol.transport.written == [] and protocol.replies == []


async def test_behind_bytes_twisted_buffered_the_frames_queue_there_too(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    writer, protocol = await make_writer(server)
    protocol.transport.dataBuffer = b"x" * 10  # Twisted has bytes of its own waiting: they must go first
    writer.write("after")
    writer.flush()
    assert received(client) == b""
    assert [f.data for f in parse_frames(b"".join(protocol.transport.written))] == [b"after"]


async def test_what_the_kernel_does_not_take_goes_to_twisted(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer, protocol = await make_writer(server)
    text = "y" * 3_000_000
    writer.write(text)
    writer.flush()
    direct = received(client)
    assert 0 < len(direct) < len(text)  # part went straight out, the rest waits in Twisted's buffer
    (frame,) = parse_frames(direct + b"".join(protocol.transport.written))
    assert frame.data.decode() == text


async def test_backed_up_counts_waiting_and_buffered_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    writer, protocol = await make_writer(server)
    assert writer.writable() and not writer.backed_up()
    writer.write("z" * (WRITE_HIGH_WATER + 1))  # still waiting for the end of the turn
    assert writer.backed_up() and not writer.writable()
    writer.flush()
    protocol.transport._tempDataLen = WRITE_HIGH_WATER + 1
    assert writer.backed_up()
    protocol.transport._tempDataLen = 0
    protocol.send_queue.append((b"ping", True))  # autobahn has its own bytes queued: not ours to pass
    assert not writer.writable()


async def test_a_closed_connection_drops_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, protocol = await make_writer(server)
    writer.write("before close")
    protocol.state = 4  # closing
    writer.write("after close")
    await asyncio.sleep(0)
    assert received(client) == b"" and protocol.transport.written == []
    assert not writer.writable()


async def test_messages_autobahn_would_compress_go_through_daphne_after_waiting_frames(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    writer, protocol = await make_writer(server)
    writer.write("plain")
    protocol._perMessageCompress = object()
    writer.write("compressed")
    assert [f.data for f in parse_frames(received(client))] == [b"plain"]  # flushed first, to keep the order
    assert protocol.replies == [{"type": "websocket.send", "text": "compressed"}]


async def test_no_writer_outside_daphne(pair: tuple[socket.socket, socket.socket]) -> None:
    async def plain_send(message: dict[str, Any]) -> None:
        """An ASGI send of some other server."""

    assert direct_writer(plain_send) is None
    protocol = FakeProtocol(FakeTransport(pair[0]))
    del protocol.send_queue  # not the autobahn this module knows
    assert direct_writer(functools.partial(server_reply, protocol)) is None


class ChannelProducer:
    """Twisted's HTTPChannel as the transport's producer before the upgrade: it records what it is told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


async def test_the_writer_takes_the_channels_place_as_producer_and_passes_calls_on(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    protocol = FakeProtocol(FakeTransport(pair[0]))
    channel = ChannelProducer()
    protocol.transport.producer = channel
    writer = direct_writer(functools.partial(server_reply, protocol))
    assert writer is not None and protocol.transport.producer is writer
    writer.pauseProducing()
    writer.resumeProducing()
    writer.stopProducing()
    assert channel.calls == ["pause", "resume", "stop"]


async def test_a_backed_up_writer_is_drained_when_twisted_resumes_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = pair
    writer, protocol = await make_writer(server)
    assert protocol.transport.producer is writer  # Twisted tells the writer about its buffer
    await asyncio.wait_for(writer.drained(), 1)  # not backed up: at once
    protocol.transport._tempDataLen = WRITE_HIGH_WATER + 1
    waiting = asyncio.ensure_future(writer.drained())
    await asyncio.sleep(0)
    writer.pauseProducing()
    assert not waiting.done()
    protocol.transport._tempDataLen = 0  # Twisted wrote its buffer out, then:
    writer.resumeProducing()
    await asyncio.wait_for(waiting, 1)
    protocol.transport._tempDataLen = WRITE_HIGH_WATER + 1
    waiting = asyncio.ensure_future(writer.drained())
    await asyncio.sleep(0)
    writer.stopProducing()  # the connection is gone: nobody waits for it
    await asyncio.wait_for(waiting, 1)


class RecordingWriter:
    """A FrameWriter that records frames and can be made to refuse (backed up)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.open = True

    def writable(self) -> bool:
        return self.open

    def backed_up(self) -> bool:
        return not self.open

    def write(self, text: str) -> None:
        self.frames.append(text)

    def flush(self) -> None:
        """Nothing waits in this writer."""

    async def drained(self) -> None:
        """Never backed up for long in these tests."""


async def test_subscriber_writes_directly_until_backed_up_then_hands_off_to_its_sender() -> None:
    writer = RecordingWriter()
    subscriber = Subscriber("rt", "w1", after=0, max_frames=10, writer=writer)
    subscriber.push_event(1, "e1")
    subscriber.push_control("s")
    assert writer.frames == ["e1", "s"] and subscriber.queue.empty() and not subscriber.handoff.is_set()
    writer.open = False
    subscriber.push_event(2, "e2")
    writer.open = True  # the socket drained, but e2 waits in the queue: e3 must not overtake it
    subscriber.push_event(3, "e3")
    assert writer.frames == ["e1", "s"]
    assert subscriber.handoff.is_set() and [subscriber.queue.get_nowait() for _ in range(2)] == ["e2", "e3"]
    subscriber.finish()
    assert subscriber.queue.get_nowait() is None and subscriber.handoff.is_set()
