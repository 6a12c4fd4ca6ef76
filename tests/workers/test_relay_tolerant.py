"""A browser's event socket over a remote runtime whose events are loosely typed.

String timestamps and numbers sent as strings reach the browser normalised (``ts`` a number); an event
without a ``seq`` is a typed failure: the socket is told ``reconnecting`` (``runtime_bad_response``) and the
relay resumes after the last seq it delivered, as for any upstream failure. The relay reads live streams
on the event loop, so the event streams come from a real socket on 127.0.0.1; the identity check and the
worker lookup (``requests``) are ``responses`` mocks of the same address.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import responses
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.runtimes.socket_server import SSE_HEADERS, TestServer
from tests.workers.remote_helpers import RID, WID, canned, make_remote_row, mock_runtime
from tests.workers.ws_helpers import events_path, open_socket

pytestmark = pytest.mark.django_db(transaction=True)

FIRST = (
    b'id: 1\nevent: status\ndata: {"seq":1,"worker_id":"w-0001","event":"status","data":{"status":"running"},'
    b'"ts":"2026-12-04T02:50:53.5Z"}\n\n'
    b'event: text_delta\ndata: {"worker_id":"w-0001","event":"text_delta","data":{"text":"no seq"}}\n\n'
)
SECOND = (
    b'id: 2\nevent: text_delta\ndata: {"seq":"2","worker_id":"w-0001","event":"text_delta","data":{"text":"a",'
    b'"extra":1},"ts":"1760000000.25","span":"ignored"}\n\n'
    b'id: 3\nevent: worker_exited\ndata: {"seq":3,"event":"worker_exited","data":{"status":"stopped"}}\n\n'
)


@pytest.fixture(autouse=True)
def fast_reconnects(quick_relay: SettingsWrapper) -> None:
    """The quick relay of tests/workers/conftest.py, reconnecting at once."""
    quick_relay.YOI_RELAY_BACKOFF_BASE = 0.01
    quick_relay.YOI_RELAY_BACKOFF_CAP = 0.05


class StreamServer:
    """Serves FIRST, then SECOND, to successive event-stream requests; remembers their Last-Event-ID."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.cursors: list[str | None] = []


def last_event_id(head: str) -> str | None:
    """The Last-Event-ID of a request head, if it has one."""
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "last-event-id":
            return value.strip()
    return None


@pytest.fixture
def streams() -> Iterator[StreamServer]:
    bodies = iter((FIRST, SECOND))
    cursors: list[str | None] = []

    def handle(conn: socket.socket, server: TestServer) -> None:
        cursors.append(last_event_id(server.read_request(conn).decode("latin-1")))
        conn.sendall(SSE_HEADERS + b"Connection: close\r\n\r\n" + next(bodies, b""))

    server = TestServer(handle)
    stream_server = StreamServer(server)
    stream_server.cursors = cursors
    yield stream_server
    server.close()


@pytest.fixture
def rsps(monkeypatch: pytest.MonkeyPatch, streams: StreamServer) -> Iterator[responses.RequestsMock]:
    """The remote row ``rt-remote`` at the stream server's address: summary and worker detail mocked."""
    base_url = streams.server.base_url
    make_remote_row(monkeypatch, base_url=base_url, read_timeout=5.0)
    with mock_runtime() as mock:
        mock.add(
            "GET", base_url + "/v1/runtime", body=canned("runtime_summary.json"), content_type="application/json"
        )
        mock.add(
            "GET", base_url + f"/v1/workers/{WID}", body=canned("worker.json"), content_type="application/json"
        )
        yield mock


async def test_loose_events_are_normalised_and_a_missing_seq_reconnects_after_the_last_seq(
    rsps: responses.RequestsMock, streams: StreamServer, user: User
) -> None:
    socket = await open_socket(events_path(RID, WID, "after=0"), user=user)
    try:
        assert socket.accepted
        assert await socket.read_until_closed() == 1000
    finally:
        await socket.disconnect()
    frames = socket.frames
    events = socket.events()
    assert [(e["seq"], e["event"]) for e in events] == [(1, "status"), (2, "text_delta"), (3, "worker_exited")]
    assert events[0]["ts"] == pytest.approx(1796352653.5)
    assert events[1]["ts"] == 1760000000.25 and events[1]["data"] == {"text": "a", "extra": 1}
    assert events[2]["ts"] is None
    states = [f for f in frames if f["type"] == "state"]
    assert {"upstream": "reconnecting", "reason": "runtime_bad_response"}.items() <= states[1].items()
    assert frames.index(states[1]) < frames.index(events[1])
    assert streams.cursors == ["0", "1"]  # resumed after the last seq it delivered
