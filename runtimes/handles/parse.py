"""Protocol JSON -> the frozen dataclasses of ``runtimes.types``; shared by the remote and embedded handles.

Pure functions, tolerant at the edge (docs/runtime-protocol.md, *Tolerant fields*): only what the Backend
cannot do without is fatal, and becomes one ``RuntimeBadResponse`` naming only ids — an event's ``seq`` and
``worker_id``, the identity and status of a runtime, worker or ack, a transcript item's sequence, role and
content. An optional field of an unexpected type is normalised (numbers sent as strings, ``ts`` as an
RFC 3339 string) or dropped to ``None``; either way one log line names the field and the runtime (never a
value), at most once a minute per runtime and field. Fields older runtimes leave out become ``None``;
keys nobody knows are ignored (an event's ``data`` object is kept whole, whatever it holds).

The per-field normalisers (``int_from``, ``seconds_from``, ``epoch_from``, ...) are small module functions
so each rule can be read, tested and changed on its own. ``parse_event`` is the hot path: a well-typed
event is checked with exact type tests only and never reaches a normaliser.

This is also the edge where runtime text is scrubbed (runtimes/scrub.py), so nothing downstream —
serializers, the relay, its buffer, the channel layer — ever holds it raw: metadata (status, profile,
intent, role, capabilities, reset reasons, event kinds) gets the full scrub, agent content (transcript
content, event payloads) known-secret redaction only. Each function takes the runtime's ``scrubber``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

from runtimes.errors import RuntimeBadResponse
from runtimes.scrub import GENERIC, Scrubber
from runtimes.types import (
    RESET_HISTORY_EXPIRED,
    Ack,
    Capabilities,
    ProfileInfo,
    RuntimeSummary,
    StreamReset,
    TranscriptItem,
    TranscriptPage,
    WorkerDetail,
    WorkerEvent,
    is_valid_id,
)
from worker_runtime.model import EVENT_KINDS

logger = logging.getLogger(__name__)

RESET_EVENT = "reset"
# The SSE default event type: what an event is called when neither its ``event:`` line nor its data names it.
DEFAULT_EVENT_KIND = "message"
# Event kinds of the protocol (and SSE's default name): their names need no scrub (the hot path skips it).
KNOWN_EVENT_KINDS = EVENT_KINDS | {DEFAULT_EVENT_KIND}
# An epoch is opaque but travels to browsers (frames, worker JSON, a query parameter): a short token.
EPOCH_RE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_INT_TEXT_RE = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER_TEXT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# One "normalised" log line per runtime and field per interval: a stream of bad events must not flood the log.
NOTE_INTERVAL_SECONDS = 60.0
MAX_NOTED_FIELDS = 4096


# --------------------------------------------------------------------------------------------- log lines


def _bad(runtime_id: str, what: str, *, worker_id: str | None = None, message: str | None = None) -> NoReturn:
    logger.warning(
        "runtimes.parse.bad_shape", extra={"runtime_id": runtime_id, "worker_id": worker_id, "field": what}
    )
    raise RuntimeBadResponse(runtime_id=runtime_id, worker_id=worker_id, message=message)


class _FieldNotes:
    """Rate limit of the "field normalised" log line: the first per (runtime_id, field), then one an interval,
    each saying how many were not logged since. Thread-safe; bounded (forgets everything past the cap)."""

    def __init__(self, interval: float = NOTE_INTERVAL_SECONDS, max_keys: int = MAX_NOTED_FIELDS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def note(self, runtime_id: str, field: str, action: str, *, worker_id: str | None = None) -> None:
        """Record that ``field`` of ``runtime_id``'s answer was ``action`` ("converted" or "dropped")."""
        now = time.monotonic()
        key = (runtime_id, field)
        with self._lock:
            last, suppressed = self._last.get(key, (-math.inf, 0))
            if now - last < self.interval:
                self._last[key] = (last, suppressed + 1)
                return
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
        logger.warning(
            "runtimes.parse.field_normalised",
            extra={
                "runtime_id": runtime_id,
                "worker_id": worker_id,
                "field": field,
                "action": action,
                "suppressed": suppressed,
            },
        )

    def reset(self) -> None:
        """Forget every note (tests)."""
        with self._lock:
            self._last.clear()


field_notes = _FieldNotes()


