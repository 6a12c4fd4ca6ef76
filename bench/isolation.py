"""Isolation: a healthy runtime's request latency alone vs while another runtime is blackholed and busy.

Two runtimes are registered with the default timeouts (connect 2 s, read 10 s): a real reference runtime
and a blackholed listener (accepts, never answers). Phase *alone*: sequential ``GET`` worker detail on
the healthy runtime through the Backend, half before and half after the busy phase (once the dead
requests have ended). Phase *dead busy*: the same, while a steady open-loop stream of requests (``GET``
worker detail, 10 per second, each on its own connection and thread) goes to the dead runtime — they
hang until the read timeout, and fast-fail once its circuit breaker opens. That stream is sent from a
process of its own, so that its threads do not compete for the GIL of the client that takes the timings.

Target (docs/performance.md, Targets): the healthy runtime's p99 unchanged within 20 % (ratio <= 1.2).
"""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench.common import (
    Backend,
    BenchOptions,
    Call,
    HttpClient,
    Processes,
    RemoteSpec,
    Target,
    bench_main,
    checked,
    fmt,
    log,
    ratio,
    start_backend,
    start_runtime,
    stubs,
    summarize,
    timed_ms,
    warm_up,
)

HEALTHY_ID = "iso-healthy"
DEAD_ID = "iso-dead"
TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_ISO"
DEAD_TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_ISO_DEAD"
P99_RATIO_LIMIT = 1.2
MAX_IN_FLIGHT = 256
# The defaults of a runtime entry (docs/operations.md, the runtimes config file): what an operator gets
# without tuning.
DEAD_CONNECT_TIMEOUT = 2.0
DEAD_READ_TIMEOUT = 10.0


class _Pacer:
    """Sends ``rate`` requests per second, each on its own thread (runs in the dead stream's process)."""

    def __init__(self, base_url: str, headers: dict[str, str], path: str, rate: float, in_flight: Any) -> None:
        self.base_url, self.headers, self.path, self.rate = base_url, headers, path, rate
        self.in_flight = in_flight  # shared with the parent: requests sent and not finished yet
        self.outcomes: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.sent = 0
        self.skipped = 0
        self._slots = threading.Semaphore(MAX_IN_FLIGHT)
        self._lock = threading.Lock()

    def pace(self, stop: Any) -> None:
        interval, due = 1.0 / self.rate, time.perf_counter()
        while not stop.is_set():
            if self._slots.acquire(blocking=False):
                self.sent += 1
                with self.in_flight.get_lock():
                    self.in_flight.value += 1
                threading.Thread(target=self._one, daemon=True).start()
            else:
                self.skipped += 1
            due += interval
            stop.wait(max(0.0, due - time.perf_counter()))

    def _one(self) -> None:
        client = HttpClient(self.base_url, self.headers)
        started = time.perf_counter()
        try:
            status, _ = client.request("GET", self.path)
            outcome = str(status)
        except Exception as exc:  # a bench client timing out is an outcome, not a failure of the bench
            outcome = type(exc).__name__
        finally:
            client.close()
            self._slots.release()
        with self._lock:
            self.outcomes[outcome] += 1
            self.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        with self.in_flight.get_lock():
            self.in_flight.value -= 1

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": self.sent,
                "skipped": self.skipped,
                "outcomes": dict(self.outcomes),
                "latencies_ms": list(self.latencies_ms),
            }


def _dead_stream_main(
    base_url: str,
    headers: dict[str, str],
    path: str,
    rate: float,
    started: Any,
    stop: Any,
    in_flight: Any,
    results: Any,
    drain_seconds: float,
) -> None:
    """The dead stream's process: pace until told to stop, wait for what is in flight, report."""
    pacer = _Pacer(base_url, headers, path, rate, in_flight)
    started.set()
    pacer.pace(stop)
    deadline = time.monotonic() + drain_seconds
    while in_flight.value and time.monotonic() < deadline:
        time.sleep(0.1)
    results.put(pacer.report())


