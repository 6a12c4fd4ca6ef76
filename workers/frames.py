"""The frames a browser receives on a worker's event socket (docs/api.md), encoded once as JSON text."""

from __future__ import annotations

import json
from typing import Any

import orjson

from runtimes import metrics
from runtimes.errors import YoiError
from runtimes.request_context import current_request_id
from runtimes.types import WorkerEvent

# A WebSocket close code carries the HTTP status of the error that ended the socket.
CLOSE_CODE_BASE = 4000


# What orjson refuses (integers past 64 bits in an event's data) goes through the standard library.
_fallback = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _text(frame: dict[str, Any]) -> str:
    try:
        return orjson.dumps(frame).decode("utf-8")
    except TypeError:
        return _fallback(frame)


def event_frame(event: WorkerEvent) -> str:
    """``{"type": "event", runtime_id, worker_id, seq, event, data, ts}``."""
    return _text(
        {
            "type": "event",
            "runtime_id": event.runtime_id,
            "worker_id": event.worker_id,
            "seq": event.seq,
            "event": event.event,
            "data": event.data,
            "ts": event.ts,
        }
    )


def state_frame(upstream: str, *, reason: str | None = None, retry_in: float | None = None) -> str:
    """``{"type": "state", "upstream": connected|reconnecting|unavailable, "reason"?, "retry_in"?}``."""
    frame: dict[str, Any] = {"type": "state", "upstream": upstream}
    if reason is not None:
        frame["reason"] = reason
    if retry_in is not None:
        frame["retry_in"] = round(retry_in, 2)
    return _text(frame)


def reset_frame(reason: str, earliest_seq: int) -> str:
    """``{"type": "reset", reason, earliest_seq}``: events before ``earliest_seq`` will not come (one browser's
    frame: counted as one reset sent)."""
    metrics.relay_reset(reason)
    return _text({"type": "reset", "reason": reason, "earliest_seq": earliest_seq})


def error_frame(error: YoiError) -> tuple[str, int]:
    """THE WebSocket mapping of a typed error: the frame and the close code (4000 + HTTP status). Sent on a
    socket's own behalf, the error carries that socket's ``request_id``."""
    body = error.to_json()
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return _text({"type": "error", "error": body}), CLOSE_CODE_BASE + error.http_status
