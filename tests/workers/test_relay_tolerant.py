"""A browser's event socket over a remote runtime whose events are loosely typed (``responses`` mocks).

String timestamps and numbers sent as strings reach the browser normalised (``ts`` a number); an event
without a ``seq`` is a typed failure: the socket is told ``reconnecting`` (``runtime_bad_response``) and the
relay resumes after the last seq it delivered, as for any upstream failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.workers.remote_helpers import RID, WID, canned, make_remote_row, mock_runtime, mock_summary, upstream
from tests.workers.ws_helpers import events_path, open_socket

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = f"/v1/workers/{WID}/events"
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


@pytest.fixture
def rsps(monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    """The remote row ``rt-remote`` at a mocked address: its summary, worker detail and two event streams."""
    make_remote_row(monkeypatch, read_timeout=5.0)
    with mock_runtime() as mock:
        mock_summary(mock)
        mock.add(
            "GET", upstream(f"/v1/workers/{WID}"), body=canned("worker.json"), content_type="application/json"
        )
        for body in (FIRST, SECOND):  # answered in this order
            mock.add("GET", upstream(EVENTS), body=body, content_type="text/event-stream")
        yield mock


async def test_loose_events_are_normalised_and_a_missing_seq_reconnects_after_the_last_seq(
    rsps: responses.RequestsMock, user: User
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
    opened = [c.request.headers.get("Last-Event-ID") for c in rsps.calls if c.request.url == upstream(EVENTS)]
    assert opened == ["0", "1"]  # resumed after the last seq it delivered
