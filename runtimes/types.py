"""Frozen dataclasses that leave runtime handles; raw runtime JSON never goes past a handle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# The runtime_id / worker_id alphabet and the protocol's fixed vocabulary: one definition, the reference
# runtime's.
from worker_runtime.ids import ID_PATTERN as ID_PATTERN
from worker_runtime.ids import is_valid_id as is_valid_id
from worker_runtime.model import FINAL_EVENT as FINAL_EVENT
from worker_runtime.model import INPUT_KINDS as INPUT_KINDS
from worker_runtime.model import INTENT_KINDS as INTENT_KINDS
from worker_runtime.model import MAX_REASON_CHARS as MAX_REASON_CHARS

RuntimeKind = Literal["embedded", "remote"]
# The largest integer a browser's JSON (an IEEE double) holds exactly: the bound of every seq and cursor.
MAX_JSON_SAFE_INT = 2**53 - 1


@dataclass(frozen=True)
class ProfileInfo:
    """A profile a runtime offers (its command line is never known here)."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What a runtime says it can do; ``None`` means the runtime did not say (older runtimes)."""

    protocol_version: str | None = None
    backend: str | None = None
    profiles: tuple[ProfileInfo, ...] | None = None
    default_profile: str | None = None
    max_transcript_items: int | None = None
    max_input_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The cached / browser-facing form."""
        return {
            "protocol_version": self.protocol_version,
            "backend": self.backend,
            "profiles": None if self.profiles is None else [vars(p).copy() for p in self.profiles],
            "default_profile": self.default_profile,
            "max_transcript_items": self.max_transcript_items,
            "max_input_bytes": self.max_input_bytes,
        }

    @classmethod
    def from_json(cls, body: Any) -> Capabilities:
        """Read back the cached form (lenient: a bad cache is treated as unknown)."""
        if not isinstance(body, dict):
            return cls()
        profiles = body.get("profiles")
        return cls(
            protocol_version=body.get("protocol_version"),
            backend=body.get("backend"),
            profiles=None
            if not isinstance(profiles, list)
            else tuple(ProfileInfo(str(p.get("name", "")), str(p.get("description", ""))) for p in profiles),
            default_profile=body.get("default_profile"),
            max_transcript_items=body.get("max_transcript_items"),
            max_input_bytes=body.get("max_input_bytes"),
        )


@dataclass(frozen=True)
class RuntimeSummary:
    """The runtime's own account of itself (GET /v1/runtime)."""

    runtime_id: str
    display_name: str
    status: str
    worker_count: int | None = None
    active_worker_count: int | None = None
    stopped_worker_count: int | None = None
    cancelled_worker_count: int | None = None
    event_streams_open: int | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)


@dataclass(frozen=True)
class WorkerDetail:
    """A worker, the same for embedded and remote runtimes; always addressed by runtime_id + worker_id."""

    runtime_id: str
    worker_id: str
    status: str
    profile: str | None = None
    intent: dict[str, Any] = field(default_factory=dict)
    transcript_len: int | None = None
    last_seq: int | None = None
    created_at: float | None = None
    updated_at: float | None = None
    reason: str | None = None
    exit_code: int | None = None
    # The epoch of the worker's event log (docs/runtime-protocol.md); None from runtimes without epochs.
    epoch: str | None = None


# A list item carries the same fields as a detail (a runtime may omit the optional ones).
WorkerSummary = WorkerDetail


@dataclass(frozen=True)
class WorkerSpec:
    """What a browser asks to create: profile name as the runtime lists it (None = runtime default)."""

    profile: str | None = None
    intent: dict[str, Any] = field(default_factory=lambda: {"kind": "assistant"})
    initial_input: str | None = None
    worker_id: str | None = None
    options: dict[str, Any] | None = None

    def to_protocol(self) -> dict[str, Any]:
        """The CreateWorker body of the runtime protocol."""
        if self.profile is None:
            selector: dict[str, Any] = {"kind": "runtime_default"}
        elif self.profile.startswith("builtin:"):
            selector = {"kind": "builtin", "value": self.profile}
        else:
            selector = {"kind": "named", "value": self.profile}
        body: dict[str, Any] = {"intent": dict(self.intent), "profile": selector}
        if self.initial_input is not None:
            body["initial_input"] = self.initial_input
        if self.worker_id is not None:
            body["worker_id"] = self.worker_id
        if self.options:
            body["options"] = dict(self.options)
        return body


@dataclass(frozen=True)
class Ack:
    """A runtime's acknowledgement of a command."""

    runtime_id: str
    worker_id: str
    status: str
    transcript_sequence: int | None = None
    event_id: int | str | None = None


@dataclass(frozen=True)
class TranscriptItem:
    """One transcript entry."""

    sequence: int
    role: str
    content: str
    event_id: int | str | None = None


@dataclass(frozen=True)
class TranscriptPage:
    """A bounded page of a worker's transcript."""

    runtime_id: str
    worker_id: str
    start: int
    limit: int
    total_items: int
    items: tuple[TranscriptItem, ...]
    next_start: int | None


@dataclass(frozen=True)
class WorkerEvent:
    """One event of a worker's stream."""

    runtime_id: str
    worker_id: str
    seq: int
    event: str
    data: dict[str, Any]
    ts: float | None = None


RESET_HISTORY_EXPIRED = "history_expired"
RESET_CURSOR_AHEAD = "cursor_ahead"


@dataclass(frozen=True)
class StreamReset:
    """The runtime cannot honour the asked-for cursor; the stream goes on from ``earliest_seq``.

    ``reason``: ``history_expired`` (those events are gone) or ``cursor_ahead`` (the cursor is past the end
    of the log: it came from another stream under the same ids); ``epoch`` names the log, when known.
    """

    reason: str
    earliest_seq: int
    epoch: str | None = None
