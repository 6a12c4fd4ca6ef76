"""The per-runtime bulkhead: at most max_in_flight calls in flight to one runtime, the next refused at once.

Real threads block inside ``registry.call`` on an event; the refusal must come without waiting, leave the
circuit breaker alone, and free its slot for the next call as soon as one ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from runtimes.breaker import FAILURE_THRESHOLD
from runtimes.bulkhead import DEFAULT_MAX_IN_FLIGHT, Bulkhead
from runtimes.errors import RuntimeBusy, RuntimeTimeout
from runtimes.health import runtime_probe
from runtimes.models import Runtime
from runtimes.registry import RuntimeConnection, RuntimeRegistry, load_connections
from tests.runtime_process import wait_until

WAIT = 10.0


def connection(runtime_id: str, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> RuntimeConnection:
    """A remote row as the registry holds it."""
    return RuntimeConnection(
        runtime_id=runtime_id,
        display_name=runtime_id,
        kind="remote",
        base_url="http://127.0.0.1:9",
        token_ref="env:YOI_RUNTIME_TOKEN_X",
        connect_timeout=1.0,
        read_timeout=1.0,
        enabled=True,
        group_ids=frozenset(),
        updated_at=None,
        max_in_flight=max_in_flight,
    )


class Rows:
    """A mutable set of rows the registry loads (refreshed on every call: interval 0)."""

    def __init__(self, *connections: RuntimeConnection) -> None:
        self.rows = {c.runtime_id: c for c in connections}

    def __call__(self) -> dict[str, RuntimeConnection]:
        return dict(self.rows)


@pytest.fixture
def rows(settings: Any) -> Rows:
    settings.YOI_REGISTRY_REFRESH_SECONDS = 0.000001
    return Rows(connection("slow", max_in_flight=3), connection("other", max_in_flight=3))


class Handle:
    """All these tests need of a handle: something to pass to the operation, and close()."""

    def close(self) -> None:
        pass


@pytest.fixture
def reg(rows: Rows, monkeypatch: pytest.MonkeyPatch) -> Iterator[RuntimeRegistry]:
    # Rows in memory, not in a database: the call path's status writes have no row to go to here.
    monkeypatch.setattr("runtimes.registry._write_now", lambda write: None)
    registry = RuntimeRegistry(loader=rows, factory=lambda conn: Handle())  # type: ignore[arg-type,return-value]
    yield registry
    registry.reset()


class Holders:
    """Threads each holding one call to a runtime until released."""

    def __init__(self, reg: RuntimeRegistry, runtime_id: str, count: int) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=count)
        self.futures = [self.pool.submit(reg.call, runtime_id, self._hold) for _ in range(count)]

    def _hold(self, handle: object) -> str:
        with self._lock:
            self.entered += 1
        assert self.release.wait(WAIT)
        return "done"

    def finish(self) -> list[str]:
        self.release.set()
        results = [future.result(timeout=WAIT) for future in self.futures]
        self.pool.shutdown()
        return results


def test_bulkhead_counts_and_refuses_beyond_its_limit() -> None:
    bulkhead = Bulkhead("rt", limit=2)
    with bulkhead.slot(), bulkhead.slot():
        assert bulkhead.in_flight == 2
        with pytest.raises(RuntimeBusy) as caught, bulkhead.slot():
            pass
        assert caught.value.runtime_id == "rt"
        assert caught.value.headers() == {"Retry-After": "1"}
        assert (caught.value.code, caught.value.http_status, caught.value.retryable) == ("runtime_busy", 503, True)
    assert bulkhead.in_flight == 0
    assert "in_flight=0, limit=2" in repr(bulkhead)
    with pytest.raises(ValueError):
        Bulkhead("rt", limit=0)


def test_call_beyond_max_in_flight_is_refused_at_once_and_others_are_untouched(reg: RuntimeRegistry) -> None:
    holders = Holders(reg, "slow", 3)
    try:
        wait_until(lambda: holders.entered == 3, timeout=WAIT, message="three calls in flight")
        started = time.perf_counter()
        with pytest.raises(RuntimeBusy) as caught:
            reg.call("slow", lambda handle: "never runs")
        refused_in = time.perf_counter() - started
        assert caught.value.runtime_id == "slow"
        assert refused_in < 0.5  # refused, not queued behind the three
        # Another runtime has its own bulkhead.
        assert reg.call("other", lambda handle: "fine") == "fine"
        assert reg.bulkhead("slow").in_flight == 3 and reg.bulkhead("other").in_flight == 0
    finally:
        assert holders.finish() == ["done"] * 3
    # Slots are freed as calls end, also when they fail.
    assert reg.bulkhead("slow").in_flight == 0
    with pytest.raises(RuntimeTimeout):
        reg.call("slow", lambda handle: (_ for _ in ()).throw(RuntimeTimeout(runtime_id="slow")))
    assert reg.bulkhead("slow").in_flight == 0
    assert reg.call("slow", lambda handle: "again") == "again"


def test_a_refusal_never_takes_the_half_open_breakers_trial(reg: RuntimeRegistry, rows: Rows) -> None:
    rows.rows["slow"] = connection("slow", max_in_flight=1)
    reg.connections()
    breaker = reg.breaker("slow")
    for _ in range(FAILURE_THRESHOLD):
        breaker.record_failure()
    breaker._opened_at = time.monotonic() - 3600  # cooldown over: half-open, one trial allowed
    assert breaker.state == "half_open"
    with reg.bulkhead("slow").slot():  # the bulkhead is full
        with pytest.raises(RuntimeBusy):
            reg.call("slow", lambda handle: "refused")
        assert breaker.state == "half_open" and not breaker._trial_in_flight
    assert reg.call("slow", lambda handle: "trial") == "trial"  # the trial is still there, and it closes it
    assert breaker.state == "closed"


def test_a_changed_max_in_flight_applies_without_a_restart(reg: RuntimeRegistry, rows: Rows) -> None:
    holders = Holders(reg, "slow", 3)
    try:
        wait_until(lambda: holders.entered == 3, timeout=WAIT, message="three calls in flight")
        rows.rows["slow"] = connection("slow", max_in_flight=5)
        assert reg.call("slow", lambda handle: "room now") == "room now"
        assert reg.bulkhead("slow").limit == 5
    finally:
        holders.finish()


@pytest.mark.django_db
def test_rows_carry_max_in_flight_from_the_file_and_the_admin_default(tmp_path: Path) -> None:
    config = tmp_path / "runtimes.toml"
    config.write_text(
        '[[runtime]]\nruntime_id = "e1"\ndisplay_name = "E1"\nkind = "embedded"\nmax_in_flight = 4\n'
        '[[runtime]]\nruntime_id = "e2"\ndisplay_name = "E2"\nkind = "embedded"\n'
    )
    call_command("sync_runtimes", "--file", str(config), stdout=StringIO())
    assert dict(Runtime.objects.values_list("runtime_id", "max_in_flight")) == {"e1": 4, "e2": 32}
    assert {rid: c.max_in_flight for rid, c in load_connections().items()} == {"e1": 4, "e2": 32}
    config.write_text(config.read_text().replace("max_in_flight = 4", "max_in_flight = 8"))
    out = StringIO()
    call_command("sync_runtimes", "--file", str(config), stdout=out)
    assert "e1: updated" in out.getvalue()
    assert Runtime.objects.get(runtime_id="e1").max_in_flight == 8


@pytest.mark.django_db
def test_a_probe_refused_by_a_full_bulkhead_leaves_the_row_alone(settings: Any) -> None:
    from runtimes.registry import registry

    Runtime.objects.create(runtime_id="busy", display_name="Busy", kind="embedded", max_in_flight=1)
    before = Runtime.objects.values("status", "status_error_code", "checked_at").get(runtime_id="busy")
    registry.reset()
    try:
        registry.connections(fresh=True)
        with registry.bulkhead("busy").slot():
            result = runtime_probe(runtime_id="busy")
    finally:
        registry.reset()
    assert (result.state, result.error_code) == ("busy", "runtime_busy")
    assert Runtime.objects.values("status", "status_error_code", "checked_at").get(runtime_id="busy") == before
