"""The runtime's records: workers, transcript items and events, with their protocol JSON forms."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

WorkerStatus = Literal["running", "stopped", "cancelled", "failed"]
FINISHED_STATUSES: frozenset[str] = frozenset({"stopped", "cancelled", "failed"})

EVENT_KINDS: frozenset[str] = frozenset(
    {
        "status",
        "user_message",
        "text_delta",
        "text_done",
        "tool_call",
        "tool_result",
        "error",
        "run_end",
        "worker_exited",
    }
)

# The last event of every worker's log: after it the stream ends.
FINAL_EVENT = "worker_exited"
# What a CreateWorker intent and an input may be, and how long a stop/cancel reason (protocol v1).
INTENT_KINDS = ("assistant", "task", "role")
INPUT_KINDS = ("user", "system")
MAX_REASON_CHARS = 500


def new_epoch() -> str:
    """A fresh stream epoch: an opaque id naming one worker event log (a new log, a new epoch)."""
    return uuid.uuid4().hex


def compact_json(value: Any) -> str:
    """JSON without whitespace, as written to logs and the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a worker's durable event log; ``seq`` starts at 1 and grows by 1."""

    seq: int
    worker_id: str
    kind: str
    data: dict[str, Any]
    ts: float
    # The encoded JSON, computed once: every subscriber and the log write reuse it.
    text: str = field(default="", compare=False, repr=False)

    @classmethod
    def make(cls, *, seq: int, worker_id: str, kind: str, data: dict[str, Any], ts: float) -> Event:
        """Build an event and its encoded form."""
        body = {"seq": seq, "worker_id": worker_id, "event": kind, "data": data, "ts": ts}
        return cls(seq=seq, worker_id=worker_id, kind=kind, data=data, ts=ts, text=compact_json(body))

    @classmethod
    def from_json(cls, text: str) -> Event:
        """Parse one log line (raises ValueError/KeyError/TypeError on a bad line)."""
        body = json.loads(text)
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise ValueError("event line is not an object with a data object")
        seq, worker_id, kind, ts = body["seq"], body["worker_id"], body["event"], body["ts"]
        if not isinstance(seq, int) or not isinstance(worker_id, str) or not isinstance(kind, str):
            raise ValueError("event line has fields of the wrong type")
        return cls(seq=seq, worker_id=worker_id, kind=kind, data=body["data"], ts=float(ts), text=text)

    def to_json(self) -> dict[str, Any]:
        """The SSE ``data:`` object."""
        return {"seq": self.seq, "worker_id": self.worker_id, "event": self.kind, "data": self.data, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class TranscriptItem:
    """One transcript entry; ``sequence`` starts at 1; ``event_id`` is the seq of the event that made it."""

    sequence: int
    role: str
    content: str
    event_id: int

    def to_json(self) -> dict[str, Any]:
        """The wire form inside a transcript page."""
        return {"sequence": self.sequence, "role": self.role, "content": self.content, "event_id": self.event_id}

    @classmethod
    def from_json(cls, body: Any) -> TranscriptItem:
        """Parse one stored item (raises on a bad shape)."""
        if not isinstance(body, dict):
            raise ValueError("transcript line is not an object")
        seq, role, content, event_id = body["sequence"], body["role"], body["content"], body["event_id"]
        if not (isinstance(seq, int) and isinstance(role, str) and isinstance(content, str)):
            raise ValueError("transcript line has fields of the wrong type")
        if not isinstance(event_id, int):
            raise ValueError("transcript line has a non-integer event_id")
        return cls(sequence=seq, role=role, content=content, event_id=event_id)


@dataclass(slots=True)
class WorkerRecord:
    """The snapshot of one worker: what it runs and where its status machine stands."""

    worker_id: str
    profile: str  # the resolved profile name, e.g. "builtin:echo" or "example-agent"
    profile_selector: dict[str, Any]
    intent: dict[str, Any]
    options: dict[str, Any]
    status: str
    created_at: float
    updated_at: float
    reason: str | None = None
    exit_code: int | None = None
    # The epoch of the worker's event log, made with the log and kept with it; "" in a snapshot written
    # before epochs existed (the core gives such a log one when it opens the store).
    epoch: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stored snapshot form."""
        return {
            "worker_id": self.worker_id,
            "profile": self.profile,
            "profile_selector": self.profile_selector,
            "intent": self.intent,
            "options": self.options,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "epoch": self.epoch,
        }

    @classmethod
    def from_json(cls, body: Any) -> WorkerRecord:
        """Parse a stored snapshot (raises on a bad shape)."""
        if not isinstance(body, dict):
            raise ValueError("worker snapshot is not an object")
        record = cls(
            worker_id=body["worker_id"],
            profile=body["profile"],
            profile_selector=dict(body["profile_selector"]),
            intent=dict(body["intent"]),
            options=dict(body.get("options") or {}),
            status=body["status"],
            created_at=float(body["created_at"]),
            updated_at=float(body["updated_at"]),
            reason=body.get("reason"),
            exit_code=body.get("exit_code"),
            epoch=body.get("epoch") or "",
        )
        if record.status not in FINISHED_STATUSES | {"running"}:
            raise ValueError(f"unknown worker status {record.status!r}")
        if not isinstance(record.worker_id, str) or not isinstance(record.profile, str):
            raise ValueError("worker_id and profile must be strings")
        if not isinstance(record.epoch, str):
            raise ValueError("epoch must be a string")
        return record
