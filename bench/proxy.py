"""Command proxy overhead: worker detail (GET) and input (POST), direct to the runtime vs through the Backend.

Sequential p50/p99 (direct and Backend requests alternate in blocks so drift hits both alike), then
closed-loop throughput and latency at 1, 8 and 32 concurrent clients. The Backend path carries session
auth + CSRF, the registry lookup, error mapping and the audit write of a command; the load generator is
a light keep-alive ``http.client`` per thread (it shares the machine's cores with the servers).

Target (docs/performance.md, Targets): Backend p50 <= direct p50 + 2 ms, p99 <= direct p99 + 6 ms.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.common import (
    BenchOptions,
    Call,
    HttpClient,
    Processes,
    Target,
    alternating_sequential,
    bench_main,
    checked,
    closed_loop,
    fmt,
    ratio,
    signed_ms,
    start_runtime_and_backend,
    summarize,
    warm_up,
)

RUNTIME_ID = "bench-proxy"
TOKEN_ENV = "YOI_RUNTIME_TOKEN_BENCH_PROXY"
CONCURRENCY = (1, 8, 32)
P50_ADDED_LIMIT_MS = 2.0
P99_ADDED_LIMIT_MS = 6.0
OK = (200, 201, 202)


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """Start a runtime and a Backend, measure both operations on both paths."""
    sequential_count = 300 if options.quick else 1000
    warm_count = 100 if options.quick else 300
    duration = 1.0 if options.quick else 2.0

    rt, backend = start_runtime_and_backend(procs, options.workdir, runtime_id=RUNTIME_ID, token_env=TOKEN_ENV)
    # A burst worker of one event per input: each input is cheap for the runtime on both paths.
    worker_id = rt.create_worker("builtin:burst", {"count": 1, "rate": 0})
    direct_prefix = f"/v1/workers/{worker_id}"
    backend_prefix = f"/api/v1/runtimes/{RUNTIME_ID}/workers/{worker_id}"

    def calls(direct: HttpClient, via: HttpClient) -> dict[str, dict[str, Call]]:
        return {
            "get": {
                "direct": checked(direct, "GET", direct_prefix, ok=OK),
                "backend": checked(via, "GET", backend_prefix + "/", ok=OK),
            },
            "input": {
                "direct": checked(direct, "POST", direct_prefix + "/input", {"kind": "user", "content": "x"}, OK),
                "backend": checked(via, "POST", backend_prefix + "/input/", {"content": "x"}, OK),
            },
        }

    direct_client, backend_client = rt.client(), backend.client()
    ops = calls(direct_client, backend_client)
    result: dict[str, Any] = {"sequential": {}, "concurrent": {}}
    for op, pair in ops.items():
        warm_up(pair, count=warm_count)
        samples = alternating_sequential(pair, count=sequential_count)
        direct, via = summarize(samples["direct"]), summarize(samples["backend"])
        result["sequential"][op] = {
            "direct_ms": direct,
            "backend_ms": via,
            "p50_ratio": ratio(via["p50"], direct["p50"]),
            "p99_ratio": ratio(via["p99"], direct["p99"]),
            "p50_added_ms": round(via["p50"] - direct["p50"], 3),
            "p99_added_ms": round(via["p99"] - direct["p99"], 3),
        }
    direct_client.close()
    backend_client.close()

    for op in ops:
        levels: dict[str, Any] = {}
        for clients in CONCURRENCY:
            figures: dict[str, Any] = {}
            for path in ("direct", "backend"):

                def factory(op: str = op, path: str = path) -> Call:
                    return calls(rt.client(), backend.client())[op][path]

                figures[path] = closed_loop(factory, clients=clients, duration=duration).to_json()
            figures["throughput_ratio"] = ratio(
                figures["backend"]["throughput_rps"], figures["direct"]["throughput_rps"]
            )
            levels[str(clients)] = figures
        result["concurrent"][op] = levels

    seq = result["sequential"]
    p50_added = max(seq[op]["p50_added_ms"] for op in ops)
    p99_added = max(seq[op]["p99_added_ms"] for op in ops)
    targets = [
        Target("added p50 ms (worst op)", p50_added, "<=", P50_ADDED_LIMIT_MS),
        Target("added p99 ms (worst op)", p99_added, "<=", P99_ADDED_LIMIT_MS),
    ]
    tp32 = {op: result["concurrent"][op]["32"]["throughput_ratio"] for op in ops}
    headline = {
        "get_direct_p50_ms": seq["get"]["direct_ms"]["p50"],
        "get_backend_p50_ms": seq["get"]["backend_ms"]["p50"],
        "get_p50_added_ms": seq["get"]["p50_added_ms"],
        "get_p99_added_ms": seq["get"]["p99_added_ms"],
        "input_direct_p50_ms": seq["input"]["direct_ms"]["p50"],
        "input_backend_p50_ms": seq["input"]["backend_ms"]["p50"],
        "input_p50_added_ms": seq["input"]["p50_added_ms"],
        "input_p99_added_ms": seq["input"]["p99_added_ms"],
        "get_p50_ratio": seq["get"]["p50_ratio"],
        "input_p50_ratio": seq["input"]["p50_ratio"],
        "get_throughput_ratio_at_32": tp32["get"],
        "input_throughput_ratio_at_32": tp32["input"],
        "get_backend_rps_at_32": result["concurrent"]["get"]["32"]["backend"]["throughput_rps"],
        "input_backend_rps_at_32": result["concurrent"]["input"]["32"]["backend"]["throughput_rps"],
    }
    result["headline"] = headline
    result["targets"] = [t.to_json() for t in targets]
    parts = []
    for op, label in (("get", "GET"), ("input", "POST input")):
        s = seq[op]
        parts.append(
            f"{label} p50 ratio {fmt(s['p50_ratio'])} ({signed_ms(s['p50_added_ms'])}), "
            f"p99 ratio {fmt(s['p99_ratio'])} ({signed_ms(s['p99_added_ms'])})"
        )
    line = (
        "proxy: "
        + "; ".join(parts)
        + f"; throughput@32 ratio GET {fmt(tp32['get'])}, POST {fmt(tp32['input'])} "
        + " ".join(t.tag() for t in targets)
    )
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.proxy [--quick]``."""
    return bench_main("proxy", run, argv)


if __name__ == "__main__":
    sys.exit(main())
