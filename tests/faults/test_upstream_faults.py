"""Upstream faults through a real Backend: every misbehaving runtime is a typed §5 answer, in bounded time.

The runtimes are fakes on 127.0.0.1 (see conftest): a blackhole, a refused port, and HTTP servers that
answer 401 / 500 / non-JSON / 50 MB / a slow drip / a cut SSE stream — on worker routes after a correct
identity check, or on ``/v1/runtime`` itself (then no command may reach them).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from websockets.sync.client import connect as ws_connect

from tests.faults.conftest import FAKE_TOKEN, FAKE_WORKER_ID, FaultBackend, FaultSite

READ_TIMEOUT = 1.0  # every fault row's read timeout
INPUT_BODY = {"content": "hello"}


def send_input(backend: FaultBackend, runtime_id: str, **kwargs: Any) -> requests.Response:
    """POST an input to the fake worker of ``runtime_id``."""
    return backend.api("POST", f"runtimes/{runtime_id}/workers/{FAKE_WORKER_ID}/input/", INPUT_BODY, **kwargs)


def timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    """The response and how long it took (seconds)."""
    started = time.perf_counter()
    response = call()
    return response, time.perf_counter() - started


def assert_envelope(
    response: requests.Response, *, status: int, code: str, runtime_id: str, site: FaultSite
) -> None:
    """A JSON §5 envelope with this status and code, naming the runtime, leaking neither address nor token."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["runtime_id"] == runtime_id
    assert isinstance(error["message"], str) and isinstance(error["retryable"], bool)
    for secret in (
        FAKE_TOKEN,
        "127.0.0.1",
        str(site.fakes.port),
        str(site.blackhole.port),
        str(site.refused.port),
    ):
        assert secret not in response.text


def test_refused_port_is_502_runtime_unreachable_in_under_a_second(fault_site: FaultSite) -> None:
    response, elapsed = timed(lambda: send_input(fault_site.backend, "refused"))
    print(f"refused: {response.status_code} in {elapsed * 1000:.0f} ms")
    assert_envelope(response, status=502, code="runtime_unreachable", runtime_id="refused", site=fault_site)
    assert response.json()["error"]["retryable"] is True
    assert elapsed < 1.0


def test_blackhole_is_504_runtime_timeout_within_read_timeout_plus_one_second(fault_site: FaultSite) -> None:
    accepted_before = fault_site.blackhole.accepted
    response, elapsed = timed(lambda: send_input(fault_site.backend, "blackhole"))
    print(f"blackhole: {response.status_code} in {elapsed * 1000:.0f} ms")
    assert_envelope(response, status=504, code="runtime_timeout", runtime_id="blackhole", site=fault_site)
    assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 1.0
    assert fault_site.blackhole.accepted > accepted_before  # it did connect: a read timeout, not a refusal


# (runtime_id, status, code, bound in seconds). "-summary" rows fail the identity check itself.
UPSTREAM_FAULTS = [
    ("auth-worker", 502, "runtime_auth_failed", 1.0),
    ("auth-summary", 502, "runtime_auth_failed", 1.0),
    ("err500-worker", 502, "runtime_bad_response", 1.0),
    ("err500-summary", 502, "runtime_bad_response", 1.0),
    ("notjson-worker", 502, "runtime_bad_response", 1.0),
    ("notjson-summary", 502, "runtime_bad_response", 1.0),
    ("huge-declared-worker", 502, "runtime_bad_response", 1.0),
    ("hang-worker", 504, "runtime_timeout", READ_TIMEOUT + 1.0),
]