# --------------------------------------------------------------------------------------------- normalisers


def int_from(value: Any) -> int | None:
    """An integer sent as something else: a decimal string (``"12"``) or an integral float (``12.0``);
    None when it is not one (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _INT_TEXT_RE.fullmatch(text) else None
    return None


def seconds_from(value: Any) -> float | None:
    """A timestamp as Unix seconds: a finite number, a number sent as a string, or an RFC 3339 / ISO 8601
    string (UTC when it has no offset); None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _NUMBER_TEXT_RE.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def epoch_from(value: Any) -> str | None:
    """A stream epoch: an opaque short token (``EPOCH_RE``); None when absent or not one."""
    if isinstance(value, str) and EPOCH_RE.fullmatch(value):
        return value
    return None


def event_id_from(value: Any) -> int | str | None:
    """An event id (the protocol allows an integer or a string); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return value
    return None


def payload_from(value: Any) -> dict[str, Any]:
    """An event's ``data`` that is not an object: nothing becomes ``{}``, anything else ``{"value": ...}``
    (the same rule as a subprocess agent's events)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {"value": value}


# --------------------------------------------------------------------------------------------- objects


class _Reader:
    """Field access on one JSON object: strict for what the Backend needs, tolerant for the rest."""

    def __init__(
        self, body: Any, *, runtime_id: str, worker_id: str | None, what: str, scrubber: Scrubber = GENERIC
    ) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.what = what
        self.scrubber = scrubber
        if not isinstance(body, dict):
            self.bad(what)
        self.body: dict[str, Any] = body

    def _field(self, key: str) -> str:
        return f"{self.what}.{key}" if key != self.what else key

    def bad(self, key: str) -> NoReturn:
        _bad(self.runtime_id, self._field(key), worker_id=self.worker_id)

    def note(self, key: str, action: str) -> None:
        field_notes.note(self.runtime_id, self._field(key), action, worker_id=self.worker_id)

    def child(self, body: Any, what: str) -> _Reader:
        """A reader of a nested object with the same ids and scrub."""
        return _Reader(
            body, runtime_id=self.runtime_id, worker_id=self.worker_id, what=what, scrubber=self.scrubber
        )

    # ---- required: a mismatch is fatal

    def get_str(self, key: str) -> str:
        value = self.body.get(key)
        if not isinstance(value, str):
            self.bad(key)
        return value

    def get_ident(self, key: str) -> str | None:
        """An identity field (runtime_id, worker_id): absent is fine, any other type is fatal."""
        value = self.body.get(key)
        if value is not None and not isinstance(value, str):
            self.bad(key)
        return value

    def text(self, key: str) -> str:
        """A required metadata string, scrubbed."""
        return self.scrubber.text(self.get_str(key))

    def get_int(self, key: str) -> int:
        value = self.body.get(key)
        if type(value) is int:
            return value
        converted = int_from(value)
        if converted is None:
            self.bad(key)
        self.note(key, "converted")
        return converted

    def get_list(self, key: str) -> list[Any]:
        value = self.body.get(key)
        if not isinstance(value, list):
            self.bad(key)
        return value

    # ---- optional: normalised or dropped, with a (rate-limited) log line

    def _optional(self, key: str, converted: Any) -> Any:
        self.note(key, "dropped" if converted is None else "converted")
        return converted

    def opt_str(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is None or isinstance(value, str):
            return value
        return self._optional(key, None)

    def opt_text(self, key: str) -> str | None:
        """An optional metadata string, scrubbed."""
        return self.scrubber.opt_text(self.opt_str(key))

    def opt_int(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None or type(value) is int:
            return value
        return self._optional(key, int_from(value))

    def opt_seconds(self, key: str) -> float | None:
        value = self.body.get(key)
        if value is None:
            return None
        if type(value) is float and math.isfinite(value):
            return value
        if type(value) is int:
            return float(value)
        return self._optional(key, seconds_from(value))

    def opt_event_id(self, key: str) -> int | str | None:
        value = self.body.get(key)
        if value is None or type(value) is int or type(value) is str:
            return value
        return self._optional(key, event_id_from(value))

    def event_id(self, key: str) -> int | str | None:
        """An optional event id (a string one is metadata, scrubbed)."""
        value = self.opt_event_id(key)
        return self.scrubber.text(value) if isinstance(value, str) else value

    def opt_dict(self, key: str) -> dict[str, Any] | None:
        value = self.body.get(key)
        if value is None or isinstance(value, dict):
            return value
        return self._optional(key, None)

    def opt_epoch(self, key: str = "epoch") -> str | None:
        value = self.body.get(key)
        if value is None:
            return None
        epoch = epoch_from(value)
        if epoch is None:
            self.note(key, "dropped")
        return epoch


def unwrap(body: Any, key: str, *, runtime_id: str, worker_id: str | None = None) -> Any:
    """The payload of a protocol envelope such as ``{"worker": {...}}``."""
    if not isinstance(body, dict) or key not in body:
        _bad(runtime_id, f"envelope.{key}", worker_id=worker_id)
    return body[key]


def _check_ref(reader: _Reader, *, worker_id: str | None) -> str:
    """The worker_id a body names (``worker_ref`` or a top-level ``worker_id``), checked against the asked ids."""
    ref = reader.body.get("worker_ref")
    if ref is not None and not isinstance(ref, dict):
        reader.bad("worker_ref")
    ref_reader = reader.child(ref, "worker_ref") if ref else None
    reported_runtime = ref_reader.get_ident("runtime_id") if ref_reader else None
    top_runtime = reader.get_ident("runtime_id")
    for value in (reported_runtime, top_runtime):
        if value is not None and value != reader.runtime_id:
            _bad(reader.runtime_id, f"{reader.what}.runtime_id", worker_id=worker_id)
    reported_worker = ref_reader.get_ident("worker_id") if ref_reader else None
    top_worker = reader.get_ident("worker_id")
    if reported_worker is not None and top_worker is not None and reported_worker != top_worker:
        _bad(reader.runtime_id, f"{reader.what}.worker_id", worker_id=worker_id)
    found = reported_worker if reported_worker is not None else top_worker
    if found is None:
        if worker_id is None:
            _bad(reader.runtime_id, f"{reader.what}.worker_id")
        return worker_id
    if worker_id is not None and found != worker_id:
        _bad(reader.runtime_id, f"{reader.what}.worker_id", worker_id=worker_id)
    if not is_valid_id(found):
        _bad(reader.runtime_id, f"{reader.what}.worker_id", worker_id=worker_id)
    return found


def parse_summary(body: Any, *, runtime_id: str, scrubber: Scrubber = GENERIC) -> RuntimeSummary:
    """A RuntimeSummary object (the inside of ``{"runtime": ...}``); its runtime_id must be ``runtime_id``."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=None, what="runtime", scrubber=scrubber)
    reported = r.get_str("runtime_id")
    if reported != runtime_id:
        logger.warning(
            "runtimes.parse.identity_mismatch",
            extra={"runtime_id": runtime_id, "reported_runtime_id": scrubber.text(reported, limit=120)},
        )
        raise RuntimeBadResponse(
            runtime_id=runtime_id,
            message=f"runtime {runtime_id} reported an identity that does not match its configuration",
        )
    return RuntimeSummary(
        runtime_id=runtime_id,
        display_name=r.opt_text("display_name") or runtime_id,
        status=r.text("status"),
        worker_count=r.opt_int("worker_count"),
        active_worker_count=r.opt_int("active_worker_count"),
        stopped_worker_count=r.opt_int("stopped_worker_count"),
        cancelled_worker_count=r.opt_int("cancelled_worker_count"),
        event_streams_open=r.opt_int("event_streams_open"),
        capabilities=_capabilities(r),
    )


def _profiles(r: _Reader) -> tuple[ProfileInfo, ...] | None:
    """The profiles a summary lists; a malformed entry is dropped, a malformed list is unknown."""
    raw = r.body.get("profiles")
    if raw is None:
        return None
    if not isinstance(raw, list):
        r.note("profiles", "dropped")
        return None
    items = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            r.note("profiles[].name", "dropped")
            continue
        p = r.child(item, "profiles[]")
        items.append(ProfileInfo(name=r.scrubber.text(name), description=p.opt_text("description") or ""))
    return tuple(items)


def _protocol_version(r: _Reader) -> str | None:
    version = r.body.get("protocol_version")
    if version is None or isinstance(version, str):
        return r.scrubber.opt_text(version)
    if isinstance(version, int | float) and not isinstance(version, bool):
        return str(version)
    r.note("protocol_version", "dropped")
    return None


def _capabilities(r: _Reader) -> Capabilities:
    limits = r.child(r.opt_dict("limits") or {}, "limits")
    return Capabilities(
        protocol_version=_protocol_version(r),
        backend=r.opt_text("backend"),
        profiles=_profiles(r),
        default_profile=r.opt_text("default_profile"),
        max_transcript_items=limits.opt_int("max_transcript_projection_items"),
        max_input_bytes=limits.opt_int("max_input_bytes"),
    )


def _profile_name(r: _Reader) -> str | None:
    value = r.body.get("profile")
    if value is None or isinstance(value, str):
        return r.scrubber.opt_text(value)
    if isinstance(value, dict):  # a selector {"kind", "value"?}
        selector = r.child(value, "profile")
        return selector.opt_text("value") or selector.opt_text("kind")
    r.note("profile", "dropped")
    return None


def parse_worker(
    body: Any, *, runtime_id: str, worker_id: str | None = None, scrubber: Scrubber = GENERIC
) -> WorkerDetail:
    """A WorkerDetail/WorkerSummary object; when ``worker_id`` is given the body must name that worker."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=worker_id, what="worker", scrubber=scrubber)
    found = _check_ref(r, worker_id=worker_id)
    r.worker_id = found
    return WorkerDetail(
        runtime_id=runtime_id,
        worker_id=found,
        status=r.text("status"),
        profile=_profile_name(r),
        intent=dict(scrubber.tree(r.opt_dict("intent") or {})),
        transcript_len=r.opt_int("transcript_len"),
        last_seq=r.opt_int("last_seq"),
        created_at=r.opt_seconds("created_at"),
        updated_at=r.opt_seconds("updated_at"),
        reason=r.opt_text("reason"),
        exit_code=r.opt_int("exit_code"),
        epoch=r.opt_epoch(),
    )


def parse_workers(body: Any, *, runtime_id: str, scrubber: Scrubber = GENERIC) -> list[WorkerDetail]:
    """The list of ``{"workers": [...]}``."""
    if not isinstance(body, list):
        _bad(runtime_id, "workers")
    return [parse_worker(item, runtime_id=runtime_id, scrubber=scrubber) for item in body]


def parse_ack(body: Any, *, runtime_id: str, worker_id: str, scrubber: Scrubber = GENERIC) -> Ack:
    """The ``ack`` of input/stop/cancel; it must name the worker the command went to."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=worker_id, what="ack", scrubber=scrubber)
    _check_ref(r, worker_id=worker_id)
    return Ack(
        runtime_id=runtime_id,
        worker_id=worker_id,
        status=r.text("status"),
        transcript_sequence=r.opt_int("transcript_sequence"),
        event_id=r.event_id("event_id"),
    )


def parse_transcript(
    body: Any, *, runtime_id: str, worker_id: str, scrubber: Scrubber = GENERIC
) -> TranscriptPage:
    """The ``transcript`` page of one worker; item content is agent content (known secrets redacted)."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=worker_id, what="transcript", scrubber=scrubber)
    _check_ref(r, worker_id=worker_id)
    items = []
    for raw in r.get_list("items"):
        item = r.child(raw, "transcript.items[]")
        items.append(
            TranscriptItem(
                sequence=item.get_int("sequence"),
                role=item.text("role"),
                content=scrubber.content(item.get_str("content")),
                event_id=item.event_id("event_id"),
            )
        )
    return TranscriptPage(
        runtime_id=runtime_id,
        worker_id=worker_id,
        start=r.get_int("start"),
        limit=r.get_int("limit"),
        total_items=r.get_int("total_items"),
        items=tuple(items),
        next_start=r.opt_int("next_start"),
    )


# --------------------------------------------------------------------------------------------- events


def parse_stream_epoch(value: str | None, *, runtime_id: str, worker_id: str) -> str | None:
    """The epoch of an event stream (the ``Yoi-Stream-Epoch`` header); None without one or when malformed."""
    if value is None:
        return None
    epoch = epoch_from(value)
    if epoch is None:
        field_notes.note(runtime_id, "stream.epoch", "dropped", worker_id=worker_id)
    return epoch


def parse_reset(
    data: dict[str, Any], *, runtime_id: str, worker_id: str, scrubber: Scrubber = GENERIC
) -> StreamReset:
    """An ``event: reset``: the stream goes on from ``earliest_seq`` (required), for ``reason``."""
    r = _Reader(data, runtime_id=runtime_id, worker_id=worker_id, what="reset", scrubber=scrubber)
    earliest = r.get_int("earliest_seq")
    if earliest < 1:
        r.bad("earliest_seq")
    return StreamReset(
        reason=r.opt_text("reason") or RESET_HISTORY_EXPIRED, earliest_seq=earliest, epoch=r.opt_epoch()
    )


def _event_seq(value: Any, *, runtime_id: str, worker_id: str) -> int:
    """An event's seq that is not a plain int: a number sent as a string is taken, anything else is fatal."""
    seq = int_from(value)
    if seq is None or seq < 1:
        _bad(runtime_id, "event.seq", worker_id=worker_id)
    if type(value) is not int:
        field_notes.note(runtime_id, "event.seq", "converted", worker_id=worker_id)
    return seq


def _event_kind(value: Any, event_name: str, *, runtime_id: str, worker_id: str) -> str:
    """An event's kind when its data does not name it as its ``event:`` line does: the data's name if it is
    a string (the payload is the authority), else the ``event:`` line's, else the SSE default."""
    if isinstance(value, str) and value:
        if event_name not in ("", DEFAULT_EVENT_KIND):
            field_notes.note(runtime_id, "event.event", "converted", worker_id=worker_id)
        return value
    if value is not None:
        field_notes.note(runtime_id, "event.event", "dropped", worker_id=worker_id)
    return event_name or DEFAULT_EVENT_KIND


def _event_payload(value: Any, *, runtime_id: str, worker_id: str) -> dict[str, Any]:
    if value is not None:
        field_notes.note(runtime_id, "event.data", "converted", worker_id=worker_id)
    return payload_from(value)


def _event_ts(value: Any, *, runtime_id: str, worker_id: str) -> float | None:
    if type(value) is int:
        return float(value)
    seconds = seconds_from(value)
    field_notes.note(runtime_id, "event.ts", "dropped" if seconds is None else "converted", worker_id=worker_id)
    return seconds


def parse_event(
    event_name: str, data: Any, *, runtime_id: str, worker_id: str, scrubber: Scrubber = GENERIC
) -> WorkerEvent | StreamReset:
    """One SSE event (its ``event:`` name and ``data:`` object) of ``worker_id``'s stream; the payload is
    agent content (known secrets redacted), the kind metadata.

    Fatal only: data that is not an object, a ``seq`` that is missing or not an integer ≥ 1, a ``worker_id``
    naming another worker. Everything else is normalised (see the module docstring).
    """
    if type(data) is not dict:
        _bad(runtime_id, "event", worker_id=worker_id)
    if event_name == RESET_EVENT:
        return parse_reset(data, runtime_id=runtime_id, worker_id=worker_id, scrubber=scrubber)
    seq = data.get("seq")
    if type(seq) is not int or seq < 1:
        seq = _event_seq(seq, runtime_id=runtime_id, worker_id=worker_id)
    reported = data.get("worker_id")
    if reported != worker_id and reported is not None:
        _bad(runtime_id, "event.worker_id", worker_id=worker_id)
    kind = data.get("event")
    if type(kind) is not str or not kind or (kind != event_name and event_name not in ("", DEFAULT_EVENT_KIND)):
        kind = _event_kind(kind, event_name, runtime_id=runtime_id, worker_id=worker_id)
    payload = data.get("data")
    if type(payload) is not dict:
        payload = _event_payload(payload, runtime_id=runtime_id, worker_id=worker_id)
    payload = dict(scrubber.content_tree(payload))
    if kind not in KNOWN_EVENT_KINDS:
        kind = scrubber.text(kind)
    ts = data.get("ts")
    # ts - ts is 0.0 for every finite float (NaN and infinities give NaN): browsers get a number or null.
    if ts is not None and (type(ts) is not float or ts - ts != 0.0):
        ts = _event_ts(ts, runtime_id=runtime_id, worker_id=worker_id)
    return WorkerEvent(runtime_id=runtime_id, worker_id=worker_id, seq=seq, event=kind, data=payload, ts=ts)
