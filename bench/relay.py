"""Event relay: a ``burst`` worker's events consumed directly over SSE vs through the Backend WebSocket.

Two phases, each in rounds that alternate the paths:

- *throughput*: one input makes the worker emit ``count`` events as fast as it can; events/s is the
  number of events received divided by the time from sending the input to the last event received;
- *latency*: the worker emits at a fixed rate (well below either path's limit); per-event latency is
  the receive time minus the event's ``ts`` (the runtime's emit time, same host clock).

Both consumers are asyncio clients in this process (httpx for SSE, websockets for the WebSocket, each
parses every event's JSON). The input is always sent directly to the runtime, so only delivery differs.

Targets (docs/performance.md, Targets): events/s through the Backend >= 0.8 x direct SSE; added p50
latency <= 2 ms.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx

from bench.common import (
    Backend,
    BenchOptions,
    Processes,
    RuntimeProc,
    StreamTally,
    Target,
    WsWatcher,
    bench_main,
    fmt,
    ratio,
    signed_ms,
    start_runtime_and_backend,
    summarize,
)

RUNTIME_ID = "bench-relay"
TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_RELAY"
THROUGHPUT_RATIO_LIMIT = 0.8
P50_ADDED_LIMIT_MS = 2.0
ROUND_TIMEOUT = 120.0


async def _consume_sse(rt: RuntimeProc, worker_id: str, after: int, opened: asyncio.Event) -> StreamTally:
    """Read the worker's SSE stream from ``after`` until its ``run_end``."""
    tally = StreamTally()
    url = f"{rt.base_url}/v1/workers/{worker_id}/events"
    timeout = httpx.Timeout(10.0, read=60.0)
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("GET", url, headers=rt.headers(), params={"after": str(after)}) as response,
    ):
        response.raise_for_status()
        opened.set()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.time()
            body = json.loads(line[5:])
            seq = body["seq"]
            tally.record_event(seq, body.get("ts"), now)
            if body.get("event") == "run_end" and seq > after:
                break
    return tally


async def _round_sse(rt: RuntimeProc, worker_id: str) -> tuple[StreamTally, float, int]:
    after = await asyncio.to_thread(rt.last_seq, worker_id)
    opened = asyncio.Event()
    task = asyncio.create_task(_consume_sse(rt, worker_id, after, opened))
    await asyncio.wait_for(opened.wait(), 30)
    sent = time.time()
    await asyncio.to_thread(rt.send_input, worker_id)
    tally = await asyncio.wait_for(task, ROUND_TIMEOUT)
    return tally, sent, after


async def _round_ws(rt: RuntimeProc, backend: Backend, worker_id: str) -> tuple[StreamTally, float, int]:
    after = await asyncio.to_thread(rt.last_seq, worker_id)
    watcher = WsWatcher(
        backend.ws_url(RUNTIME_ID, worker_id, after=after),
        cookie=backend.cookie(),
        origin=backend.origin,
        after=after,
    )
    await watcher.open()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 30)
        sent = time.time()
        await asyncio.to_thread(rt.send_input, worker_id)
        await asyncio.wait_for(watcher.done.wait(), ROUND_TIMEOUT)
    finally:
        await watcher.close()
    if watcher.tally.errors:
        raise RuntimeError(f"error frames on the event socket: {watcher.tally.errors}")
    return watcher.tally, sent, after


def _round_figures(tally: StreamTally, sent: float, after: int, final: int) -> dict[str, Any]:
    events = len(tally.seqs)
    elapsed = tally.last_recv - sent if tally.last_recv else float("nan")
    return {
        "events": events,
        "expected": final - after,
        "lost": tally.lost(after + 1, final),
        "duplicates": tally.duplicates,
        "elapsed_s": round(elapsed, 4),
        "events_per_s": round(events / elapsed, 1) if elapsed and elapsed > 0 else float("nan"),
    }


