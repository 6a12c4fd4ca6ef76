"""Tolerant parsing at the edge (docs/runtime-protocol.md, *Tolerant fields*), over ``responses`` mocks.

Only what the Backend cannot do without is fatal: an event's seq and worker_id, the identity and status of a
runtime, worker or ack, a transcript item's sequence, role and content. Optional fields of unexpected types
are normalised or dropped with one log line (naming the field and the runtime, rate-limited); a runtime that
speaks yoi's own v1 shapes (create answered 200, the short summary, string timestamps) works as it is.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.errors import RuntimeBadResponse
from runtimes.handles import parse
from runtimes.handles.parse import field_notes, int_from, parse_event, parse_summary, parse_worker, seconds_from
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.types import StreamReset, WorkerEvent, WorkerSpec
from tests.runtimes import test_remote_mapping as mapping
from tests.runtimes.test_remote_mapping import RID, WID, assert_calls, canned, register, sse, url

# The remote mapping suite's fixtures (a mocked transport, a client, a verified handle, the log leak check).
rsps = mapping.rsps
client = mapping.client
handle = mapping.handle
_logs_never_leak = mapping._logs_never_leak

NOTE = "runtimes.parse.field_normalised"
TS_RFC3339 = datetime(2026, 12, 4, 2, 50, 53, 123000, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def _fresh_notes() -> Iterator[None]:
    """Every test starts with no field remembered as already logged."""
    field_notes.reset()
    yield
    field_notes.reset()


def notes(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """``(runtime_id, field, action)`` of every "field normalised" line logged."""
    return [
        (getattr(r, "runtime_id", ""), getattr(r, "field", ""), getattr(r, "action", ""))
        for r in caplog.records
        if r.getMessage() == NOTE
    ]


def register_sse(rsps: responses.RequestsMock, body: bytes, headers: dict[str, str] | None = None) -> None:
    rsps.add("GET", url(f"/v1/workers/{WID}/events"), body=body, content_type="text/event-stream", headers=headers)


def yoi_v1(name: str) -> bytes:
    return canned(f"yoi_v1/{name}")


# --------------------------------------------------------------------------------------------- events


def test_events_with_string_ts_string_numbers_extra_keys_and_no_ts_are_delivered_normalised(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    register_sse(rsps, sse("tolerated_fields.txt"))
    items = list(handle.open_events(WID, after=0))
    assert_calls(rsps, 1)
    events = [i for i in items if isinstance(i, WorkerEvent)]
    assert len(events) == len(items) == 6
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.event for e in events] == [
        "status",
        "text_delta",
        "text_delta",
        "text_delta",
        "tool_call",
        "worker_exited",
    ]
    assert events[0].ts == pytest.approx(TS_RFC3339)  # an RFC 3339 string
    assert events[1].ts == 1760000000.5  # a number sent as a string
    assert events[1].data == {"text": "a", "trace_id": "t-1"}  # extra keys in data are kept; "span" is not data
    assert events[2].ts is None  # no ts at all
    assert (events[3].worker_id, events[3].data, events[3].ts) == (WID, {"value": "plain text"}, 1760000001.0)
    assert events[4].ts is None  # "yesterday" is no timestamp: dropped
    assert all(isinstance(e.ts, float | None) for e in events)
    # One line per runtime and field: the later string ts and the dropped "yesterday" are rate-limited away.
    assert sorted(notes(caplog)) == [
        (RID, "event.data", "converted"),
        (RID, "event.seq", "converted"),
        (RID, "event.ts", "converted"),
    ]


def test_yoi_v1_event_stream_with_string_timestamps_works_as_it_is(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle
) -> None:
    register_sse(rsps, sse("yoi_v1_events.txt"))
    events = [i for i in handle.open_events(WID, after=0) if isinstance(i, WorkerEvent)]
    assert [(e.seq, e.event) for e in events] == [(1, "status"), (2, "user_message"), (3, "worker_exited")]
    assert [e.ts for e in events] == pytest.approx([TS_RFC3339, TS_RFC3339 + 0.877, TS_RFC3339 + 2.377])


def test_an_event_without_seq_is_a_typed_failure_after_the_good_ones(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    register_sse(rsps, sse("missing_seq.txt"))
    seen: list[WorkerEvent | StreamReset] = []
    with pytest.raises(RuntimeBadResponse) as info:
        seen.extend(handle.open_events(WID, after=0))
    assert [getattr(i, "seq", None) for i in seen] == [1]
    assert (info.value.code, info.value.http_status, info.value.worker_id) == ("runtime_bad_response", 502, WID)
    bad = [r for r in caplog.records if r.getMessage() == "runtimes.parse.bad_shape"]
    assert [getattr(r, "field", None) for r in bad] == ["event.seq"]


@pytest.mark.parametrize(
    "seq", [None, "", "3.5", "three", True, 2.5, 0, -1, "0", [1], {"n": 1}], ids=lambda v: repr(v)
)
def test_a_missing_or_non_integer_seq_is_fatal(seq: Any) -> None:
    data: dict[str, Any] = {"worker_id": WID, "event": "status", "data": {}, "ts": 1.0}
    if seq is not None:
        data["seq"] = seq
    with pytest.raises(RuntimeBadResponse):
        parse_event("status", data, runtime_id=RID, worker_id=WID)


@pytest.mark.parametrize("worker_id", ["w-other", 7, "", ["w-0001"]], ids=repr)
def test_a_foreign_worker_id_is_fatal(worker_id: Any) -> None:
    data = {"seq": 1, "worker_id": worker_id, "event": "status", "data": {}, "ts": 1.0}
    with pytest.raises(RuntimeBadResponse):
        parse_event("status", data, runtime_id=RID, worker_id=WID)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1760000000.25, 1760000000.25),
        (1760000000, 1760000000.0),
        ("1760000000.25", 1760000000.25),
        ("2026-12-04T02:50:53.123Z", TS_RFC3339),
        ("2026-12-04t02:50:53.123z", TS_RFC3339),
        ("2026-12-04T11:50:53.123+09:00", TS_RFC3339),
        ("2026-12-04T02:50:53.123", TS_RFC3339),  # no offset: taken as UTC
        ("not a time", None),
        (True, None),
        (float("nan"), None),
        (float("inf"), None),
        ("1e999", None),
        ({"seconds": 1}, None),
        (None, None),
    ],
    ids=repr,
)
def test_ts_reaches_browsers_as_seconds_or_null(ts: Any, expected: float | None) -> None:
    data = {"seq": 1, "worker_id": WID, "event": "status", "data": {}, "ts": ts}
    event = parse_event("status", data, runtime_id=RID, worker_id=WID)
    assert isinstance(event, WorkerEvent)
    assert event.ts == (pytest.approx(expected) if expected is not None else None)


def test_event_kind_comes_from_the_data_then_the_event_line_then_the_sse_default() -> None:
    def kind(name: str, value: Any) -> str:
        data = {"seq": 1, "data": {}, **({} if value is None else {"event": value})}
        event = parse_event(name, data, runtime_id=RID, worker_id=WID)
        assert isinstance(event, WorkerEvent)
        return event.event

    assert kind("text_delta", "text_delta") == "text_delta"
    assert kind("message", "text_delta") == "text_delta"
    assert kind("text_delta", None) == "text_delta"
    assert kind("status", "text_delta") == "text_delta"  # the payload names it: it wins over the event line
    assert kind("tool_call", 5) == "tool_call"
    assert kind("", None) == "message"


def test_a_well_typed_event_logs_nothing_and_copies_its_data(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runtimes")
    payload = {"text": "x"}
    data = {"seq": 9, "worker_id": WID, "event": "text_delta", "data": payload, "ts": 1.5}
    event = parse_event("text_delta", data, runtime_id=RID, worker_id=WID)
    assert event == WorkerEvent(runtime_id=RID, worker_id=WID, seq=9, event="text_delta", data=payload, ts=1.5)
    assert isinstance(event, WorkerEvent) and event.data is not payload
    assert caplog.records == []


def test_a_bad_field_is_logged_once_a_minute_per_runtime_and_field(caplog: pytest.LogCaptureFixture) -> None:
    for seq in range(1, 201):
        data = {"seq": seq, "worker_id": WID, "event": "text_delta", "data": {}, "ts": "2031-05-06T07:08:09Z"}
        parse_event("text_delta", data, runtime_id=RID, worker_id=WID)
    parse_event("text_delta", {"seq": 1, "data": {}, "ts": "soon"}, runtime_id="rt-other", worker_id=WID)
    parse_event("text_delta", {"seq": "1", "data": {}}, runtime_id=RID, worker_id=WID)
    assert notes(caplog) == [
        (RID, "event.ts", "converted"),
        ("rt-other", "event.ts", "dropped"),
        (RID, "event.seq", "converted"),
    ]
    for record in caplog.records:  # names the field and the runtime, never the value
        assert "2031-05-06" not in record.getMessage() + repr(record.__dict__)


def test_the_rate_limit_tells_how_many_lines_it_held_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(parse.time, "monotonic", lambda: clock[0])
    for _ in range(5):
        parse_event("status", {"seq": 1, "data": {}, "ts": "x"}, runtime_id=RID, worker_id=WID)
    clock[0] += parse.NOTE_INTERVAL_SECONDS
    parse_event("status", {"seq": 1, "data": {}, "ts": "x"}, runtime_id=RID, worker_id=WID)
    suppressed = [getattr(r, "suppressed", None) for r in caplog.records if r.getMessage() == NOTE]
    assert suppressed == [0, 4]


def test_reset_events_carry_reason_and_epoch(rsps: responses.RequestsMock, handle: RemoteRuntimeHandle) -> None:
    register_sse(rsps, sse("cursor_ahead.txt"), headers={"Yoi-Stream-Epoch": "9b1d0c2e7f3a4e58"})
    stream = handle.open_events(WID, after=181)
    assert stream.epoch == "9b1d0c2e7f3a4e58"
    items = list(stream)
    assert items[0] == StreamReset(reason="cursor_ahead", earliest_seq=1, epoch="9b1d0c2e7f3a4e58")
    assert [i.seq for i in items[1:] if isinstance(i, WorkerEvent)] == [1, 2]
    reset = parse_event("reset", {"earliest_seq": "4"}, runtime_id=RID, worker_id=WID)
    assert reset == StreamReset(reason="history_expired", earliest_seq=4, epoch=None)
    with pytest.raises(RuntimeBadResponse):
        parse_event("reset", {"reason": "cursor_ahead"}, runtime_id=RID, worker_id=WID)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("e-1", "e-1"), ("has space", None), ("x" * 129, None), ("<script>", None)],
    ids=repr,
)
def test_the_stream_epoch_header_is_taken_only_when_it_is_a_short_token(
    rsps: responses.RequestsMock, handle: RemoteRuntimeHandle, header: str | None, expected: str | None
) -> None:
    register_sse(rsps, sse("echo_worker.txt"), headers=None if header is None else {"Yoi-Stream-Epoch": header})
    stream = handle.open_events(WID, after=0)
    assert stream.epoch == expected
    stream.close()


# --------------------------------------------------------------------------------------------- objects


def test_worker_detail_normalises_or_drops_optional_fields(caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "worker_id": WID,
        "status": "running",
        "profile": 3,
        "intent": "assistant",
        "transcript_len": "2",
        "last_seq": 7.0,
        "created_at": "2026-12-04T02:50:53.123Z",
        "updated_at": "later",
        "reason": {"why": "?"},
        "exit_code": "0",
        "epoch": "not an epoch!",
        "unknown": {"nested": True},
    }
    worker = parse_worker(body, runtime_id=RID, worker_id=WID)
    assert (worker.status, worker.profile, worker.intent) == ("running", None, {})
    assert (worker.transcript_len, worker.last_seq, worker.exit_code) == (2, 7, 0)
    assert worker.created_at == pytest.approx(TS_RFC3339)
    assert (worker.updated_at, worker.reason, worker.epoch) == (None, None, None)
    assert sorted(field for _, field, _ in notes(caplog)) == [
        "worker.created_at",
        "worker.epoch",
        "worker.exit_code",
        "worker.intent",
        "worker.last_seq",
        "worker.profile",
        "worker.reason",
        "worker.transcript_len",
        "worker.updated_at",
    ]


@pytest.mark.parametrize(
    "change",
    [{"status": None}, {"status": 3}, {"worker_id": 5}, {"worker_id": "w-other"}, {"runtime_id": "rt-else"}],
    ids=repr,
)
def test_worker_identity_and_status_stay_fatal(change: dict[str, Any]) -> None:
    body = {"worker_id": WID, "status": "running", **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(RuntimeBadResponse):
        parse_worker(body, runtime_id=RID, worker_id=WID)


def test_summary_normalises_counts_limits_profiles_and_version(caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "runtime_id": RID,
        "status": "running",
        "display_name": 42,
        "worker_count": "3",
        "active_worker_count": "many",
        "event_streams_open": 1.0,
        "limits": {"max_transcript_projection_items": "256", "max_input_bytes": None},
        "profiles": [{"name": "builtin:echo", "description": 5}, {"description": "no name"}, "junk"],
        "protocol_version": 1,
    }
    summary = parse_summary(body, runtime_id=RID)
    assert (summary.display_name, summary.worker_count, summary.active_worker_count) == (RID, 3, None)
    assert summary.event_streams_open == 1
    caps = summary.capabilities
    assert (caps.protocol_version, caps.max_transcript_items, caps.max_input_bytes) == ("1", 256, None)
    assert caps.profiles is not None and [(p.name, p.description) for p in caps.profiles] == [("builtin:echo", "")]
    assert parse_summary({"runtime_id": RID, "status": "running", "limits": "?"}, runtime_id=RID).capabilities == (
        parse_summary({"runtime_id": RID, "status": "running"}, runtime_id=RID).capabilities
    )
    assert {field for _, field, _ in notes(caplog)} >= {"runtime.worker_count", "runtime.display_name"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), ("7", 7), (" 7 ", 7), ("-3", -3), (7.0, 7), (7.5, None), ("7.0", None), (True, None), ("", None)],
    ids=repr,
)
def test_int_from(value: Any, expected: int | None) -> None:
    assert int_from(value) == expected


def test_seconds_from_numbers_and_strings() -> None:
    assert seconds_from(0) == 0.0
    assert seconds_from("-1.5e3") == -1500.0
    assert seconds_from("2026-12-04") == datetime(2026, 12, 4, tzinfo=UTC).timestamp()
    assert seconds_from([]) is None


# --------------------------------------------------------------------------------------------- yoi's own v1


def test_a_runtime_speaking_yoi_v1_shapes_works_with_no_adapter(
    rsps: responses.RequestsMock, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = RemoteRuntimeHandle(RID, client)  # checks its identity against the short summary first
    rsps.add("GET", url("/v1/runtime"), body=yoi_v1("runtime.json"), content_type="application/json")
    register(rsps, "create", body=yoi_v1("worker_created.json"), status=200)
    register(rsps, "get", body=yoi_v1("worker.json"))
    register(rsps, "list", body=yoi_v1("workers.json"))
    register(rsps, "input", body=yoi_v1("ack_input.json"))
    register(rsps, "transcript", body=yoi_v1("transcript.json"))

    created = fresh.create_worker(WorkerSpec(profile="builtin:echo"))
    assert (created.worker_id, created.status, created.profile, created.last_seq) == (
        "w-new",
        "running",
        "builtin:echo",
        1,
    )
    assert created.created_at == pytest.approx(TS_RFC3339)
    assert created.epoch is None  # a runtime without epochs
    detail = fresh.get_worker(WID)
    assert (detail.profile, detail.transcript_len, detail.last_seq) == ("runtime_default", 2, 7)
    assert detail.intent == {"kind": "assistant", "label": "kept as given"}
    assert detail.updated_at == pytest.approx(TS_RFC3339 + 6.877)
    assert [w.worker_id for w in fresh.list_workers()] == [WID]
    ack = fresh.send_input(WID, content="hello")
    assert (ack.transcript_sequence, ack.event_id) == (3, "8")
    page = fresh.transcript(WID, start=0, limit=2)
    assert (page.total_items, [i.sequence for i in page.items], page.items[1].event_id) == (2, [1, 2], "7")
    summary = fresh.summary()
    assert (summary.capabilities.protocol_version, summary.capabilities.profiles) == ("1", None)
    assert summary.event_streams_open is None
    assert json.loads(rsps.calls[1].request.body or b"") == {
        "intent": {"kind": "assistant"},
        "profile": {"kind": "builtin", "value": "builtin:echo"},
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
EVENT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "seq": JSON | st.integers(min_value=1) | st.integers(min_value=1).map(str),
        "worker_id": JSON | st.just(WID),
        "event": JSON | st.sampled_from(["text_delta", "status", ""]),
        "data": JSON,
        "ts": JSON | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        "extra": JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["", "message", "text_delta", "reset", "status"]), data=EVENT_FIELDS)
def test_any_event_either_parses_to_browser_safe_fields_or_is_a_typed_failure(
    name: str, data: dict[str, Any]
) -> None:
    try:
        item = parse_event(name, data, runtime_id=RID, worker_id=WID)
    except RuntimeBadResponse:
        return
    if isinstance(item, StreamReset):
        assert isinstance(item.earliest_seq, int) and item.earliest_seq >= 1 and isinstance(item.reason, str)
        return
    assert type(item.seq) is int and item.seq >= 1
    assert item.worker_id == WID and isinstance(item.event, str) and item.event
    assert isinstance(item.data, dict)
    assert item.ts is None or (type(item.ts) is float and math.isfinite(item.ts))