@pytest.mark.parametrize(("runtime_id", "status", "code", "bound"), UPSTREAM_FAULTS)
def test_upstream_fault_is_a_typed_answer_in_bounded_time(
    fault_site: FaultSite, runtime_id: str, status: int, code: str, bound: float
) -> None:
    response, elapsed = timed(lambda: send_input(fault_site.backend, runtime_id))
    print(f"{runtime_id}: {response.status_code} {response.json()['error']['code']} in {elapsed * 1000:.0f} ms")
    assert_envelope(response, status=status, code=code, runtime_id=runtime_id, site=fault_site)
    assert elapsed < bound
    seen = fault_site.fakes.requests_to(runtime_id)
    assert seen[0] == ("GET", "/v1/runtime")
    if runtime_id.endswith("-summary"):
        # The runtime never proved its identity: no command was sent to it.
        assert all(route == "/v1/runtime" for _, route in seen), seen
    else:
        assert ("POST", f"/v1/workers/{FAKE_WORKER_ID}/input") in seen


@pytest.mark.parametrize("runtime_id", ["drip-worker", "drip-summary"])
def test_slow_drip_body_is_504_runtime_timeout_within_the_total_deadline(
    fault_site: FaultSite, runtime_id: str
) -> None:
    row = fault_site.rows[runtime_id]
    response, elapsed = timed(lambda: send_input(fault_site.backend, runtime_id))
    print(f"{runtime_id}: {response.status_code} in {elapsed * 1000:.0f} ms")
    assert_envelope(response, status=504, code="runtime_timeout", runtime_id=runtime_id, site=fault_site)
    # The client's deadline for one request is connect + read timeout, however steadily the bytes drip
    # (a byte every 0.1 s: the read timeout alone would never fire).
    deadline = row.connect_timeout + row.read_timeout
    assert deadline * 0.9 <= elapsed < deadline + 1.0


@pytest.mark.parametrize("runtime_id", ["huge-worker", "huge-summary"])
def test_fifty_megabyte_body_is_502_quickly_without_the_backend_growing(
    fault_site: FaultSite, runtime_id: str
) -> None:
    backend = fault_site.backend
    rss_before, hwm_before = backend.proc_status_kb("VmRSS"), backend.proc_status_kb("VmHWM")
    response, elapsed = timed(lambda: send_input(backend, runtime_id))
    rss_after, hwm_after = backend.proc_status_kb("VmRSS"), backend.proc_status_kb("VmHWM")
    print(
        f"{runtime_id}: {response.status_code} in {elapsed * 1000:.0f} ms; "
        f"VmRSS {rss_before} -> {rss_after} kB ({rss_after - rss_before:+d}), "
        f"VmHWM {hwm_before} -> {hwm_after} kB ({hwm_after - hwm_before:+d})"
    )
    assert_envelope(response, status=502, code="runtime_bad_response", runtime_id=runtime_id, site=fault_site)
    assert elapsed < 3.0
    # The body is cut off at the 8 MiB cap: neither the resident set nor its peak grows by anything like 50 MB.
    assert rss_after - rss_before < 24 * 1024
    assert hwm_after - hwm_before < 24 * 1024


def test_sse_stream_cut_mid_event_shows_reconnecting_on_the_browser_socket(fault_site: FaultSite) -> None:
    backend = fault_site.backend
    url = f"ws://127.0.0.1:{backend.port}/ws/runtimes/ssecut/workers/{FAKE_WORKER_ID}/events/?after=0"
    frames: list[dict[str, Any]] = []
    with ws_connect(
        url,
        origin=backend.origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
        additional_headers={"Cookie": f"sessionid={backend.session_key}"},
        open_timeout=10,
        close_timeout=5,
    ) as ws:
        deadline = time.monotonic() + 10
        while not any(f.get("type") == "state" and f.get("upstream") == "reconnecting" for f in frames):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no reconnecting state frame within 10 s: {frames}"
            frames.append(json.loads(ws.recv(timeout=remaining)))
    print("ssecut frames:", frames)
    states = [f for f in frames if f.get("type") == "state"]
    reconnecting = next(f for f in states if f["upstream"] == "reconnecting")
    assert reconnecting["reason"] == "runtime_unreachable"
    assert reconnecting["retry_in"] > 0
    # The complete first event got through; the half event never did.
    assert [f["seq"] for f in frames if f.get("type") == "event"] == [1]
    assert not any(f.get("type") == "error" for f in frames)


