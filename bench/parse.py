"""Micro-benchmark of the parse edge: µs per event through ``runtimes.handles.parse.parse_event``.

``python -m bench.parse [--events N] [--rounds R]`` (in-process, no servers). Shapes timed: a well-typed
event as the reference runtime sends it (the hot path), one with an RFC 3339 ``ts``, one with numbers sent
as strings, and one with extra keys. The baseline is building the same ``WorkerEvent`` directly from the
dict with no checks at all; the ratio line gives the hot path against it. Best of R rounds per shape, in
process CPU time (``time.process_time``): on a shared machine wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from runtimes.handles.parse import parse_event
from runtimes.types import WorkerEvent

RID, WID = "rt-bench", "w-bench"


def _event(seq: int) -> dict[str, Any]:
    return {"seq": seq, "worker_id": WID, "event": "text_delta", "data": {"text": "echo", "i": seq}, "ts": 1.7e9}


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "typed": _event,
    "ts_rfc3339": lambda seq: {**_event(seq), "ts": "2026-12-04T02:50:53.123Z"},
    "string_numbers": lambda seq: {**_event(seq), "seq": str(seq), "ts": "1760000000.5"},
    "extra_keys": lambda seq: {**_event(seq), "trace_id": "abc", "span": 3},
}


def _direct(name: str, data: dict[str, Any]) -> WorkerEvent:
    """The baseline: the dataclass built from the dict, trusting every field."""
    return WorkerEvent(
        runtime_id=RID, worker_id=WID, seq=data["seq"], event=data["event"], data=data["data"], ts=data["ts"]
    )


def _parse(name: str, data: dict[str, Any]) -> Any:
    return parse_event(name, data, runtime_id=RID, worker_id=WID)


def time_per_event(fn: Callable[[str, dict[str, Any]], Any], events: list[dict[str, Any]], rounds: int) -> float:
    """Best-of-``rounds`` µs per event of ``fn`` over ``events``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for data in events:
            fn("text_delta", data)
        best = min(best, time.process_time() - started)
    return best / len(events) * 1e6


def main(argv: list[str] | None = None) -> int:
    """Time every shape; print a JSON result and a ratio line."""
    parser = argparse.ArgumentParser(prog="python -m bench.parse", description=__doc__)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    typed = [_event(seq) for seq in range(1, args.events + 1)]
    result: dict[str, float | None] = {"direct_us": time_per_event(_direct, typed, args.rounds)}
    for shape, make in SHAPES.items():
        events = [make(seq) for seq in range(1, args.events + 1)]
        try:
            _parse("text_delta", events[0])
        except Exception:  # a parser that refuses the shape (what this one replaced) has no figure
            result[f"{shape}_us"] = None
            continue
        result[f"{shape}_us"] = time_per_event(_parse, events, args.rounds)
    print(json.dumps({name: None if value is None else round(value, 3) for name, value in result.items()}))
    typed_us, direct_us = result["typed_us"], result["direct_us"]
    assert typed_us is not None and direct_us is not None
    print(f"parse: typed event {typed_us:.2f} µs ({typed_us / direct_us:.1f}x a direct dataclass build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
