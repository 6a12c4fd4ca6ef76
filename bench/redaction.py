"""What the known-secret redaction of agent content costs per event, on the relay's hot path.

Every event a runtime streams is parsed once at the edge (``runtimes.handles.parse.parse_event``) and its
payload redacted of every secret the Backend holds (runtimes/scrub.py) before the relay sees it. This times
``parse_event`` on realistic payloads with the redaction (``N`` known secrets: Django's key and runtime
tokens) against the same parse with nothing to redact, in the same process, alternating blocks, and
reports the added microseconds per event and the ratio. No processes, no network: it isolates the one step
from the relay's other per-event work (bench/relay.py measures the whole path).

``python -m bench.redaction [--quick] [--json-out FILE]``
"""

from __future__ import annotations

import secrets
import statistics
import sys
import time
from typing import Any

from bench.common import BenchOptions, Processes, bench_main, fmt, ratio
from runtimes.handles.parse import parse_event
from runtimes.scrub import KnownSecrets, Scrubber

BASE_URL = "https://runtime-7.build.internal:8443"
SECRET_COUNTS = (2, 10, 50)
# bench/relay.py's event, a streamed text chunk (most events), a tool result (a few KiB), a nested payload.
PAYLOADS: dict[str, dict[str, Any]] = {
    "burst": {"i": 1234, "text": "."},  # what bench/relay.py streams
    "text_delta": {"text": "Reading the build log under /srv/build/out and http://ci.example/run/42 "},
    "tool_result_4k": {"tool": "shell", "output": "line of compiler output with a path /usr/lib/x.so\n" * 80},
    "nested": {
        "call": {"name": "fetch", "args": {"url": "http://x.example/a", "headers": {"accept": "json"}}},
        "items": [{"k": "v", "n": index} for index in range(10)],
    },
}
BLOCK = 2000
BLOCKS = 10


def _scrubber(count: int) -> Scrubber:
    values = [secrets.token_urlsafe(32) for _ in range(count)]
    known = KnownSecrets(static_source=lambda: values)
    return Scrubber(base_url=BASE_URL, secrets=known)


def _per_event_us(scrubber: Scrubber, body: dict[str, Any], count: int) -> float:
    """Mean microseconds of one parse_event over ``count`` events."""
    started = time.perf_counter()
    for seq in range(1, count + 1):
        parse_event(
            "text_delta",
            {"seq": seq, "worker_id": "w-1", "event": "text_delta", "data": body, "ts": 1.0},
            runtime_id="rt-1",
            worker_id="w-1",
            scrubber=scrubber,
        )
    return (time.perf_counter() - started) / count * 1e6


def measure(*, quick: bool) -> dict[str, Any]:
    """Alternating blocks with and without secrets, per payload and secret count; medians of the blocks."""
    blocks = 4 if quick else BLOCKS
    bare = _scrubber(0)
    figures: dict[str, Any] = {}
    for name, body in PAYLOADS.items():
        for count in SECRET_COUNTS:
            redacting = _scrubber(count)
            _per_event_us(redacting, body, BLOCK)  # warm-up
            _per_event_us(bare, body, BLOCK)
            with_us, without_us = [], []
            for _ in range(blocks):
                with_us.append(_per_event_us(redacting, body, BLOCK))
                without_us.append(_per_event_us(bare, body, BLOCK))
            on, off = statistics.median(with_us), statistics.median(without_us)
            figures[f"{name}/{count}"] = {
                "parse_us_without": round(off, 2),
                "parse_us_with": round(on, 2),
                "added_us": round(on - off, 2),
                "ratio": ratio(on, off),
            }
    return figures


def run(options: BenchOptions, procs: Processes) -> tuple[dict[str, Any], str]:
    """The benchmark (``procs`` unused: nothing is started)."""
    figures = measure(quick=options.quick)
    typical = figures["text_delta/10"]
    largest = max(figures.values(), key=lambda figure: figure["added_us"])
    result = {
        "figures": figures,
        "headline": {
            "text_delta_10_secrets_added_us": typical["added_us"],
            "text_delta_10_secrets_ratio": typical["ratio"],
            "worst_added_us": largest["added_us"],
        },
        "targets": [],
    }
    line = (
        f"redaction: text_delta with 10 known secrets +{typical['added_us']:.2f} us/event "
        f"(parse {typical['parse_us_without']:.2f} -> {typical['parse_us_with']:.2f} us, ratio "
        f"{fmt(typical['ratio'])}); worst case +{largest['added_us']:.2f} us/event (no target)"
    )
    return result, line


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.redaction [--quick]``."""
    return bench_main("redaction", run, argv)


if __name__ == "__main__":
    sys.exit(main())
