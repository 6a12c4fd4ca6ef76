"""Runtime list: ``GET /api/v1/runtimes/`` with 100 registered remote runtimes, 10 of them dead.

The 100 runtimes are listeners in this process (``bench.common.StubServers``): 90 answer the protocol's
summary, 5 accept and never answer (blackholed), 5 accept and reset at once (refusing). Every request and
every accepted connection is counted. ``manage.py probe_runtimes`` runs first, so the cache holds a real
status for each (90 online, 10 offline); then the list is read sequentially and with 8 clients, and the
upstream calls it caused are counted (the list must be served from the cache).

Target (docs/performance.md, Targets): p50 <= 20 ms; 0 upstream calls.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections import Counter
from typing import Any

from bench.common import (
    BenchOptions,
    Processes,
    RemoteSpec,
    Target,
    bench_main,
    checked,
    closed_loop,
    fmt,
    log,
    start_backend,
    stubs,
    summarize,
    timed_ms,
    warm_up,
)

TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_REGISTRY"
RUNTIMES = 100
BLACKHOLED = 5
REFUSING = 5
P50_LIMIT_MS = 20.0
LIST_PATH = "/api/v1/runtimes/"


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """Start the stubs and a Backend with 100 runtimes, probe once, then measure the list."""
    count = 200 if options.quick else 1000
    duration = 1.0 if options.quick else 3.0
    ids = [f"reg-{i:03d}" for i in range(RUNTIMES)]
    dead = RUNTIMES - BLACKHOLED - REFUSING
    healthy, blackholed, refusing = ids[:dead], ids[dead : dead + BLACKHOLED], ids[dead + BLACKHOLED :]
    with stubs(healthy=healthy, blackholes=blackholed, refusing=refusing) as servers:
        specs = [
            RemoteSpec(rid, servers.url(rid), TOKEN_ENV, connect_timeout=1.0, read_timeout=2.0) for rid in ids
        ]
        backend = start_backend(
            procs, options.workdir, runtimes=specs, tokens={TOKEN_ENV: secrets.token_urlsafe(24)}
        )
        log("registry: probe_runtimes")
        backend.manage("probe_runtimes")
        log("registry: measuring")
        probe_calls = servers.calls()

        client = backend.client()
        status, body = client.request("GET", LIST_PATH)
        if status != 200:
            raise RuntimeError(f"list answered {status}: {body[:300]!r}")
        items = json.loads(body)["items"]
        states = Counter(item["status"]["state"] for item in items)

        before = (servers.requests_seen, servers.blackhole_accepts, servers.refusing_accepts)
        call = checked(client, "GET", LIST_PATH)
        warm_up({"list": call}, count=50)
        samples = [timed_ms(call) for _ in range(count)]
        concurrent = closed_loop(lambda: checked(backend.client(), "GET", LIST_PATH), clients=8, duration=duration)
        after = (servers.requests_seen, servers.blackhole_accepts, servers.refusing_accepts)
        client.close()

    upstream = {
        "healthy_requests": after[0] - before[0],
        "blackholed_connections": after[1] - before[1],
        "refusing_connections": after[2] - before[2],
    }
    upstream_total = sum(upstream.values())
    latency = summarize(samples)
    targets = [
        Target("list p50 ms", latency["p50"], "<=", P50_LIMIT_MS),
        Target("upstream calls", float(upstream_total), "<=", 0),
    ]
    result: dict[str, Any] = {
        "config": {"runtimes": RUNTIMES, "blackholed": BLACKHOLED, "refusing": REFUSING, "sequential": count},
        "items_listed": len(items),
        "states_after_probe": dict(states),
        "probe_upstream_calls": probe_calls,
        "sequential_latency_ms": latency,
        "concurrent_8": concurrent.to_json(),
        "upstream_calls_during_list": upstream,
        "headline": {
            "list_p50_ms": latency["p50"],
            "list_p99_ms": latency["p99"],
            "list_rps_at_8": concurrent.to_json()["throughput_rps"],
            "upstream_calls": upstream_total,
        },
        "targets": [t.to_json() for t in targets],
    }
    line = (
        f"registry: list of {len(items)} runtimes p50 {fmt(latency['p50'])} ms, p99 {fmt(latency['p99'])} ms, "
        f"p50 ratio to target {fmt(latency['p50'] / P50_LIMIT_MS)}, upstream calls {upstream_total} "
        + " ".join(t.tag() for t in targets)
    )
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.registry [--quick]``."""
    return bench_main("registry", run, argv)


if __name__ == "__main__":
    sys.exit(main())
