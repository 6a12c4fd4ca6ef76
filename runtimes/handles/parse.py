"""Protocol JSON -> the frozen dataclasses of ``runtimes.types``; shared by the remote and embedded handles.

Pure functions. Every shape mismatch becomes one ``RuntimeBadResponse`` naming only ids; what was wrong
goes to the log (field names only, never values). Fields a runtime leaves out that the protocol marks
optional (older runtimes) become ``None``, never an error.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from runtimes.errors import RuntimeBadResponse, scrub
from runtimes.types import (
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

logger = logging.getLogger(__name__)

RESET_EVENT = "reset"


def _bad(runtime_id: str, what: str, *, worker_id: str | None = None, message: str | None = None) -> NoReturn:
    logger.warning(
        "runtimes.parse.bad_shape", extra={"runtime_id": runtime_id, "worker_id": worker_id, "field": what}
    )
    raise RuntimeBadResponse(runtime_id=runtime_id, worker_id=worker_id, message=message)


class _Reader:
    """Typed field access on one JSON object; any mismatch raises RuntimeBadResponse."""

    def __init__(self, body: Any, *, runtime_id: str, worker_id: str | None, what: str) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.what = what
        if not isinstance(body, dict):
            self.bad(what)
        self.body: dict[str, Any] = body

    def bad(self, field: str) -> NoReturn:
        _bad(self.runtime_id, f"{self.what}.{field}" if field != self.what else field, worker_id=self.worker_id)

    def get_str(self, key: str) -> str:
        value = self.body.get(key)
        if not isinstance(value, str):
            self.bad(key)
        return value

    def get_opt_str(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is not None and not isinstance(value, str):
            self.bad(key)
        return value

    def get_int(self, key: str) -> int:
        value = self.body.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad(key)
        return value

    def get_opt_int(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad(key)
        return value

    def get_opt_float(self, key: str) -> float | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.bad(key)
        return float(value)

    def get_opt_event_id(self, key: str) -> int | str | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.bad(key)
        return value

    def get_opt_dict(self, key: str) -> dict[str, Any] | None:
        value = self.body.get(key)
        if value is not None and not isinstance(value, dict):
            self.bad(key)
        return value

    def get_list(self, key: str) -> list[Any]:
        value = self.body.get(key)
        if not isinstance(value, list):
            self.bad(key)
        return value


def unwrap(body: Any, key: str, *, runtime_id: str, worker_id: str | None = None) -> Any:
    """The payload of a protocol envelope such as ``{"worker": {...}}``."""
    if not isinstance(body, dict) or key not in body:
        _bad(runtime_id, f"envelope.{key}", worker_id=worker_id)
    return body[key]


def _check_ref(reader: _Reader, *, worker_id: str | None) -> str:
    """The worker_id a body names (``worker_ref`` or a top-level ``worker_id``), checked against the asked ids."""
    ref = reader.get_opt_dict("worker_ref")
    ref_reader = (
        _Reader(ref, runtime_id=reader.runtime_id, worker_id=worker_id, what="worker_ref") if ref else None
    )
    reported_runtime = ref_reader.get_opt_str("runtime_id") if ref_reader else None
    top_runtime = reader.get_opt_str("runtime_id")
    for value in (reported_runtime, top_runtime):
        if value is not None and value != reader.runtime_id:
            _bad(reader.runtime_id, f"{reader.what}.runtime_id", worker_id=worker_id)
    reported_worker = ref_reader.get_opt_str("worker_id") if ref_reader else None
    top_worker = reader.get_opt_str("worker_id")
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


def parse_summary(body: Any, *, runtime_id: str) -> RuntimeSummary:
    """A RuntimeSummary object (the inside of ``{"runtime": ...}``); its runtime_id must be ``runtime_id``."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=None, what="runtime")
    reported = r.get_str("runtime_id")
    if reported != runtime_id:
        logger.warning(
            "runtimes.parse.identity_mismatch",
            extra={"runtime_id": runtime_id, "reported_runtime_id": scrub(reported)[:120]},
        )
        raise RuntimeBadResponse(
            runtime_id=runtime_id,
            message=f"runtime {runtime_id} reported an identity that does not match its configuration",
        )
    return RuntimeSummary(
        runtime_id=runtime_id,
        display_name=r.get_opt_str("display_name") or runtime_id,
        status=r.get_str("status"),
        worker_count=r.get_opt_int("worker_count"),
        active_worker_count=r.get_opt_int("active_worker_count"),
        stopped_worker_count=r.get_opt_int("stopped_worker_count"),
        cancelled_worker_count=r.get_opt_int("cancelled_worker_count"),
        event_streams_open=r.get_opt_int("event_streams_open"),
        capabilities=_capabilities(r),
    )


def _capabilities(r: _Reader) -> Capabilities:
    limits_body = r.get_opt_dict("limits")
    limits = _Reader(limits_body or {}, runtime_id=r.runtime_id, worker_id=None, what="limits")
    profiles: tuple[ProfileInfo, ...] | None = None
    if r.body.get("profiles") is not None:
        items = []
        for item in r.get_list("profiles"):
            p = _Reader(item, runtime_id=r.runtime_id, worker_id=None, what="profiles[]")
            items.append(ProfileInfo(name=p.get_str("name"), description=p.get_opt_str("description") or ""))
        profiles = tuple(items)
    version = r.body.get("protocol_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
        r.bad("protocol_version")
    return Capabilities(
        protocol_version=None if version is None else str(version),
        backend=r.get_opt_str("backend"),
        profiles=profiles,
        default_profile=r.get_opt_str("default_profile"),
        max_transcript_items=limits.get_opt_int("max_transcript_projection_items"),
        max_input_bytes=limits.get_opt_int("max_input_bytes"),
    )


def _profile_name(r: _Reader) -> str | None:
    value = r.body.get("profile")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):  # a selector {"kind", "value"?}
        selector = _Reader(value, runtime_id=r.runtime_id, worker_id=r.worker_id, what="profile")
        return selector.get_opt_str("value") or selector.get_opt_str("kind")
    r.bad("profile")


