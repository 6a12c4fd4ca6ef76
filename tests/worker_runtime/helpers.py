"""Shared helpers of the worker_runtime library tests: bounded waits, event collection, runtimes."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker_runtime.config import BUILTIN_PROFILES, ProfileSpec, RuntimeConfig
from worker_runtime.core import WorkerRuntime
from worker_runtime.model import Event
from worker_runtime.store import FsStore, Store

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_AGENT = REPO_ROOT / "fixtures" / "agents" / "example_agent.py"
RUNTIME_ID = "rt-test"
WAIT_TIMEOUT = 10.0

ECHO: dict[str, Any] = {"kind": "builtin", "value": "builtin:echo"}
BURST: dict[str, Any] = {"kind": "builtin", "value": "builtin:burst"}
ASSISTANT: dict[str, Any] = {"kind": "assistant"}


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def named(name: str, command: Sequence[str], *, grace: float = 5.0, **kwargs: Any) -> ProfileSpec:
    """A named subprocess profile."""
    return ProfileSpec(
        name=name, description=f"{name} (test)", command=tuple(command), stop_grace_seconds=grace, **kwargs
    )


def agent_profile(name: str = "example-agent", *, grace: float = 5.0) -> ProfileSpec:
    """The example agent of fixtures/agents, run by the interpreter running the tests."""
    return named(name, [sys.executable, str(EXAMPLE_AGENT)], grace=grace)


def config_with(*profiles: ProfileSpec, **kwargs: Any) -> RuntimeConfig:
    """The default config plus some named profiles (and any other RuntimeConfig fields)."""
    return replace(RuntimeConfig(), profiles=BUILTIN_PROFILES + tuple(profiles), **kwargs)


def open_runtime(
    store: Store | None = None, config: RuntimeConfig | None = None, runtime_id: str = RUNTIME_ID
) -> WorkerRuntime:
    """A started runtime."""
    runtime = WorkerRuntime(runtime_id=runtime_id, store=store, config=config)
    runtime.open()
    return runtime


def open_fs_runtime(root: Path, config: RuntimeConfig | None = None) -> WorkerRuntime:
    """A started runtime over an FS store in ``root``."""
    return open_runtime(FsStore(root), config)


def create(
    runtime: WorkerRuntime,
    profile: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Create a worker (echo by default) and return its detail."""
    body: dict[str, Any] = {"intent": ASSISTANT, "profile": profile or ECHO, **extra}
    return runtime.create_worker(body)


def events_of(runtime: WorkerRuntime, worker_id: str) -> list[Event]:
    """Every retained event of a worker, read through a subscription from the start."""
    sub = runtime.subscribe(worker_id, after=0, listener=lambda _events: None)
    try:
        return list(sub.backlog)
    finally:
        sub.close()


def kinds(events: Sequence[Event]) -> list[str]:
    """The kinds of some events, in order."""
    return [event.kind for event in events]


def wait_for_kind(runtime: WorkerRuntime, worker_id: str, kind: str, count: int = 1) -> list[Event]:
    """Wait until the worker's log holds ``count`` events of ``kind``; return the log."""
    found: list[Event] = []

    def seen() -> bool:
        found[:] = events_of(runtime, worker_id)
        return kinds(found).count(kind) >= count

    wait_until(seen, what=f"{count} {kind} event(s) of {worker_id}")
    return found


def wait_status(runtime: WorkerRuntime, worker_id: str, status: str) -> dict[str, Any]:
    """Wait until the worker has ``status``; return its detail."""
    wait_until(lambda: runtime.get_worker(worker_id)["status"] == status, what=f"{worker_id} to be {status}")
    return runtime.get_worker(worker_id)


def assert_consecutive(events: Sequence[Event], first: int, last: int) -> None:
    """The events are exactly seqs ``first..last``, in order, no gap, no duplicate."""
    assert [e.seq for e in events] == list(range(first, last + 1))


@dataclass
class Collector:
    """A subscription listener that keeps every batch it is handed."""

    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, batch: Sequence[Event]) -> None:
        with self.lock:
            self.events.extend(batch)

    def snapshot(self) -> list[Event]:
        """A copy of what has arrived so far."""
        with self.lock:
            return list(self.events)

    def wait_for(self, kind: str) -> list[Event]:
        """Wait until an event of ``kind`` has arrived; return everything so far."""
        wait_until(lambda: kind in kinds(self.snapshot()), what=f"a live {kind} event")
        return self.snapshot()
