"""Protocol JSON -> the frozen dataclasses of ``runtimes.types``; shared by the remote and embedded handles.

Pure functions. Every shape mismatch becomes one ``RuntimeBadResponse`` naming only ids; what was wrong
goes to the log (field names only, never values). Fields a runtime leaves out that the protocol marks
optional (older runtimes) become ``None``, never an error.

This is the edge where runtime text is scrubbed (runtimes/scrub.py), so nothing downstream — serializers,
the relay, its buffer, the channel layer — ever holds it raw: metadata (status, profile, intent, role,
capabilities, reset reasons, event kinds) gets the full scrub, agent content (transcript content, event
payloads) known-secret redaction only. Each function takes the runtime's ``scrubber`` (its own address).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from runtimes.errors import RuntimeBadResponse
from runtimes.scrub import GENERIC, Scrubber
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
from worker_runtime.model import EVENT_KINDS

logger = logging.getLogger(__name__)

RESET_EVENT = "reset"
# Event kinds of the protocol (and SSE's default name): their names need no scrub (the hot path skips it).
KNOWN_EVENT_KINDS = EVENT_KINDS | {"message"}


def _bad(runtime_id: str, what: str, *, worker_id: str | None = None, message: str | None = None) -> NoReturn:
    logger.warning(
        "runtimes.parse.bad_shape", extra={"runtime_id": runtime_id, "worker_id": worker_id, "field": what}
    )
    raise RuntimeBadResponse(runtime_id=runtime_id, worker_id=worker_id, message=message)


class _Reader:
    """Typed field access on one JSON object; any mismatch raises RuntimeBadResponse."""

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

    def text(self, key: str) -> str:
        """A metadata string, scrubbed."""
        return self.scrubber.text(self.get_str(key))

    def opt_text(self, key: str) -> str | None:
        """An optional metadata string, scrubbed."""
        return self.scrubber.opt_text(self.get_opt_str(key))

    def event_id(self, key: str) -> int | str | None:
        """An optional event id (a string one is metadata, scrubbed)."""
        value = self.get_opt_event_id(key)
        return self.scrubber.text(value) if isinstance(value, str) else value

    def child(self, body: Any, what: str) -> _Reader:
        """A reader of a nested object with the same ids and scrub."""
        return _Reader(
            body, runtime_id=self.runtime_id, worker_id=self.worker_id, what=what, scrubber=self.scrubber
        )

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
        worker_count=r.get_opt_int("worker_count"),
        active_worker_count=r.get_opt_int("active_worker_count"),
        stopped_worker_count=r.get_opt_int("stopped_worker_count"),
        cancelled_worker_count=r.get_opt_int("cancelled_worker_count"),
        event_streams_open=r.get_opt_int("event_streams_open"),
        capabilities=_capabilities(r),
    )


def _capabilities(r: _Reader) -> Capabilities:
    limits_body = r.get_opt_dict("limits")
    limits = r.child(limits_body or {}, "limits")
    profiles: tuple[ProfileInfo, ...] | None = None
    if r.body.get("profiles") is not None:
        items = []
        for item in r.get_list("profiles"):
            p = r.child(item, "profiles[]")
            items.append(ProfileInfo(name=p.text("name"), description=p.opt_text("description") or ""))
        profiles = tuple(items)
    version = r.body.get("protocol_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
        r.bad("protocol_version")
    return Capabilities(
        protocol_version=None if version is None else r.scrubber.text(str(version)),
        backend=r.opt_text("backend"),
        profiles=profiles,
        default_profile=r.opt_text("default_profile"),
        max_transcript_items=limits.get_opt_int("max_transcript_projection_items"),
        max_input_bytes=limits.get_opt_int("max_input_bytes"),
    )


def _profile_name(r: _Reader) -> str | None:
    value = r.body.get("profile")
    if value is None or isinstance(value, str):
        return r.scrubber.opt_text(value)
    if isinstance(value, dict):  # a selector {"kind", "value"?}
        selector = r.child(value, "profile")
        return selector.opt_text("value") or selector.opt_text("kind")
    r.bad("profile")


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
        intent=dict(scrubber.tree(r.get_opt_dict("intent") or {})),
        transcript_len=r.get_opt_int("transcript_len"),
        last_seq=r.get_opt_int("last_seq"),
        created_at=r.get_opt_float("created_at"),
        updated_at=r.get_opt_float("updated_at"),
        reason=r.opt_text("reason"),
        exit_code=r.get_opt_int("exit_code"),
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
        transcript_sequence=r.get_opt_int("transcript_sequence"),
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
        next_start=r.get_opt_int("next_start"),
    )


def _seq(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_event(
    event_name: str, data: Any, *, runtime_id: str, worker_id: str, scrubber: Scrubber = GENERIC
) -> WorkerEvent | StreamReset:
    """One SSE event (its ``event:`` name and ``data:`` object) of ``worker_id``'s stream; the payload is
    agent content (known secrets redacted), the kind metadata."""
    r = _Reader(data, runtime_id=runtime_id, worker_id=worker_id, what="event", scrubber=scrubber)
    if event_name == RESET_EVENT:
        earliest = _seq(r.body.get("earliest_seq"))
        if earliest is None or earliest < 1:
            r.bad("earliest_seq")
        return StreamReset(reason=r.opt_text("reason") or "history_expired", earliest_seq=earliest)
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
        event=kind if kind in KNOWN_EVENT_KINDS else scrubber.text(kind),
        data=dict(scrubber.content_tree(payload)) if payload is not None else {},
        ts=r.get_opt_float("ts"),
    )