def parse_worker(body: Any, *, runtime_id: str, worker_id: str | None = None) -> WorkerDetail:
    """A WorkerDetail/WorkerSummary object; when ``worker_id`` is given the body must name that worker."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=worker_id, what="worker")
    found = _check_ref(r, worker_id=worker_id)
    r.worker_id = found
    return WorkerDetail(
        runtime_id=runtime_id,
        worker_id=found,
        status=r.get_str("status"),
        profile=_profile_name(r),
        intent=dict(r.get_opt_dict("intent") or {}),
        transcript_len=r.get_opt_int("transcript_len"),
        last_seq=r.get_opt_int("last_seq"),
        created_at=r.get_opt_float("created_at"),
        updated_at=r.get_opt_float("updated_at"),
        reason=r.get_opt_str("reason"),
        exit_code=r.get_opt_int("exit_code"),
    )


def parse_workers(body: Any, *, runtime_id: str) -> list[WorkerDetail]:
    """The list of ``{"workers": [...]}``."""
    if not isinstance(body, list):
        _bad(runtime_id, "workers")
    return [parse_worker(item, runtime_id=runtime_id) for item in body]


def parse_ack(body: Any, *, runtime_id: str, worker_id: str) -> Ack:
    """The ``ack`` of input/stop/cancel; it must name the worker the command went to."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=worker_id, what="ack")
    _check_ref(r, worker_id=worker_id)
    return Ack(
        runtime_id=runtime_id,
        worker_id=worker_id,
        status=r.get_str("status"),
        transcript_sequence=r.get_opt_int("transcript_sequence"),
        event_id=r.get_opt_event_id("event_id"),
    )


def parse_transcript(body: Any, *, runtime_id: str, worker_id: str) -> TranscriptPage:
    """The ``transcript`` page of one worker."""
    r = _Reader(body, runtime_id=runtime_id, worker_id=worker_id, what="transcript")
    _check_ref(r, worker_id=worker_id)
    items = []
    for raw in r.get_list("items"):
        item = _Reader(raw, runtime_id=runtime_id, worker_id=worker_id, what="transcript.items[]")
        items.append(
            TranscriptItem(
                sequence=item.get_int("sequence"),
                role=item.get_str("role"),
                content=item.get_str("content"),
                event_id=item.get_opt_event_id("event_id"),
            )
        )
    return TranscriptPage(
        runtime_id=runtime_id,
        worker_id=worker_id,
        start=r.get_int("start"),
        limit=r.get_int("limit"),
        total_items=r.get_int("total_items"),
        items=tuple(items),
        next_start=r.get_opt_int("next_start"),
    )


def _seq(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_event(event_name: str, data: Any, *, runtime_id: str, worker_id: str) -> WorkerEvent | StreamReset:
    """One SSE event (its ``event:`` name and ``data:`` object) of ``worker_id``'s stream."""
    if type(data) is dict and event_name != RESET_EVENT:
        # The shape every event of a well-behaved runtime has, checked in one pass (the relay's hot path);
        # anything else takes the field-by-field path below, which says what was wrong.
        seq, kind, payload, ts = data.get("seq"), data.get("event"), data.get("data"), data.get("ts")
        reported = data.get("worker_id")
        if (
            type(seq) is int
            and seq >= 1
            and type(kind) is str
            and (reported is None or reported == worker_id)
            and (event_name == kind or event_name in ("", "message"))
            and (payload is None or type(payload) is dict)
            and (ts is None or type(ts) is float or type(ts) is int)
        ):
            return WorkerEvent(
                runtime_id,
                worker_id,
                seq,
                kind,
                dict(payload) if payload else {},
                None if ts is None else float(ts),
            )
    r = _Reader(data, runtime_id=runtime_id, worker_id=worker_id, what="event")
    if event_name == RESET_EVENT:
        earliest = _seq(r.body.get("earliest_seq"))
        if earliest is None or earliest < 1:
            r.bad("earliest_seq")
        return StreamReset(reason=r.get_opt_str("reason") or "history_expired", earliest_seq=earliest)
    seq = _seq(r.body.get("seq"))
    if seq is None or seq < 1:
        r.bad("seq")
    reported_worker = r.get_opt_str("worker_id")
    if reported_worker is not None and reported_worker != worker_id:
        r.bad("worker_id")
    kind = r.get_opt_str("event")
    if kind is None:
        if not event_name or event_name == "message":
            r.bad("event")
        kind = event_name
    elif event_name not in ("", "message", kind):
        r.bad("event")
    payload = r.get_opt_dict("data")
    return WorkerEvent(
        runtime_id=runtime_id,
        worker_id=worker_id,
        seq=seq,
        event=kind,
        data=dict(payload) if payload is not None else {},
        ts=r.get_opt_float("ts"),
    )
