"""Fan-out: many browsers (WebSocket clients) on one worker, through one Backend process.

Scenarios: 1, 100 and 1,000 clients on one ``burst`` worker emitting at 10 and at 100 events/s. For each:
delivery latency p50/p99 (receive time minus the runtime's emit ``ts``), loss (events a client neither got
nor was told to skip by a ``reset``; must be 0), resets (a client that fell behind is sent one), the
number of upstream streams the runtime serves (``event_streams_open``, sampled every 0.5 s; must be 1),
the Backend's RSS growth per connected client, and the CPU both sides used.

Saturation: a burst emitted as fast as possible to K clients; total event frames delivered per second by
the Backend, as a ratio of what a bare Channels consumer (``bench/bare_asgi.py``: ``group_send`` on the
in-memory layer, no relay logic) delivers to K clients from the same daphne in the same run.

All clients live in this one asyncio process, which shares the machine's cores with the servers: at
high frame rates part of the measured latency is this process's own queueing (see ``client_cpu_s``).

Targets (docs/performance.md, Targets): 1,000 clients = 1 upstream; 1,000 clients at 10 ev/s and 100
clients at 100 ev/s with p99 <= 250 ms and no loss; saturation >= 1.0 x the bare consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    Backend,
    BenchOptions,
    Processes,
    RuntimeProc,
    Target,
    WsWatcher,
    bench_main,
    child_env,
    close_watchers,
    fmt,
    log,
    open_watchers,
    ratio,
    self_cpu_seconds,
    start_daphne,
    start_runtime_and_backend,
    summarize,
    wait_all,
)

RUNTIME_ID = "bench-fanout"
TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_FANOUT"
P99_LIMIT_MS = 250.0
SATURATION_RATIO_LIMIT = 1.0


@dataclass(frozen=True)
class Scenario:
    """K clients on a worker emitting ``rate`` events/s for ``seconds``."""

    clients: int
    rate: int
    seconds: float

    @property
    def key(self) -> str:
        """``1000c@10``."""
        return f"{self.clients}c@{self.rate}"


def scenarios(quick: bool) -> list[Scenario]:
    """The six scenarios; the 1,000 x 100 ev/s one is short (it is far beyond one process's capacity)."""
    slow, fast, overload = (4.0, 2.0, 0.5) if quick else (8.0, 4.0, 1.0)
    return [
        Scenario(1, 10, slow),
        Scenario(1, 100, fast),
        Scenario(100, 10, slow),
        Scenario(100, 100, fast),
        Scenario(1000, 10, slow),
        Scenario(1000, 100, overload),
    ]


class _StreamMonitor:
    """Samples the runtime's ``event_streams_open`` every 0.5 s on a task."""

    def __init__(self, rt: RuntimeProc) -> None:
        self.rt = rt
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.samples.append(await asyncio.to_thread(self.rt.streams_open))
            await asyncio.sleep(0.5)

    def start(self) -> None:
        """Begin sampling."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _delivery(watchers: list[WsWatcher], *, first: int, last: int, sent: float) -> dict[str, Any]:
    """Latency, loss, resets and frame rate over every client."""
    latencies: list[float] = []
    for watcher in watchers:
        latencies.extend(watcher.tally.latencies_ms)
    frames = sum(len(w.tally.seqs) for w in watchers)
    last_recv = max((w.tally.last_recv for w in watchers), default=0.0)
    elapsed = last_recv - sent if last_recv else math.nan
    return {
        "latency_ms": summarize(latencies),
        "events_expected_per_client": last - first + 1,
        "frames_delivered": frames,
        "frames_per_s": round(frames / elapsed, 1) if elapsed and elapsed > 0 else math.nan,
        "delivery_window_s": round(elapsed, 3),
        "lost": sum(w.tally.lost(first, last) for w in watchers),
        "skipped_after_reset": sum(w.tally.skipped(first, last) for w in watchers),
        "resets": sum(w.tally.resets for w in watchers),
        "clients_reset": sum(1 for w in watchers if w.tally.resets),
        "duplicates": sum(w.tally.duplicates for w in watchers),
        "out_of_order": sum(w.tally.out_of_order for w in watchers),
        "error_frames": sum(len(w.tally.errors) for w in watchers),
        "clients_done": sum(1 for w in watchers if w.done.is_set()),
    }


async def _quiet_upstreams(rt: RuntimeProc, timeout: float = 20.0) -> int:
    """Wait until the runtime serves no event stream (a finished scenario's relay lingers ~2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        streams = await asyncio.to_thread(rt.streams_open)
        if streams == 0 or time.monotonic() > deadline:
            return streams
        await asyncio.sleep(0.25)


async def _run_scenario(rt: RuntimeProc, backend: Backend, worker_id: str, sc: Scenario) -> dict[str, Any]:
    # The runtime counts streams of all workers: start from zero so the samples are this worker's.
    leftover = await _quiet_upstreams(rt)
    after = await asyncio.to_thread(rt.last_seq, worker_id)
    rss_before = backend.child.rss_kb()
    url = backend.ws_url(RUNTIME_ID, worker_id, after=after)
    watchers = [
        WsWatcher(url, cookie=backend.cookie(), origin=backend.origin, after=after) for _ in range(sc.clients)
    ]
    started = time.perf_counter()
    try:
        await open_watchers(watchers)
        connected = await wait_all([w.connected for w in watchers], timeout=60)
        connect_s = time.perf_counter() - started
        rss_connected = backend.child.rss_kb()
        monitor = _StreamMonitor(rt)
        monitor.start()
        cpu_backend, cpu_self = backend.child.cpu_seconds(), self_cpu_seconds()
        wall = time.perf_counter()
        sent = time.time()
        await asyncio.to_thread(rt.send_input, worker_id)
        drain = 30.0 if sc.clients * sc.rate <= 10_000 else 60.0
        await wait_all([w.done for w in watchers], timeout=sc.seconds + drain)
        wall = time.perf_counter() - wall
        cpu_backend, cpu_self = backend.child.cpu_seconds() - cpu_backend, self_cpu_seconds() - cpu_self
        # The last events may still be in flight to clients that are not done: a short settle.
        await asyncio.sleep(0.5)
        await monitor.stop()
        last = await asyncio.to_thread(rt.last_seq, worker_id)
        rss_peak = backend.child.rss_kb()
        figures = _delivery(watchers, first=after + 1, last=last, sent=sent)
    finally:
        await close_watchers(watchers)
    return {
        "clients": sc.clients,
        "rate_per_s": sc.rate,
        "seconds": sc.seconds,
        "clients_connected": connected,
        "connect_all_s": round(connect_s, 2),
        **figures,
        "upstream_streams_max": max(monitor.samples, default=-1),
        "upstream_streams_before": leftover,
        "upstream_streams_samples": len(monitor.samples),
        "backend_rss_kb": {"before": rss_before, "connected": rss_connected, "after_burst": rss_peak},
        "backend_rss_kb_per_client": round((rss_connected - rss_before) / sc.clients, 1),
        "backend_cpu_s": round(cpu_backend, 2),
        "client_cpu_s": round(cpu_self, 2),
        "wall_s": round(wall, 2),
    }


async def _saturate(
    url: str, *, cookie: str | None, origin: str, clients: int, frames: int, trigger: Any
) -> dict[str, Any]:
    """K clients; ``trigger(watchers)`` starts a burst of ``frames`` events; frames/s delivered in total."""
    watchers = [WsWatcher(url, cookie=cookie, origin=origin, after=0) for _ in range(clients)]
    try:
        await open_watchers(watchers)
        await wait_all([w.connected for w in watchers], timeout=60)
        sent = time.time()
        await trigger(watchers)
        await wait_all([w.done for w in watchers], timeout=120)
        await asyncio.sleep(0.2)
        result = _delivery(watchers, first=1, last=0, sent=sent)
    finally:
        await close_watchers(watchers)
    return {
        "clients": clients,
        "frames_per_client": frames,
        "frames_delivered": result["frames_delivered"],
        "frames_per_s": result["frames_per_s"],
        "delivery_window_s": result["delivery_window_s"],
        "resets": result["resets"],
        "clients_done": result["clients_done"],
    }


async def _relay_saturation(rt: RuntimeProc, backend: Backend, clients: int, frames: int) -> dict[str, Any]:
    worker_id = await asyncio.to_thread(rt.create_worker, "builtin:burst", {"count": frames, "rate": 0})
    after = await asyncio.to_thread(rt.last_seq, worker_id)
    url = backend.ws_url(RUNTIME_ID, worker_id, after=after)

    async def trigger(watchers: list[WsWatcher]) -> None:
        await asyncio.to_thread(rt.send_input, worker_id)

    return await _saturate(
        url, cookie=backend.cookie(), origin=backend.origin, clients=clients, frames=frames, trigger=trigger
    )


async def _bare_saturation(base_url: str, clients: int, frames: int) -> dict[str, Any]:
    url = base_url.replace("http://", "ws://", 1) + "/bare/"

    async def trigger(watchers: list[WsWatcher]) -> None:
        await watchers[0].send({"frames": frames, "after": 0})

    return await _saturate(url, cookie=None, origin=base_url, clients=clients, frames=frames, trigger=trigger)


def saturation_sizes(quick: bool) -> list[tuple[int, int]]:
    """(clients, events per client) of the saturation runs (the bare path is slow with 1,000 clients)."""
    return [(100, 50), (1000, 5)] if quick else [(100, 150), (1000, 10)]


async def _measure(options: BenchOptions, procs: Processes, rt: RuntimeProc, backend: Backend) -> dict[str, Any]:
    # Warm-up: connections, imports, the relay's code paths (10 clients, a short burst).
    warm = await asyncio.to_thread(rt.create_worker, "builtin:burst", {"count": 50, "rate": 200})
    await _run_scenario(rt, backend, warm, Scenario(10, 200, 0.25))

    results: dict[str, Any] = {}
    for sc in scenarios(options.quick):
        # Each scenario gets a worker whose burst is rate x seconds long (options are fixed at creation).
        worker_id = await asyncio.to_thread(
            rt.create_worker, "builtin:burst", {"count": int(sc.rate * sc.seconds), "rate": sc.rate}
        )
        results[sc.key] = await _run_scenario(rt, backend, worker_id, sc)
        log(f"fanout: {sc.key} done")

    saturation: dict[str, Any] = {"relay": {}, "bare": {}}
    sizes = saturation_sizes(options.quick)
    # The bare baseline runs on a daphne of its own (idle while the relay is measured, and the other way
    # round); relay and bare runs alternate so that drift in the machine's load hits both alike.
    bare_child, bare_url = await asyncio.to_thread(
        start_daphne, procs, "bench.bare_asgi:application", env=child_env(), name="bare-daphne"
    )
    await _relay_saturation(rt, backend, 10, 50)  # warm-up
    await _bare_saturation(bare_url, 10, 50)
    for clients, frames in sizes:
        await _quiet_upstreams(rt)
        saturation["relay"][str(clients)] = await _relay_saturation(rt, backend, clients, frames)
        saturation["bare"][str(clients)] = await _bare_saturation(bare_url, clients, frames)
    await asyncio.to_thread(procs.stop, bare_child)
    for clients, _ in sizes:
        key = str(clients)
        saturation[f"ratio_{key}"] = ratio(
            saturation["relay"][key]["frames_per_s"], saturation["bare"][key]["frames_per_s"]
        )
    return {"scenarios": results, "saturation": saturation}


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """Start a runtime and a Backend, run the scenarios, then the saturation runs."""
    rt, backend = start_runtime_and_backend(procs, options.workdir, runtime_id=RUNTIME_ID, token_env=TOKEN_ENV)
    result = asyncio.run(_measure(options, procs, rt, backend))
    sc, sat = result["scenarios"], result["saturation"]
    k1000_10, k100_100 = sc["1000c@10"], sc["100c@100"]
    sat_ratio = min(sat["ratio_100"], sat["ratio_1000"])
    targets = [
        Target("upstreams with 1000 clients", float(k1000_10["upstream_streams_max"]), "<=", 1),
        Target("1000c@10 p99 ms", k1000_10["latency_ms"]["p99"], "<=", P99_LIMIT_MS),
        Target("1000c@10 lost", float(k1000_10["lost"]), "<=", 0),
        Target("100c@100 p99 ms", k100_100["latency_ms"]["p99"], "<=", P99_LIMIT_MS),
        Target("100c@100 lost", float(k100_100["lost"]), "<=", 0),
        Target("saturation ratio (worst K)", sat_ratio, ">=", SATURATION_RATIO_LIMIT),
    ]
    headline: dict[str, float] = {}
    for key, figures in sc.items():
        headline[f"{key}_p50_ms"] = figures["latency_ms"]["p50"]
        headline[f"{key}_p99_ms"] = figures["latency_ms"]["p99"]
        headline[f"{key}_lost"] = figures["lost"]
        headline[f"{key}_resets"] = figures["resets"]
        headline[f"{key}_upstreams"] = figures["upstream_streams_max"]
    headline["rss_kb_per_client_100"] = sc["100c@10"]["backend_rss_kb_per_client"]
    headline["rss_kb_per_client_1000"] = sc["1000c@10"]["backend_rss_kb_per_client"]
    for key in ("100", "1000"):
        headline[f"saturation_relay_fps_{key}"] = sat["relay"][key]["frames_per_s"]
        headline[f"saturation_bare_fps_{key}"] = sat["bare"][key]["frames_per_s"]
        headline[f"saturation_ratio_{key}"] = sat[f"ratio_{key}"]
    result["headline"] = headline
    result["targets"] = [t.to_json() for t in targets]
    lost_total = sum(f["lost"] for f in sc.values())
    resets_total = sum(f["resets"] for f in sc.values())
    line = (
        f"fanout: 1000c@10 p99 {fmt(k1000_10['latency_ms']['p99'], 1)} ms, "
        f"100c@100 p99 {fmt(k100_100['latency_ms']['p99'], 1)} ms, "
        f"1000c@100 p99 {fmt(sc['1000c@100']['latency_ms']['p99'], 1)} ms, "
        f"upstreams {k1000_10['upstream_streams_max']}, lost {lost_total}, resets {resets_total}, "
        f"RSS/client {fmt(headline['rss_kb_per_client_1000'], 1)} KiB, "
        f"saturation ratio {fmt(sat['ratio_100'])} @100 ({sat['relay']['100']['frames_per_s']:.0f} vs "
        f"{sat['bare']['100']['frames_per_s']:.0f} frames/s bare), {fmt(sat['ratio_1000'])} @1000 "
        + " ".join(t.tag() for t in targets)
    )
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.fanout [--quick]``."""
    return bench_main("fanout", run, argv)


if __name__ == "__main__":
    sys.exit(main())
