"""Operations against real processes: a scripted run read back from /metrics, readiness on SIGTERM, a
runtime killed and restarted that recovers with no browser call, and probe_runtimes from a second shell.

Every process runs on 127.0.0.1 on a free port and is killed in a finalizer; every wait has a deadline.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from runtimes.breaker import BASE_COOLDOWN
from tests.backend_process import (
    QUICK_RELAY_ENV,
    BackendProcess,
    backend_data_dir,
    backend_env,
    create_login,
    free_port,
    run_manage,
    start_backend,
    sync_runtimes,
)
from tests.runtime_process import (
    RuntimeProcess,
    example_config,
    kill_spawned_since,
    spawned_count,
    start_runtime,
    wait_until,
)

pytestmark = pytest.mark.slow

METRICS_TOKEN = "ops-metrics-token-5d2a"
GOOD_TOKEN = "ops-good-runtime-token-83c1"
HTTP_TIMEOUT = (5.0, 30.0)


@dataclass
class Site:
    """A Backend with its API token, session and environment."""

    backend: BackendProcess
    api_token: str
    session_key: str
    env: dict[str, str]
    seen: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.backend.base_url + path

    def api(self, method: str, path: str, body: Any = None) -> requests.Response:
        headers = {"Authorization": f"Token {self.api_token}"}
        return requests.request(method, self.url(path), json=body, headers=headers, timeout=HTTP_TIMEOUT)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = requests.get(
            self.url("/metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 200, response.text
        self.seen.append(response.text)
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def runtime_row(runtime_id: str, base_url: str, token_env: str, timeout: float = 2.0) -> str:
    return (
        f'[[runtime]]\nruntime_id = "{runtime_id}"\ndisplay_name = "{runtime_id}"\nkind = "remote"\n'
        f'base_url = "{base_url}"\ntoken_ref = "env:{token_env}"\n'
        f"connect_timeout = {timeout}\nread_timeout = {timeout}\n"
    )


EMBEDDED_ROW = '[[runtime]]\nruntime_id = "embedded"\ndisplay_name = "Embedded"\nkind = "embedded"\n'


@pytest.fixture
def spawned() -> Iterator[None]:
    marker = spawned_count()
    yield
    kill_spawned_since(marker)


@pytest.fixture
def launch(tmp_path: Path, spawned: None) -> Iterator[Any]:
    started: list[BackendProcess] = []

    def start(rows: str, *, tokens: dict[str, str], extra: dict[str, str] | None = None) -> Site:
        data_dir = backend_data_dir(tmp_path / f"backend-{len(started)}")
        env = backend_env(
            secret_key="ops-process-secret",
            data_dir=data_dir,
            defaults=QUICK_RELAY_ENV,
            extra={"YOI_METRICS_TOKEN": METRICS_TOKEN, **tokens, **(extra or {})},
        )
        session_key, api_token = create_login(env, "ops-browser", migrate=True)
        sync_runtimes(rows, data_dir=data_dir, env=env)
        backend = start_backend(env=env, log_path=data_dir / "daphne.log")
        started.append(backend)
        return Site(backend=backend, api_token=api_token, session_key=session_key, env=env)

    yield start
    for backend in started:
        backend.kill()


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_a_scripted_run_shows_in_the_series(launch: Any, tmp_path: Path) -> None:
    good = start_runtime(
        tmp_path / "good", runtime_id="good", token=GOOD_TOKEN, config_text=example_config(event_retention=3)
    )
    refusing = start_runtime(tmp_path / "refusing", runtime_id="refusing", token="the-runtime-s-own-token-1")
    dead_url = f"http://127.0.0.1:{free_port()}"
    rows = "\n".join(
        [
            runtime_row("good", good.base_url, "YOI_RUNTIME_TOKEN_GOOD"),
            runtime_row("refusing", refusing.base_url, "YOI_RUNTIME_TOKEN_REFUSING"),
            runtime_row("dead", dead_url, "YOI_RUNTIME_TOKEN_DEAD", timeout=0.5),
        ]
    )
    tokens = {
        "YOI_RUNTIME_TOKEN_GOOD": GOOD_TOKEN,
        "YOI_RUNTIME_TOKEN_REFUSING": "not-what-it-expects-2",
        "YOI_RUNTIME_TOKEN_DEAD": "dead-token-3",
    }
    site = launch(rows, tokens=tokens, extra={"YOI_HEALTH_MONITOR_SECONDS": "0"})

    # /metrics: 401 without the token, or with a wrong one.
    assert requests.get(site.url("/metrics"), timeout=HTTP_TIMEOUT).status_code == 401
    wrong = requests.get(site.url("/metrics"), headers={"Authorization": "Bearer nope"}, timeout=HTTP_TIMEOUT)
    assert wrong.status_code == 401

    # A runtime answering 401: the browser gets a 502.
    refused = site.api("GET", "/api/v1/runtimes/refusing/workers/")
    assert (refused.status_code, refused.json()["error"]["code"]) == (502, "runtime_auth_failed")
    # A dead runtime: five failures trip its breaker, the sixth call fails fast.
    for _ in range(5):
        assert site.api("GET", "/api/v1/runtimes/dead/workers/").status_code == 502
    fast = site.api("GET", "/api/v1/runtimes/dead/workers/")
    assert (fast.status_code, fast.json()["error"]["code"]) == (503, "runtime_circuit_open")

    # A worker whose early history the runtime no longer keeps: a browser asking for all of it is reset.
    created = site.api(
        "POST", "/api/v1/runtimes/good/workers/", {"profile": "builtin:echo", "initial_input": "one"}
    )
    assert created.status_code == 201, created.text
    worker_id = created.json()["worker_id"]
    for text in ("two", "three"):
        assert site.api("POST", f"/api/v1/runtimes/good/workers/{worker_id}/input/", {"content": text}).ok
    wait_until(
        lambda: (site.api("GET", f"/api/v1/runtimes/good/workers/{worker_id}/").json()["last_seq"] or 0) >= 8,
        timeout=20,
        message="the echo worker's answers",
    )
    socket_url = site.url(f"/ws/runtimes/good/workers/{worker_id}/events/?after=0").replace("http://", "ws://")
    headers = {
        "Cookie": f"sessionid={site.session_key}",
        "Origin": site.backend.origin,
        "X-Request-ID": "ops-ws-1",
    }
    with connect(socket_url, additional_headers=headers, open_timeout=15) as ws:
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not any(frame["type"] == "reset" for frame in frames):
            assert time.monotonic() < deadline, frames
            frames.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    reset = next(frame for frame in frames if frame["type"] == "reset")
    assert reset["reason"] == "history_expired"

    values = wait_until(
        lambda: (v := site.metrics()).get(key("yoi_ws_connections_open"), 1) == 0 and v,
        timeout=10,
        message="the socket to be counted closed",
    )
    upstream = "yoi_upstream_requests_total"
    assert values[key(upstream, runtime_id="refusing", route="summary", code="runtime_auth_failed")] == 1
    assert values[key(upstream, runtime_id="dead", route="summary", code="runtime_unreachable")] == 5
    assert values[key(upstream, runtime_id="good", route="create_worker", code="ok")] == 1
    assert values[key(upstream, runtime_id="good", route="open_events", code="ok")] >= 1
    assert values[key("yoi_upstream_request_duration_seconds_count", runtime_id="good", route="send_input")] == 2
    api = "yoi_api_requests_total"
    assert values[key(api, route="workers:runtime-worker-list", method="GET", status="502")] == 6
    assert values[key(api, route="workers:runtime-worker-list", method="GET", status="503")] == 1
    assert values[key(api, route="workers:runtime-worker-list", method="POST", status="201")] == 1
    assert values[key("yoi_breaker_trips_total", runtime_id="dead")] == 1
    assert values[key("yoi_breaker_state", runtime_id="dead")] in (1.0, 0.5)  # open; half-open after 5 s
    assert values[key("yoi_breaker_state", runtime_id="good")] == 0.0
    assert values[key("yoi_runtime_up", runtime_id="good")] == 1.0
    assert values[key("yoi_runtime_up", runtime_id="dead")] == 0.0
    assert values[key("yoi_relay_resets_total", reason="history_expired")] == 1
    assert values[key("yoi_relay_events_total")] >= 1
    assert sum(v for (name, _), v in values.items() if name == "yoi_ws_closes_total") >= 1
    text = site.seen[-1]
    assert worker_id not in text and "127.0.0.1" not in text and GOOD_TOKEN not in text
    good.stop()
    refusing.stop()


def test_sigterm_turns_readyz_unready_first_and_then_exits(launch: Any) -> None:
    site = launch(EMBEDDED_ROW, tokens={}, extra={"YOI_DRAIN_DELAY_SECONDS": "3", "YOI_DRAIN_GRACE_SECONDS": "2"})
    assert requests.get(site.url("/readyz"), timeout=HTTP_TIMEOUT).json()["status"] == "ready"
    site.backend.proc.send_signal(signal.SIGTERM)
    [unready] = wait_until(
        lambda: (r := requests.get(site.url("/readyz"), timeout=HTTP_TIMEOUT)).status_code == 503 and [r],
        timeout=3,
        message="/readyz to answer 503",
    )
    assert unready.json()["failing"] == ["draining"]
    assert requests.get(site.url("/livez"), timeout=HTTP_TIMEOUT).status_code == 200
    assert site.backend.proc.wait(timeout=20) == 0, site.backend.log_text()


def test_a_killed_runtime_that_comes_back_is_online_without_a_browser_call(launch: Any, tmp_path: Path) -> None:
    runtime: RuntimeProcess = start_runtime(tmp_path / "rt", runtime_id="rt-1", token=GOOD_TOKEN)
    rows = runtime_row("rt-1", runtime.base_url, "YOI_RUNTIME_TOKEN_RT_1", timeout=1.0)
    site = launch(rows, tokens={"YOI_RUNTIME_TOKEN_RT_1": GOOD_TOKEN}, extra={"YOI_HEALTH_MONITOR_SECONDS": "0.2"})
    assert site.api("GET", "/api/v1/runtimes/rt-1/").json()["status"]["state"] == "online"
    runtime.kill()
    for _ in range(5):
        assert site.api("GET", "/api/v1/runtimes/rt-1/workers/").status_code == 502
    assert site.api("GET", "/api/v1/runtimes/rt-1/workers/").status_code == 503  # the breaker is open
    assert site.metrics()[key("yoi_runtime_up", runtime_id="rt-1")] == 0.0
    runtime = runtime.restart()
    restarted = time.monotonic()
    # From here on only /metrics is read: no browser call reaches the runtime.
    wait_until(
        lambda: site.metrics()[key("yoi_runtime_up", runtime_id="rt-1")] == 1.0,
        timeout=BASE_COOLDOWN + 5,
        message="the runtime to be marked online again",
        interval=0.2,
    )
    recovered_in = time.monotonic() - restarted
    values = site.metrics()
    assert values[key("yoi_breaker_state", runtime_id="rt-1")] == 0.0
    assert recovered_in <= BASE_COOLDOWN + 2, recovered_in
    listing = site.api("GET", "/api/v1/runtimes/").json()["items"]
    assert [(item["runtime_id"], item["status"]["state"]) for item in listing] == [("rt-1", "online")]
    assert site.api("GET", "/api/v1/runtimes/rt-1/workers/").status_code == 200
    runtime.stop()


def test_probe_runtimes_from_a_second_shell_leaves_the_shared_rows_alone(launch: Any, tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path / "rt", runtime_id="rt-2", token=GOOD_TOKEN)
    rows = EMBEDDED_ROW + "\n" + runtime_row("rt-2", runtime.base_url, "YOI_RUNTIME_TOKEN_RT_2")
    site = launch(rows, tokens={"YOI_RUNTIME_TOKEN_RT_2": GOOD_TOKEN})
    for runtime_id in ("embedded", "rt-2"):
        assert site.api("POST", f"/api/v1/runtimes/{runtime_id}/probe/").json()["status"]["state"] == "online"
    # A second shell, as the README suggests: the same database, but no token variable, and the embedded
    # runtime's store is held by the serving Backend.
    shell_env = {k: v for k, v in site.env.items() if k != "YOI_RUNTIME_TOKEN_RT_2"}
    result = run_manage("probe_runtimes", env=shell_env)
    assert result.returncode != 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("embedded: local_failure runtime_unreachable (")
    assert lines[1].startswith("rt-2: local_failure runtime_auth_failed (")
    assert all(line.endswith("its status was left as it was") for line in lines)
    assert "could not be probed from this process: embedded, rt-2" in result.stderr
    listing = site.api("GET", "/api/v1/runtimes/").json()["items"]
    assert {item["runtime_id"]: item["status"]["state"] for item in listing} == {
        "embedded": "online",
        "rt-2": "online",
    }
    runtime.stop()
