"""The server's ASGI app in-process: unexpected errors, the slow-client bound, the stream bridge, /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker_runtime.core import Subscription, WorkerRuntime
from worker_runtime.model import Event
from worker_runtime.server import (
    INTERNAL_ERROR_MESSAGE,
    BearerToken,
    EventStream,
    RuntimeServer,
    create_server,
)
from worker_runtime.store import MemoryStore

TOKEN = "in-process-token-8d1e"


@pytest.fixture
def server() -> Iterator[RuntimeServer]:
    store = MemoryStore()
    runtime = WorkerRuntime(runtime_id="rt-app", store=store)
    runtime.open()
    try:
        yield create_server(runtime, store=store, token=TOKEN, ping_interval=0.05)
    finally:
        runtime.close()


def test_unexpected_errors_answer_a_bare_500_and_are_logged(
    server: RuntimeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("secret detail /srv/path")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            return await client.get("/v1/runtime", headers={"Authorization": f"Bearer {TOKEN}"})

    monkeypatch.setattr(server.runtime, "summary", explode)
    with caplog.at_level(logging.ERROR):
        response = asyncio.run(get())
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": INTERNAL_ERROR_MESSAGE}}
    assert "secret detail" not in response.text and "Traceback" not in response.text
    assert any(r.getMessage() == "worker_runtime.server.internal_error" for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_repr_of_the_server_pieces_shows_no_token(server: RuntimeServer) -> None:
    assert TOKEN not in repr(server) and TOKEN not in repr(server.app.user_middleware)
    assert str(BearerToken(TOKEN)) == repr(BearerToken(TOKEN)) == "BearerToken(<redacted>)"


def make_events(first: int, count: int, kind: str = "text_delta") -> list[Event]:
    return [Event.make(seq=s, worker_id="w", kind=kind, data={}, ts=0.0) for s in range(first, first + count)]


async def collect(stream: EventStream) -> list[bytes]:
    return [chunk async for chunk in stream.frames()]


def test_a_slow_stream_ends_after_what_it_queued_when_its_queue_overflows() -> None:
    async def main() -> tuple[list[bytes], bool]:
        stream = EventStream(asyncio.get_running_loop(), max_batches=2, ping_interval=5)
        closed: list[bool] = []
        stream.subscription = Subscription(
            backlog=make_events(1, 1), reset_earliest_seq=None, finished=False, _close=lambda: closed.append(True)
        )
        for first in (2, 3, 4, 5):  # the third and fourth batches do not fit
            stream.listener(make_events(first, 1))
        await asyncio.sleep(0)  # let the call_soon_threadsafe deliveries run
        return await asyncio.wait_for(collect(stream), 5), bool(closed)

    chunks, closed = asyncio.run(main())
    text = b"".join(chunks).decode()
    assert [line for line in text.splitlines() if line.startswith("id: ")] == ["id: 1", "id: 2", "id: 3"]
    assert closed


def test_a_stream_skips_duplicates_pings_when_idle_and_ends_at_worker_exited() -> None:
    async def main() -> list[bytes]:
        stream = EventStream(asyncio.get_running_loop(), max_batches=10, ping_interval=0.01)
        stream.subscription = Subscription(
            backlog=make_events(1, 2),
            reset_earliest_seq=1,
            finished=False,
            _close=lambda: None,
            epoch="e-1",
            reset_reason="history_expired",
        )
        chunks: list[bytes] = []

        async def pump() -> None:
            async for chunk in stream.frames():
                chunks.append(chunk)

        async def until_idle_ping() -> None:
            while b": ping\n\n" not in chunks:
                await asyncio.sleep(0.005)

        task = asyncio.ensure_future(pump())
        await asyncio.wait_for(until_idle_ping(), 5)
        stream.listener(make_events(2, 2))  # seq 2 again, then 3
        stream.listener(make_events(4, 1, kind="worker_exited") + make_events(5, 1))
        await asyncio.wait_for(task, 5)
        return chunks

    text = b"".join(asyncio.run(main())).decode()
    reset = '{"reason":"history_expired","earliest_seq":1,"epoch":"e-1"}'
    assert text.startswith(f"event: reset\ndata: {reset}\n\nid: 1\n")
    assert ": ping\n\n" in text
    assert [line for line in text.splitlines() if line.startswith("id: ")] == ["id: 1", "id: 2", "id: 3", "id: 4"]
    assert text.endswith("event: worker_exited\ndata: " + make_events(4, 1, "worker_exited")[0].text + "\n\n")


def test_shutdown_ends_open_streams(server: RuntimeServer) -> None:
    async def main() -> list[bytes]:
        stream = EventStream(asyncio.get_running_loop(), max_batches=10, ping_interval=5)
        stream.subscription = Subscription(
            backlog=[], reset_earliest_seq=None, finished=False, _close=lambda: None
        )
        server._streams.add(stream)
        task = asyncio.ensure_future(collect(stream))
        server.begin_shutdown()
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(main()) == []


# --------------------------------------------------------------------------------------------- /metrics

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scripted(server: RuntimeServer) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
        anonymous = await client.get("/metrics")
        body = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "builtin:echo"}}
        created = await client.post("/v1/workers", json=body, headers=AUTH)
        worker_id = created.json()["worker"]["worker_id"]
        await client.post(f"/v1/workers/{worker_id}/cancel", headers=AUTH)
        await client.get("/v1/workers/ghost", headers=AUTH)
        scraped = await client.get("/metrics", headers=AUTH)
        return anonymous, created, scraped


def test_metrics_need_the_token_and_count_workers_events_and_requests(server: RuntimeServer) -> None:
    anonymous, created, scraped = asyncio.run(scripted(server))
    assert anonymous.status_code == 401
    assert created.status_code == 201
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    values = samples(scraped.text)
    assert values[("yoi_runtime_workers", (("status", "cancelled"),))] == 1
    assert values[("yoi_runtime_workers", (("status", "running"),))] == 0
    assert values[("yoi_runtime_event_streams_open", ())] == 0
    assert values[("yoi_runtime_events_written_total", ())] >= 2  # at least its status and its exit
    requests = "yoi_runtime_http_requests_total"
    assert values[(requests, (("method", "POST"), ("route", "create_worker"), ("status", "201")))] == 1
    assert values[(requests, (("method", "GET"), ("route", "get_worker"), ("status", "404")))] == 1
    histogram = "yoi_runtime_http_request_duration_seconds_count"
    assert values[(histogram, (("method", "POST"), ("route", "cancel_worker")))] == 1
    assert created.json()["worker"]["worker_id"] not in scraped.text  # no worker ids in labels
