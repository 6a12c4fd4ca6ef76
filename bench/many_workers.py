"""Many workers at once: hundreds of ``burst`` workers streaming at a steady rate, one browser each.

Each scenario (``workers`` x ``rate`` events/s, one browser per worker) creates the workers directly on the
runtime, opens one Backend WebSocket per worker (the browser) and one plain asyncio SSE reader per worker
straight from the runtime (the baseline: the same streams, in the same run, at the same time), then sends
every worker its input directly to the runtime. Every consumer checks each seq and measures each event's
latency as receive time minus the event's ``ts`` (the runtime's emit time, same host clock).

Figures: the Backend's CPU time per delivered event (process CPU counters over the run: what it costs,
whatever else the machine does), its thread count, delivery p50/p99 through the Backend and directly,
events lost or duplicated, and the runtime's open streams (exactly one upstream per worker).

Targets (issue 12): CPU per delivered event <= 60 us; delivery p99 <= 50 ms and <= 3 x the direct reader's
p99; 0 lost, 0 duplicated; one upstream per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    Backend,
    BenchOptions,
    Processes,
    RuntimeProc,
    StreamTally,
    Target,
    WsWatcher,
    bench_main,
    close_watchers,
    cpu_seconds,
    fmt,
    log,
    open_watchers,
    ratio,
    self_cpu_seconds,
    start_runtime_and_backend,
    summarize,
    wait_all,
)

RUNTIME_ID = "bench-many"
TOKEN_ENV = "YOI_BENCH_MANY_TOKEN"
CPU_PER_EVENT_LIMIT_US = 60.0
P99_LIMIT_MS = 50.0
P99_RATIO_LIMIT = 3.0
DURATION_S = 12.0
QUICK_DURATION_S = 5.0
# (workers, events per second per worker)
SCENARIOS = ((500, 10.0), (2000, 2.0))
QUICK_SCENARIOS = ((100, 10.0), (400, 2.0))
PARALLEL_SETUP = 16


class SseReader:
    """A plain asyncio SSE consumer of one worker's stream, straight from the runtime (the baseline)."""

    def __init__(self, rt: RuntimeProc, worker_id: str, *, after: int) -> None:
        self.rt = rt
        self.worker_id = worker_id
        self.after = after
        self.tally = StreamTally()
        self.done = asyncio.Event()
        self.opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and read on a task."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        parts = urlsplit(self.rt.base_url)
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            request = (
                f"GET /v1/workers/{self.worker_id}/events?after={self.after} HTTP/1.1\r\n"
                f"Host: {parts.netloc}\r\nAuthorization: Bearer {self.rt.token}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            )
            writer.write(request.encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"SSE open failed: {status!r}")
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # the rest of the head
            self.opened.set()
            tally, loads = self.tally, json.loads
            async for line in reader:
                if not line.startswith(b"data:"):
                    continue  # chunk sizes, id/event lines, pings, blank lines
                now = time.time()
                body = loads(line[5:])
                seq = body["seq"]
                tally.record_event(seq, body.get("ts"), now)
                if body.get("event") == "run_end" and seq > self.after:
                    break
            writer.close()
        except Exception as exc:  # reported in the figures
            self.tally.errors.append(type(exc).__name__)
        finally:
            self.opened.set()
            self.done.set()

    async def close(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def thread_count(pid: int) -> int:
    """Threads of a process now (0 once it ended)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _parallel(calls: list[Any], fn: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=PARALLEL_SETUP) as pool:
        return list(pool.map(fn, calls))


async def _streams_settle(rt: RuntimeProc, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(rt.streams_open) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


def _final_seq(tally: StreamTally) -> int:
    return tally.last_seq


async def _scenario(
    rt: RuntimeProc, backend: Backend, *, workers: int, rate: float, duration: float
) -> dict[str, Any]:
    count = max(1, int(rate * duration))
    # The previous scenario's relays must have closed (their linger), so that every stream counted is new.
    await _streams_settle(rt, timeout=30)
    log(f"many_workers: {workers} workers x {rate:g} ev/s x {count} events: creating workers")
    options = {"count": count, "rate": rate}

    def create(_: int) -> str:
        return rt.create_worker("builtin:burst", options)

    ids = await asyncio.to_thread(_parallel, list(range(workers)), create)
    afters = dict(zip(ids, await asyncio.to_thread(_parallel, ids, rt.last_seq), strict=True))
    streams_before = await asyncio.to_thread(rt.streams_open)

    log(f"many_workers: opening {workers} Backend sockets")
    watchers = [
        WsWatcher(
            backend.ws_url(RUNTIME_ID, wid, after=afters[wid]),
            cookie=backend.cookie(),
            origin=backend.origin,
            after=afters[wid],
        )
        for wid in ids
    ]
    readers = [SseReader(rt, wid, after=afters[wid]) for wid in ids]
    pid = backend.child.pid
    try:
        opened_at = time.monotonic()
        await open_watchers(watchers, parallel=32, timeout=120)
        await wait_all([w.connected for w in watchers], timeout=120)
        connected = sum(1 for w in watchers if w.connected.is_set())
        connect_s = time.monotonic() - opened_at
        backend_streams = await asyncio.to_thread(rt.streams_open)
        log(f"many_workers: {connected} sockets connected in {connect_s:.1f} s; opening {workers} direct readers")
        for reader in readers:
            reader.start()
        await wait_all([r.opened for r in readers], timeout=120)
        both_streams = await asyncio.to_thread(rt.streams_open)

        log("many_workers: sending every worker its input")
        threads_max = thread_count(pid)
        cpu0, client0, rt0, t0 = cpu_seconds(pid), self_cpu_seconds(), cpu_seconds(rt.child.pid), time.monotonic()
        sender = asyncio.create_task(asyncio.to_thread(_parallel, ids, rt.send_input))
        streams_samples: list[int] = []
        deadline = time.monotonic() + duration + 60
        all_done = asyncio.gather(*(w.done.wait() for w in watchers), *(r.done.wait() for r in readers))
        while not all_done.done() and time.monotonic() < deadline:
            await asyncio.wait({all_done}, timeout=1.0)
            threads_max = max(threads_max, thread_count(pid))
            streams_samples.append(await asyncio.to_thread(rt.streams_open))
        all_done.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await all_done
        await sender
        elapsed = time.monotonic() - t0
        cpu1, client1, rt1 = cpu_seconds(pid), self_cpu_seconds(), cpu_seconds(rt.child.pid)
    finally:
        await close_watchers(watchers)
        for reader in readers:
            await reader.close()

    def totals(tallies: list[StreamTally], after_of: list[int], finals: list[int]) -> dict[str, Any]:
        lat = [ms for t in tallies for ms in t.latencies_ms]
        return {
            "events": sum(len(t.seqs) for t in tallies),
            "lost": sum(t.lost(a + 1, f) for t, a, f in zip(tallies, after_of, finals, strict=True)),
            "duplicates": sum(t.duplicates for t in tallies),
            "out_of_order": sum(t.out_of_order for t in tallies),
            "resets": sum(t.resets for t in tallies),
            "errors": sorted({e for t in tallies for e in t.errors}),
            "unfinished": sum(1 for t, f in zip(tallies, finals, strict=True) if t.last_seq < f),
            "latency_ms": summarize(lat),
        }

    # The last seq of each worker's run (its run_end), as whichever consumer saw further saw it.
    finals = [max(_final_seq(w.tally), _final_seq(r.tally)) for w, r in zip(watchers, readers, strict=True)]
    after_of = [afters[wid] for wid in ids]
    via_backend = totals([w.tally for w in watchers], after_of, finals)
    direct = totals([r.tally for r in readers], after_of, finals)
    cpu_s = cpu1 - cpu0
    delivered = via_backend["events"]
    upstreams = backend_streams - streams_before
    return {
        "workers": workers,
        "rate_per_worker": rate,
        "events_per_worker": count,
        "elapsed_s": round(elapsed, 2),
        "connect_s": round(connect_s, 2),
        "backend": via_backend,
        "direct": direct,
        "backend_cpu_s": round(cpu_s, 3),
        "backend_cpu_us_per_event": round(cpu_s / delivered * 1e6, 1) if delivered else float("nan"),
        "backend_cores": round(cpu_s / elapsed, 3) if elapsed else float("nan"),
        "backend_threads_max": threads_max,
        "runtime_cpu_s": round(rt1 - rt0, 3),
        "client_cpu_s": round(client1 - client0, 3),
        "upstreams_per_worker": round(upstreams / workers, 3),
        "runtime_streams": {
            "before": streams_before,
            "with_backend": backend_streams,
            "with_both": both_streams,
            "during_min": min(streams_samples, default=0),
            "during_max": max(streams_samples, default=0),
        },
    }


async def _measure(options: BenchOptions, rt: RuntimeProc, backend: Backend) -> dict[str, Any]:
    duration = QUICK_DURATION_S if options.quick else DURATION_S
    scenarios = QUICK_SCENARIOS if options.quick else SCENARIOS
    warm = await _scenario(rt, backend, workers=20, rate=20.0, duration=1.0)  # imports, code paths, pools
    results = [warm]
    for workers, rate in scenarios:
        results.append(await _scenario(rt, backend, workers=workers, rate=rate, duration=duration))
    return {"config": {"duration_s": duration}, "warm_up": results[0], "scenarios": results[1:]}


def _targets(scenario: dict[str, Any]) -> list[Target]:
    name = f"{scenario['workers']}x{scenario['rate_per_worker']:g}"
    b_p99 = scenario["backend"]["latency_ms"]["p99"]
    d_p99 = scenario["direct"]["latency_ms"]["p99"]
    return [
        Target(f"{name} cpu us/event", scenario["backend_cpu_us_per_event"], "<=", CPU_PER_EVENT_LIMIT_US),
        Target(f"{name} p99 ms", b_p99, "<=", P99_LIMIT_MS),
        Target(f"{name} p99 ratio", ratio(b_p99, d_p99), "<=", P99_RATIO_LIMIT),
        Target(f"{name} lost", scenario["backend"]["lost"], "<=", 0),
        Target(f"{name} duplicated", scenario["backend"]["duplicates"], "<=", 0),
        Target(f"{name} upstreams/worker", abs(scenario["upstreams_per_worker"] - 1.0), "<=", 0),
    ]


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """Start a runtime and a Backend, then run every scenario."""
    rt, backend = start_runtime_and_backend(procs, options.workdir, runtime_id=RUNTIME_ID, token_env=TOKEN_ENV)
    with contextlib.suppress(ImportError):
        import uvloop  # the load generator's own cost matters on two cores: the lighter loop

        uvloop.install()
    result = asyncio.run(_measure(options, rt, backend))
    targets = [t for scenario in result["scenarios"] for t in _targets(scenario)]
    result["targets"] = [t.to_json() for t in targets]
    parts = []
    for s in result["scenarios"]:
        b, d = s["backend"]["latency_ms"], s["direct"]["latency_ms"]
        parts.append(
            f"{s['workers']}x{s['rate_per_worker']:g}: cpu {fmt(s['backend_cpu_us_per_event'], 1)} us/event "
            f"({s['backend_threads_max']} threads), p99 {fmt(b['p99'], 1)} ms vs {fmt(d['p99'], 1)} direct "
            f"(ratio {fmt(ratio(b['p99'], d['p99']))}), lost {s['backend']['lost']}, "
            f"dup {s['backend']['duplicates']}, upstreams/worker {fmt(s['upstreams_per_worker'])}"
        )
    result["headline"] = {}
    for s in result["scenarios"]:
        name = f"{s['workers']}x{s['rate_per_worker']:g}"
        b, d = s["backend"]["latency_ms"], s["direct"]["latency_ms"]
        result["headline"].update(
            {
                f"{name} cpu us/event": s["backend_cpu_us_per_event"],
                f"{name} threads": s["backend_threads_max"],
                f"{name} p50 ms": b["p50"],
                f"{name} p99 ms": b["p99"],
                f"{name} direct p99 ms": d["p99"],
                f"{name} p99 ratio": ratio(b["p99"], d["p99"]),
                f"{name} lost": s["backend"]["lost"],
            }
        )
    line = "many_workers: " + "; ".join(parts) + " " + " ".join(t.tag() for t in targets)
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.many_workers [--quick]``."""
    return bench_main("many_workers", run, argv)


if __name__ == "__main__":
    sys.exit(main())
