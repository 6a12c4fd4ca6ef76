"""Operations endpoints and request ids in-process: /livez, /readyz, /metrics, X-Request-ID, mapped 5xx logs."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.models import Runtime
from runtimes.registry import registry
from tests.backend_process import free_port
from workers.routing import websocket_urlpatterns
from yoi_backend import lifecycle
from yoi_backend.sockets import SocketObserver

METRICS_TOKEN = "metrics-token-in-process-9a1c"
HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def clean_state(settings: SettingsWrapper, tmp_path: Path) -> Iterator[None]:
    settings.YOI_DATA_DIR = tmp_path / "data"
    registry.reset()
    lifecycle.reset()
    yield
    lifecycle.reset()
    registry.reset()


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("ops-user", "ops@example.invalid", "ops-pw-for-tests")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_livez_looks_at_nothing_and_answers_any_host(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0):
        response = Client().get("/livez", HTTP_HOST="10.20.30.40:8000")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert Client().get("/healthz", HTTP_HOST="10.20.30.40:8000").json() == {"status": "ok"}
    assert Client().post("/livez").status_code == 405


@pytest.mark.django_db
def test_readyz_is_ready_then_names_draining() -> None:
    ready = Client().get("/readyz", HTTP_HOST="10.20.30.40")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"draining": "ok", "database": "ok", "registry": "ok"}}
    lifecycle.begin_drain()
    draining = Client().get("/readyz")
    assert draining.status_code == 503
    assert draining.json()["failing"] == ["draining"]
    assert Client().get("/livez").status_code == 200  # alive while draining


@pytest.mark.django_db
def test_readyz_names_the_database_when_it_is_gone(tmp_path: Path) -> None:
    answers: dict[str, Any] = {}

    def serve_with_the_database_gone() -> None:
        # This thread's own connection points at a database file that cannot exist (its directory is missing);
        # the test's connection on the main thread is left alone.
        conn = connections["default"]
        conn.settings_dict = {**conn.settings_dict, "NAME": str(tmp_path / "no-such-dir" / "db.sqlite3")}
        try:
            answers["ready"] = Client().get("/readyz")
            answers["live"] = Client().get("/livez")
        finally:
            conn.close()

    thread = threading.Thread(target=serve_with_the_database_gone)
    thread.start()
    thread.join(30)
    response = answers["ready"]
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["database", "registry"] and body["checks"]["draining"] == "ok"
    assert str(tmp_path) not in response.content.decode()
    assert answers["live"].status_code == 200


@pytest.mark.django_db
def test_metrics_are_off_without_a_token(settings: SettingsWrapper) -> None:
    settings.YOI_METRICS_TOKEN = ""
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert response.status_code == 404
    assert "yoi_" not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", ["", f"Token {METRICS_TOKEN}", "Bearer wrong-token", f"Bearer {METRICS_TOKEN}x"], ids=str
)
def test_metrics_refuse_a_missing_or_wrong_token(settings: SettingsWrapper, header: str) -> None:
    settings.YOI_METRICS_TOKEN = METRICS_TOKEN
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().get("/metrics", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_metrics_with_the_token_list_the_series_from_rows_and_breakers(settings: SettingsWrapper) -> None:
    settings.YOI_METRICS_TOKEN = METRICS_TOKEN
    Runtime.objects.create(runtime_id="emb", display_name="emb", kind="embedded", status="online")
    Runtime.objects.create(
        runtime_id="dead", display_name="dead", kind="remote", base_url=f"http://127.0.0.1:{free_port()}",
        token_ref="env:YOI_RUNTIME_TOKEN_DEAD", status="offline",
    )  # fmt: skip
    Runtime.objects.create(runtime_id="off", display_name="off", kind="embedded", enabled=False)
    for _ in range(5):
        registry.breaker("dead").record_failure()
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}", HTTP_HOST="10.0.0.9")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'yoi_runtime_up{runtime_id="emb"} 1.0' in text
    assert 'yoi_runtime_up{runtime_id="dead"} 0.0' in text
    assert 'yoi_breaker_state{runtime_id="dead"} 1.0' in text
    assert 'yoi_breaker_state{runtime_id="emb"} 0.0' in text
    assert 'runtime_id="off"' not in text
    assert 'yoi_breaker_trips_total{runtime_id="dead"}' in text
    for series in ("yoi_api_requests_total", "yoi_relay_upstreams_open", "yoi_ws_connections_open"):
        assert series in text


@pytest.mark.django_db
def test_api_requests_are_counted_by_route_name_never_by_path(user: User) -> None:
    client = Client()
    client.force_login(user)
    route = "workers:runtime-detail"
    before = sample("yoi_api_requests_total", route=route, method="GET", status="404")
    assert client.get("/api/v1/runtimes/some-unknown-id-123/").status_code == 404
    assert sample("yoi_api_requests_total", route=route, method="GET", status="404") == before + 1
    assert sample("yoi_api_request_duration_seconds_count", route=route, method="GET") >= 1
    text = REGISTRY.get_sample_value  # the path's id is no label of any series
    assert text is not None and "some-unknown-id-123" not in json.dumps(
        [s.labels for m in REGISTRY.collect() if m.name.startswith("yoi_api") for s in m.samples]
    )


@pytest.mark.django_db
def test_request_id_round_trip(user: User) -> None:
    client = Client()
    client.force_login(user)
    response = client.get("/api/v1/runtimes/ghost/", HTTP_X_REQUEST_ID="caller-id.42")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "caller-id.42"
    assert response.json()["error"]["request_id"] == "caller-id.42"
    made = client.get("/api/v1/runtimes/ghost/", HTTP_X_REQUEST_ID="not an id\r\ninjected: 1")
    assert HEX_ID.fullmatch(made["X-Request-ID"])
    assert made.json()["error"]["request_id"] == made["X-Request-ID"]
    assert HEX_ID.fullmatch(client.get("/livez")["X-Request-ID"])


@pytest.mark.django_db
def test_a_mapped_5xx_is_one_warning_with_its_code_not_a_django_request_error(
    user: User, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YOI_RUNTIME_TOKEN_REFUSED", "some-token-value-77")
    Runtime.objects.create(
        runtime_id="refused", display_name="refused", kind="remote", base_url=f"http://127.0.0.1:{free_port()}",
        token_ref="env:YOI_RUNTIME_TOKEN_REFUSED", connect_timeout=0.5, read_timeout=0.5,
    )  # fmt: skip
    client = Client()
    client.force_login(user)
    with caplog.at_level(logging.INFO):
        response = client.get("/api/v1/runtimes/refused/workers/", HTTP_X_REQUEST_ID="req-5xx")
    assert response.status_code == 502
    assert not [r for r in caplog.records if r.name == "django.request"]
    [warning] = [r for r in caplog.records if r.getMessage() == "workers.api.runtime_error"]
    assert warning.levelno == logging.WARNING
    assert (warning.code, warning.status, warning.runtime_id) == ("runtime_unreachable", 502, "refused")  # type: ignore[attr-defined]
    assert warning.request_id == "req-5xx"  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
async def test_a_socket_gets_a_request_id_in_its_error_frame_and_is_counted(user: User) -> None:
    app = SocketObserver(URLRouter(websocket_urlpatterns))

    async def with_user(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "user": user}, receive, send)

    closes = sample("yoi_ws_closes_total", code="4404")
    communicator = WebsocketCommunicator(
        with_user, "/ws/runtimes/ghost/workers/w-1/events/", headers=[(b"x-request-id", b"socket-req-7")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    frame = json.loads(await communicator.receive_from(timeout=10))
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "runtime_not_found" and frame["error"]["request_id"] == "socket-req-7"
    closed = await communicator.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4404}
    await communicator.disconnect(code=1000, timeout=10)  # the browser answers the close
    assert sample("yoi_ws_closes_total", code="4404") == closes + 1
    assert sample("yoi_ws_connections_open") == 0
