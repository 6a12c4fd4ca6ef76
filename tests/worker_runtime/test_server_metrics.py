"""The reference runtime's own /metrics: behind its bearer token, with workers, events, streams, requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker_runtime.core import WorkerRuntime
from worker_runtime.server import RuntimeServer, create_server
from worker_runtime.store import MemoryStore

TOKEN = "metrics-runtime-token-2b7f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server() -> Iterator[RuntimeServer]:
    store = MemoryStore()
    runtime = WorkerRuntime(runtime_id="rt-metrics", store=store)
    runtime.open()
    try:
        yield create_server(runtime, store=store, token=TOKEN, ping_interval=0.05)
    finally:
        runtime.close()


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
