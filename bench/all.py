"""Run every benchmark (``make bench``) and print every ratio line at the end.

``python -m bench.all [--quick] [--repeat N] [--only proxy,relay,...] [--markdown FILE] [--json-out FILE]``

Each benchmark runs as its own process (its own runtime and Backend processes, torn down when it ends);
with ``--repeat N`` the whole set runs N times, interleaved, and a summary gives each headline figure as
the median with min-max, and each target judged on the median. One collectstatic output and one
migrated database template are shared by all runs (``YOI_BENCH_CACHE``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE_ENV, PY, REPO_ROOT, exit_on_sigterm, machine, raise_fd_limit

BENCHES = ("proxy", "relay", "redaction", "many_workers", "fanout", "registry", "isolation")
SCRIPT_TIMEOUT = 900.0


def _run_one(name: str, *, quick: bool, out: Path, env: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m bench.<name>``; return its JSON (None on failure) and its ratio line."""
    argv = [PY, "-m", f"bench.{name}", "--json-out", str(out)] + (["--quick"] if quick else [])
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, _ = proc.communicate(timeout=SCRIPT_TIMEOUT)
    except BaseException:
        # Timeout or Ctrl-C: SIGTERM lets the script tear its processes down; then make sure.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        raise
    lines = [line for line in stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode != 0 or not out.exists():
        return None, f"{name}: FAILED (exit {proc.returncode})"
    return json.loads(out.read_text("utf-8")), last


def _median_range(values: list[float]) -> tuple[float, float, float]:
    clean = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not clean:
        return math.nan, math.nan, math.nan
    return statistics.median(clean), min(clean), max(clean)


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def summarize_runs(results: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """(markdown rows of headline figures, markdown rows of targets) over the repeats."""
    figure_rows = ["| Benchmark | Figure | Median | Min-max | Runs |", "|---|---|---|---|---|"]
    target_rows = [
        "| Benchmark | Target | Median | Min-max | Met (on median) | Met in runs |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if not runs:
            continue
        for key in runs[0].get("headline", {}):
            med, low, high = _median_range([r["headline"].get(key, math.nan) for r in runs])
            figure_rows.append(f"| {name} | {key} | {_num(med)} | {_num(low)}-{_num(high)} | {len(runs)} |")
        for index, target in enumerate(runs[0].get("targets", [])):
            values = [r["targets"][index]["value"] for r in runs]
            med, low, high = _median_range(values)
            met = not math.isnan(med) and (
                med <= target["limit"] if target["op"] == "<=" else med >= target["limit"]
            )
            met_runs = sum(1 for r in runs if r["targets"][index]["met"])
            target_rows.append(
                f"| {name} | {target['name']} {target['op']} {target['limit']:g} | {_num(med)} | "
                f"{_num(low)}-{_num(high)} | {'MET' if met else 'MISSED'} | {met_runs}/{len(runs)} |"
            )
    return figure_rows, target_rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print each ratio line as it comes and all of them at the end."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.all", description="Run every benchmark of docs/performance.md's targets."
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, noisier figures)")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole set N times (median, min-max)")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHES))
    parser.add_argument("--markdown", type=Path, help="write the summary tables (markdown) to this file")
    parser.add_argument("--json-out", type=Path, help="write every run's JSON to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)}")
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    raise_fd_limit()

    started = time.monotonic()
    info = machine()
    scratch = Path(tempfile.mkdtemp(prefix="yoi-bench-all-"))
    env = {**os.environ, CACHE_ENV: str(scratch / "cache"), "PYTHONUNBUFFERED": "1"}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    lines: list[str] = []
    try:
        for repeat in range(1, args.repeat + 1):
            for name in names:
                print(f"==> bench.{name} (run {repeat}/{args.repeat})", file=sys.stderr, flush=True)
                one_started = time.monotonic()
                result, line = _run_one(name, quick=args.quick, out=scratch / f"{name}-{repeat}.json", env=env)
                if result is not None:
                    results[name].append(result)
                lines.append(line)
                print(f"{line}  ({time.monotonic() - one_started:.0f} s)", flush=True)
    except (KeyboardInterrupt, SystemExit):
        print("bench.all: interrupted; the running benchmark was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    elapsed = time.monotonic() - started
    figure_rows, target_rows = summarize_runs(results)
    print()
    if args.repeat > 1:
        print("\n".join(figure_rows))
        print()
        print("\n".join(target_rows))
        print()
    if args.markdown:
        args.markdown.write_text("\n".join(figure_rows) + "\n\n" + "\n".join(target_rows) + "\n", "utf-8")
    if args.json_out:
        payload = {"machine": info, "elapsed_s": round(elapsed, 1), "results": results}
        args.json_out.write_text(json.dumps(payload, indent=2), "utf-8")
    print(
        f"== ratios ({len(names)} benchmarks x {args.repeat} run(s), {elapsed:.0f} s, "
        f"{info['cpus']} cores, Python {info['python']}) =="
    )
    for line in lines:
        print(line)
    return 0 if all(results[name] for name in names) else 1


if __name__ == "__main__":
    sys.exit(main())