class DeadStream:
    """An open-loop stream of requests to the dead runtime: ``rate`` per second, each on its own thread.

    It runs in a process of its own: its threads (one per request, about a hundred hanging at once) must
    not hold the GIL of the process that times the healthy requests, or the healthy latency would measure
    this load generator instead of the Backend.
    """

    def __init__(self, backend: Backend, path: str, *, rate: float, drain_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._started = context.Event()
        self._stop = context.Event()
        self._in_flight = context.Value("i", 0)
        self._results: Any = context.Queue()
        self._process = context.Process(
            target=_dead_stream_main,
            args=(
                backend.base_url,
                backend.headers(),
                path,
                rate,
                self._started,
                self._stop,
                self._in_flight,
                self._results,
                drain_seconds,
            ),
            daemon=True,
            name="dead-stream",
        )
        self.outcomes: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.sent = 0
        self.skipped = 0

    def start(self) -> None:
        """Begin sending (returns once the stream's process is pacing)."""
        self._process.start()
        if not self._started.wait(30):
            raise RuntimeError("the dead stream's process did not start")

    def stop(self) -> None:
        """Stop sending (requests in flight finish on their own)."""
        self._stop.set()

    def in_flight(self) -> int:
        """Requests sent and not finished yet."""
        return int(self._in_flight.value)

    def wait_drained(self, timeout: float) -> int:
        """Wait until no request is in flight (or ``timeout``), collect the outcomes; return how many still are."""
        try:
            report = self._results.get(timeout=timeout)
        except queue.Empty:
            report = None
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
        if report is not None:
            self.sent, self.skipped = report["sent"], report["skipped"]
            self.outcomes.update(report["outcomes"])
            self.latencies_ms = report["latencies_ms"]
        return self.in_flight()


def _sequential_for(call: Call, seconds: float) -> list[float]:
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        samples.append(timed_ms(call))
    return samples


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """Start a healthy runtime, a blackhole and a Backend; measure the healthy path in both phases."""
    seconds = 5.0 if options.quick else 15.0
    dead_rate = 10.0
    rt = start_runtime(procs, options.workdir, runtime_id=HEALTHY_ID)
    with stubs(blackholes=[DEAD_ID]) as servers:
        specs = [
            RemoteSpec(HEALTHY_ID, rt.base_url, TOKEN_ENV),
            RemoteSpec(
                DEAD_ID,
                servers.url(DEAD_ID),
                DEAD_TOKEN_ENV,
                connect_timeout=DEAD_CONNECT_TIMEOUT,
                read_timeout=DEAD_READ_TIMEOUT,
            ),
        ]
        tokens = {TOKEN_ENV: rt.token, DEAD_TOKEN_ENV: secrets.token_urlsafe(24)}
        backend = start_backend(procs, options.workdir, runtimes=specs, tokens=tokens)
        worker_id = rt.create_worker("builtin:burst", {"count": 1, "rate": 0})
        client = backend.client()
        call = checked(client, "GET", f"/api/v1/runtimes/{HEALTHY_ID}/workers/{worker_id}/")
        warm_up({"healthy": call}, count=200)

        # alone (half) | dead busy | drain | alone (half): the baseline brackets the busy phase, so a
        # drift in the machine's load hits both alike.
        log("isolation: phase alone (1/2)")
        alone = _sequential_for(call, seconds / 2)
        log("isolation: phase dead busy")
        drain = DEAD_READ_TIMEOUT + DEAD_CONNECT_TIMEOUT + 10
        path = f"/api/v1/runtimes/{DEAD_ID}/workers/w-dead/"
        stream = DeadStream(backend, path, rate=dead_rate, drain_seconds=drain)
        stream.start()
        try:
            busy = _sequential_for(call, seconds)
        finally:
            stream.stop()
        in_flight_at_end = stream.in_flight()
        log(f"isolation: waiting for {in_flight_at_end} dead requests to end")
        still = stream.wait_drained(drain + 5)
        log("isolation: phase alone (2/2)")
        alone += _sequential_for(call, seconds / 2)
        client.close()
        accepted = servers.blackhole_accepts

    a, b = summarize(alone), summarize(busy)
    p99_ratio, p50_ratio = ratio(b["p99"], a["p99"]), ratio(b["p50"], a["p50"])
    targets = [Target("healthy p99 ratio", p99_ratio, "<=", P99_RATIO_LIMIT)]
    result: dict[str, Any] = {
        "config": {
            "phase_seconds": seconds,
            "dead_requests_per_s": dead_rate,
            "dead_timeouts_s": [DEAD_CONNECT_TIMEOUT, DEAD_READ_TIMEOUT],
        },
        "healthy_alone_ms": a,
        "healthy_with_dead_busy_ms": b,
        "dead_stream": {
            "sent": stream.sent,
            "skipped_in_flight_cap": stream.skipped,
            "finished": sum(stream.outcomes.values()),
            "in_flight_when_busy_phase_ended": in_flight_at_end,
            "in_flight_after_drain": still,
            "outcomes": dict(stream.outcomes),
            "latency_ms": summarize(stream.latencies_ms),
            "blackhole_connections": accepted,
        },
        "headline": {
            "alone_p50_ms": a["p50"],
            "alone_p99_ms": a["p99"],
            "busy_p50_ms": b["p50"],
            "busy_p99_ms": b["p99"],
            "p99_ratio": p99_ratio,
            "p50_ratio": p50_ratio,
        },
        "targets": [t.to_json() for t in targets],
    }
    line = (
        f"isolation: healthy p99 ratio {fmt(p99_ratio)} ({fmt(b['p99'])} vs {fmt(a['p99'])} ms alone), "
        f"p50 ratio {fmt(p50_ratio)} ({fmt(b['p50'])} vs {fmt(a['p50'])} ms), "
        f"dead runtime got {stream.sent} requests ({dict(stream.outcomes)}) " + " ".join(t.tag() for t in targets)
    )
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.isolation [--quick]``."""
    return bench_main("isolation", run, argv)


if __name__ == "__main__":
    sys.exit(main())
