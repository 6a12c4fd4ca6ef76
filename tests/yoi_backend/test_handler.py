"""The HTTP handler (yoi_backend/handler.py): a whole request on one long-lived pool thread, which keeps its
database connection from one request to the next."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core import signals
from django.db import connection

from yoi_backend.handler import PooledASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)


def http_scope(
    path: str, *, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def request(
    app: Any, path: str, *, method: str = "GET", body: bytes = b"", **kwargs: Any
) -> tuple[int, bytes]:
    communicator = ApplicationCommunicator(app, http_scope(path, method=method, **kwargs))
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(timeout=10)
    chunks = []
    while True:
        message = await communicator.receive_output(timeout=10)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=10)
    return start["status"], b"".join(chunks)


@pytest.fixture
def finished() -> Any:
    """(thread, database connection) as seen by each request_finished, in order."""
    seen: list[tuple[str, int]] = []

    def record(**_: Any) -> None:
        seen.append((threading.current_thread().name, id(connection.connection)))

    signals.request_finished.connect(record)
    yield seen
    signals.request_finished.disconnect(record)


async def test_a_request_is_served_on_a_pool_thread_that_keeps_its_database_connection(finished: Any) -> None:
    app = PooledASGIHandler(max_threads=1)
    try:
        for _ in range(3):
            status, body = await request(app, "/readyz")  # runs a query: opens (or reuses) a connection
            assert (status, json.loads(body)["status"]) == (200, "ready")
    finally:
        app.executor.shutdown(wait=True)
    names = {name for name, _ in finished}
    assert len(names) == 1 and names.pop().startswith("django-request")
    assert len({conn for _, conn in finished}) == 1  # one connection for all three requests


async def test_more_concurrent_requests_than_threads_wait_for_a_thread() -> None:
    app = PooledASGIHandler(max_threads=2)
    try:
        results = await asyncio.gather(*(request(app, "/readyz") for _ in range(6)))
    finally:
        app.executor.shutdown(wait=True)
    assert [status for status, _ in results] == [200] * 6


async def test_errors_and_bodies_go_through_the_sync_middleware_chain() -> None:
    app = PooledASGIHandler(max_threads=2)
    try:
        # Anonymous API request: DRF's 401/403 envelope, rendered by the API's exception handler.
        status, body = await request(
            app,
            "/api/v1/runtimes/local/workers/w1/input/",
            method="POST",
            body=b'{"content": "hi"}',
            headers=[(b"content-type", b"application/json")],
        )
        assert status in (401, 403)
        assert "error" in json.loads(body)
        status, body = await request(app, "/api/v1/nowhere/")
        assert status in (401, 403, 404) and "error" in json.loads(body)
        status, _ = await request(app, "/login/")
        assert status == 200
    finally:
        app.executor.shutdown(wait=True)


async def test_only_http_is_served() -> None:
    app = PooledASGIHandler(max_threads=1)
    try:
        with pytest.raises(ValueError, match="websocket"):
            await app({"type": "websocket"}, None, None)
    finally:
        app.executor.shutdown(wait=True)


def test_repr_names_the_pool_size() -> None:
    app = PooledASGIHandler(max_threads=3)
    try:
        assert repr(app) == "PooledASGIHandler(max_threads=3)"
    finally:
        app.executor.shutdown(wait=True)