def test_blackholed_runtime_does_not_slow_a_healthy_one(fault_site: FaultSite) -> None:
    backend = fault_site.backend
    in_flight = 8
    session = requests.Session()
    healthy_paths = ["runtimes/ok/workers/", "runtimes/embedded/workers/"]

    def healthy(index: int) -> float:
        response, elapsed = timed(lambda: backend.api("GET", healthy_paths[index % 2], session=session))
        assert response.status_code == 200, response.text
        return elapsed

    baseline = [healthy(i) for i in range(10)]
    gate = threading.Barrier(in_flight + 1)
    first_done = threading.Event()

    def blackholed() -> tuple[requests.Response, float]:
        gate.wait(10)
        try:
            return timed(lambda: send_input(backend, "blackhole-load"))
        finally:
            first_done.set()

    loaded: list[float] = []
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        futures = [pool.submit(blackholed) for _ in range(in_flight)]
        gate.wait(10)
        # Healthy requests while all eight are stuck on the blackhole (until the first of them times out).
        while not first_done.is_set() or len(loaded) < 5:
            loaded.append(healthy(len(loaded)))
        results = [future.result(timeout=30) for future in futures]
    codes = {(r.status_code, r.json()["error"]["code"]) for r, _ in results}
    stuck = [elapsed for _, elapsed in results]
    p50, base_p50 = statistics.median(loaded), statistics.median(baseline)
    print(
        f"healthy p50 {base_p50 * 1000:.0f} ms idle, {p50 * 1000:.0f} ms (max {max(loaded) * 1000:.0f} ms, "
        f"n={len(loaded)}) while {in_flight} requests hang on the blackhole "
        f"({min(stuck) * 1000:.0f}-{max(stuck) * 1000:.0f} ms, {sorted(codes)})"
    )
    assert codes == {(504, "runtime_timeout")}
    # The eight waited side by side (not one after another), and the healthy runtimes kept answering.
    assert max(stuck) < READ_TIMEOUT + 1.0
    assert p50 < 1.0


# What ``GET /api/v1/workers/`` reports for each broken runtime (its breaker may be open by now).
LISTING_CODES = {
    "auth-worker": "runtime_auth_failed",
    "auth-summary": "runtime_auth_failed",
    "err500-worker": "runtime_bad_response",
    "err500-summary": "runtime_bad_response",
    "notjson-worker": "runtime_bad_response",
    "notjson-summary": "runtime_bad_response",
    "huge-worker": "runtime_bad_response",
    "huge-declared-worker": "runtime_bad_response",
    "huge-summary": "runtime_bad_response",
    "drip-worker": "runtime_timeout",
    "drip-summary": "runtime_timeout",
    "hang-worker": "runtime_timeout",
    "blackhole": "runtime_timeout",
    "blackhole-load": "runtime_timeout",
    "refused": "runtime_unreachable",
}


def test_listing_every_runtime_at_once_is_partial_typed_and_bounded(fault_site: FaultSite) -> None:
    response, elapsed = timed(lambda: fault_site.backend.api("GET", "workers/"))
    print(f"GET /api/v1/workers/ over {len(LISTING_CODES)} broken runtimes: {elapsed * 1000:.0f} ms")
    assert response.status_code == 200, response.text
    body = response.json()
    errors = {error["runtime_id"]: error["code"] for error in body["errors"]}
    assert set(errors) == set(LISTING_CODES)
    for runtime_id, code in errors.items():
        assert code in (LISTING_CODES[runtime_id], "runtime_circuit_open"), (runtime_id, code)
    assert {"ok", "sync-remote", "ssecut"} <= {item["runtime_id"] for item in body["items"]}
    # In parallel: about the slowest runtime's deadline (the drip: 1.5 s), not the sum of them.
    assert elapsed < 5.0


def test_the_backend_logged_no_unexpected_exception(fault_site: FaultSite) -> None:
    """Run last in this module: no fault above made the Backend log a traceback or a 500."""
    log = fault_site.backend.log_text(5_000_000)
    assert "Internal Server Error" not in log
    assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:3000]
    assert fault_site.backend.alive()