async def _phase(
    rt: RuntimeProc, backend: Backend, worker_id: str, *, rounds: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[float]]]:
    """Alternate direct SSE and Backend WebSocket rounds on one worker."""
    per_round: dict[str, list[dict[str, Any]]] = {"direct": [], "backend": []}
    latencies: dict[str, list[float]] = {"direct": [], "backend": []}
    for _ in range(rounds):
        for path in ("direct", "backend"):
            if path == "direct":
                tally, sent, after = await _round_sse(rt, worker_id)
            else:
                tally, sent, after = await _round_ws(rt, backend, worker_id)
            final = await asyncio.to_thread(rt.last_seq, worker_id)
            per_round[path].append(_round_figures(tally, sent, after, final))
            latencies[path].extend(tally.latencies_ms)
    return per_round, latencies


async def _measure(options: BenchOptions, rt: RuntimeProc, backend: Backend) -> dict[str, Any]:
    rounds = 2 if options.quick else 3
    fast_count = 5000 if options.quick else 20000
    paced_rate, paced_count = (200, 300) if options.quick else (200, 1000)
    fast = await asyncio.to_thread(rt.create_worker, "builtin:burst", {"count": fast_count, "rate": 0})
    paced = await asyncio.to_thread(rt.create_worker, "builtin:burst", {"count": paced_count, "rate": paced_rate})
    warm = await asyncio.to_thread(rt.create_worker, "builtin:burst", {"count": 500, "rate": 0})
    await _phase(rt, backend, warm, rounds=1)  # warm-up: connections, imports, the relay's code paths

    through_rounds, through_lat = await _phase(rt, backend, fast, rounds=rounds)
    paced_rounds, paced_lat = await _phase(rt, backend, paced, rounds=rounds)
    throughput = {
        path: {
            "events_per_s_median": statistics.median(r["events_per_s"] for r in through_rounds[path]),
            "rounds": through_rounds[path],
            "latency_ms_under_burst": summarize(through_lat[path]),
        }
        for path in ("direct", "backend")
    }
    latency = {
        path: {"latency_ms": summarize(paced_lat[path]), "rounds": paced_rounds[path]}
        for path in ("direct", "backend")
    }
    return {
        "config": {
            "rounds": rounds,
            "burst_count": fast_count,
            "paced_rate_per_s": paced_rate,
            "paced_count": paced_count,
        },
        "throughput": throughput,
        "latency": latency,
    }


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """Start a runtime and a Backend, then measure both phases on both paths."""
    rt, backend = start_runtime_and_backend(procs, options.workdir, runtime_id=RUNTIME_ID, token_env=TOKEN_ENV)
    result = asyncio.run(_measure(options, rt, backend))
    direct_eps = result["throughput"]["direct"]["events_per_s_median"]
    backend_eps = result["throughput"]["backend"]["events_per_s_median"]
    eps_ratio = ratio(backend_eps, direct_eps)
    d_lat, b_lat = result["latency"]["direct"]["latency_ms"], result["latency"]["backend"]["latency_ms"]
    added_p50 = round(b_lat["p50"] - d_lat["p50"], 3)
    added_p99 = round(b_lat["p99"] - d_lat["p99"], 3)
    lost = sum(r["lost"] for part in ("throughput", "latency") for p in result[part].values() for r in p["rounds"])
    targets = [
        Target("events/s ratio", eps_ratio, ">=", THROUGHPUT_RATIO_LIMIT),
        Target("added p50 ms", added_p50, "<=", P50_ADDED_LIMIT_MS),
    ]
    result["headline"] = {
        "direct_events_per_s": direct_eps,
        "backend_events_per_s": backend_eps,
        "events_per_s_ratio": eps_ratio,
        "direct_p50_ms": d_lat["p50"],
        "backend_p50_ms": b_lat["p50"],
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
        "lost_events": lost,
    }
    result["targets"] = [t.to_json() for t in targets]
    line = (
        f"relay: events/s ratio {fmt(eps_ratio)} ({backend_eps:.0f} vs {direct_eps:.0f} direct), "
        f"latency p50 ratio {fmt(ratio(b_lat['p50'], d_lat['p50']))} ({signed_ms(added_p50)}), "
        f"p99 ratio {fmt(ratio(b_lat['p99'], d_lat['p99']))} ({signed_ms(added_p99)}), lost {lost} "
        + " ".join(t.tag() for t in targets)
    )
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.relay [--quick]``."""
    return bench_main("relay", run, argv)


if __name__ == "__main__":
    sys.exit(main())
