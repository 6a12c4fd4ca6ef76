"""The runtime core over the memory store: status machine, builtins, validation, transcript, subscribe."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.worker_runtime.helpers import (
    ASSISTANT,
    BURST,
    ECHO,
    Collector,
    agent_profile,
    assert_consecutive,
    config_with,
    create,
    events_of,
    kinds,
    open_runtime,
    wait_for_kind,
    wait_status,
    wait_until,
)
from worker_runtime.config import ProfileSpec, RuntimeConfig
from worker_runtime.core import WorkerRuntime
from worker_runtime.errors import (
    InvalidRequest,
    LimitTooLarge,
    PayloadTooLarge,
    RuntimeApiError,
    RuntimeStopped,
    WorkerExists,
    WorkerNotFound,
    WorkerNotRunning,
)
from worker_runtime.model import Event

# An echo that takes 4 x 5 s per input: only an interruption ends its run quickly.
SLOW_ECHO_OPTIONS = {"delay_ms": 5000}


@pytest.fixture
def runtime() -> Iterator[WorkerRuntime]:
    rt = open_runtime()
    yield rt
    rt.close()


def answered(runtime: WorkerRuntime, worker_id: str, content: str, count: int = 1) -> list[Event]:
    """Send one input and wait for the worker's ``count``-th text_done."""
    runtime.send_input(worker_id, {"kind": "user", "content": content})
    return wait_for_kind(runtime, worker_id, "text_done", count)


# ------------------------------------------------------------------------------------------ echo


def test_create_starts_a_running_worker_with_a_status_event(runtime: WorkerRuntime) -> None:
    detail = create(runtime, worker_id="echo-1")

    assert detail["worker_id"] == "echo-1"
    assert detail["worker_ref"] == {"runtime_id": "rt-test", "worker_id": "echo-1"}
    assert detail["status"] == "running"
    assert detail["profile"] == "builtin:echo"
    assert detail["intent"] == ASSISTANT
    assert (detail["transcript_len"], detail["last_seq"]) == (0, 1)
    (event,) = events_of(runtime, "echo-1")
    assert (event.seq, event.kind, event.data) == (1, "status", {"status": "running"})


def test_generated_worker_ids_are_valid_and_distinct(runtime: WorkerRuntime) -> None:
    ids = {create(runtime)["worker_id"] for _ in range(3)}

    assert len(ids) == 3
    assert all(i.startswith("w-") and len(i) == 18 for i in ids)


def test_echo_streams_text_deltas_then_text_done_and_transcript_matches_events(runtime: WorkerRuntime) -> None:
    wid = create(runtime, worker_id="echo-1")["worker_id"]

    ack = runtime.send_input(wid, {"kind": "user", "content": "hello world"})
    events = wait_for_kind(runtime, wid, "text_done")

    assert kinds(events) == ["status", "user_message"] + ["text_delta"] * 4 + ["text_done"]
    assert_consecutive(events, 1, 7)
    user, *deltas, done = events[1:]
    assert user.data == {"content": "hello world", "transcript_sequence": 1, "kind": "user"}
    assert "".join(d.data["text"] for d in deltas) == "echo: hello world"
    assert done.data == {"text": "echo: hello world", "transcript_sequence": 2}
    assert ack == {
        "worker_ref": {"runtime_id": "rt-test", "worker_id": wid},
        "status": "running",
        "transcript_sequence": 1,
        "event_id": user.seq,
    }
    page = runtime.transcript(wid)
    assert page["items"] == [
        {"sequence": 1, "role": "user", "content": "hello world", "event_id": user.seq},
        {"sequence": 2, "role": "assistant", "content": "echo: hello world", "event_id": done.seq},
    ]
    assert runtime.get_worker(wid)["last_seq"] == 7
    assert runtime.get_worker(wid)["status"] == "running"


def test_system_input_is_recorded_with_the_system_role(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]

    runtime.send_input(wid, {"kind": "system", "content": "be brief"})
    events = wait_for_kind(runtime, wid, "text_done")

    assert events[1].data["kind"] == "system"
    assert runtime.transcript(wid)["items"][0]["role"] == "system"


def test_initial_input_is_answered(runtime: WorkerRuntime) -> None:
    wid = create(runtime, initial_input="first words")["worker_id"]

    wait_for_kind(runtime, wid, "text_done")

    items = runtime.transcript(wid)["items"]
    assert [(i["role"], i["content"]) for i in items] == [
        ("user", "first words"),
        ("assistant", "echo: first words"),
    ]


def test_events_carry_the_injected_clock_and_their_encoded_form() -> None:
    rt = WorkerRuntime(runtime_id="rt-clock", clock=lambda: 1234.5)
    rt.open()
    try:
        detail = create(rt, worker_id="w1")
        (event,) = events_of(rt, "w1")
    finally:
        rt.close()

    assert detail["created_at"] == detail["updated_at"] == 1234.5
    assert event.ts == 1234.5
    assert Event.from_json(event.text) == event
    assert event.to_json() == {
        "seq": 1,
        "worker_id": "w1",
        "event": "status",
        "data": {"status": "running"},
        "ts": 1234.5,
    }


# ------------------------------------------------------------------------------------------ burst


def test_burst_emits_count_events_then_text_done_and_run_end(runtime: WorkerRuntime) -> None:
    # 600 events span three emit batches.
    wid = create(runtime, BURST, options={"count": 600})["worker_id"]

    runtime.send_input(wid, {"content": "go"})
    events = wait_for_kind(runtime, wid, "run_end")

    deltas = [e for e in events if e.kind == "text_delta"]
    assert [d.data["i"] for d in deltas] == list(range(600))
    assert kinds(events[-2:]) == ["text_done", "run_end"]
    assert events[-2].data["text"] == "burst: 600 events"
    assert events[-1].data == {"count": 600}
    assert_consecutive(events, 1, 2 + 600 + 2)


def test_burst_default_count_is_100(runtime: WorkerRuntime) -> None:
    wid = create(runtime, {"kind": "builtin", "value": "burst"})["worker_id"]

    runtime.send_input(wid, {"content": "go"})
    events = wait_for_kind(runtime, wid, "run_end")

    assert kinds(events).count("text_delta") == 100


def test_burst_rate_paces_the_events(runtime: WorkerRuntime) -> None:
    wid = create(runtime, BURST, options={"count": 11, "rate": 50})["worker_id"]

    runtime.send_input(wid, {"content": "go"})
    events = wait_for_kind(runtime, wid, "run_end")

    deltas = [e for e in events if e.kind == "text_delta"]
    assert len(deltas) == 11
    # 10 intervals of 20 ms; allow for clock granularity, refuse "as fast as it can".
    assert deltas[-1].ts - deltas[0].ts >= 0.18


@pytest.mark.parametrize(
    ("profile", "options"),
    [
        (ECHO, {"bogus": 1}),
        (ECHO, {"delay_ms": -1}),
        (ECHO, {"delay_ms": 5001}),
        (ECHO, {"delay_ms": True}),
        (ECHO, {"delay_ms": "10"}),
        (BURST, {"count": 0}),
        (BURST, {"count": 1_000_001}),
        (BURST, {"rate": -1}),
        (BURST, {"rate": float("nan")}),
        (BURST, {"delay_ms": 10}),
        (ECHO, [1]),
        (ECHO, "fast"),
    ],
)
def test_create_rejects_invalid_options(runtime: WorkerRuntime, profile: dict[str, Any], options: Any) -> None:
    with pytest.raises(InvalidRequest):
        create(runtime, profile, options=options)

    assert runtime.list_workers() == []


def test_options_on_a_subprocess_profile_are_rejected() -> None:
    rt = open_runtime(config=config_with(agent_profile()))
    try:
        with pytest.raises(InvalidRequest, match="not supported"):
            create(rt, {"kind": "named", "value": "example-agent"}, options={"count": 1})
        assert rt.list_workers() == []
    finally:
        rt.close()


def test_bounds_are_inclusive(runtime: WorkerRuntime) -> None:
    create(runtime, ECHO, options={"delay_ms": 0})
    create(runtime, ECHO, options={"delay_ms": 5000})
    create(runtime, BURST, options={"count": 1, "rate": 0})
    create(runtime, BURST, options={"count": 1_000_000, "rate": 100_000})

    assert len(runtime.list_workers()) == 4


# ------------------------------------------------------------------------------------------ status machine


@pytest.mark.parametrize(("command", "final"), [("stop_worker", "stopped"), ("cancel_worker", "cancelled")])
def test_stop_and_cancel_end_a_running_worker(runtime: WorkerRuntime, command: str, final: str) -> None:
    wid = create(runtime)["worker_id"]
    answered(runtime, wid, "hi")
    before = runtime.get_worker(wid)["last_seq"]

    ack = getattr(runtime, command)(wid, reason="done here")

    events = events_of(runtime, wid)
    assert ack == {
        "worker_ref": {"runtime_id": "rt-test", "worker_id": wid},
        "status": final,
        "event_id": before + 2,
    }
    assert kinds(events[-2:]) == ["status", "worker_exited"]
    assert events[-2].data == {"status": final, "reason": "done here"}
    assert events[-1].data == {"status": final, "exit_code": None, "reason": "done here"}
    detail = runtime.get_worker(wid)
    assert (detail["status"], detail["reason"], detail["last_seq"]) == (final, "done here", before + 2)


@pytest.mark.parametrize("first", ["stop_worker", "cancel_worker"])
@pytest.mark.parametrize("second", ["stop_worker", "cancel_worker"])
def test_stop_and_cancel_are_noops_on_a_finished_worker(runtime: WorkerRuntime, first: str, second: str) -> None:
    wid = create(runtime)["worker_id"]
    final = getattr(runtime, first)(wid)["status"]
    log = events_of(runtime, wid)

    ack = getattr(runtime, second)(wid, reason="again")

    assert ack["status"] == final
    assert ack["event_id"] == log[-1].seq
    assert events_of(runtime, wid) == log
    assert runtime.get_worker(wid)["reason"] is None


@pytest.mark.parametrize("command", ["stop_worker", "cancel_worker"])
def test_input_to_a_finished_worker_raises_worker_not_running(runtime: WorkerRuntime, command: str) -> None:
    wid = create(runtime)["worker_id"]
    getattr(runtime, command)(wid)

    with pytest.raises(WorkerNotRunning) as info:
        runtime.send_input(wid, {"content": "anyone there?"})

    assert (info.value.code, info.value.status) == ("worker_not_running", 409)
    assert runtime.get_worker(wid)["transcript_len"] == 0


def test_cancel_interrupts_a_slow_run(runtime: WorkerRuntime) -> None:
    wid = create(runtime, options=SLOW_ECHO_OPTIONS)["worker_id"]
    runtime.send_input(wid, {"content": "take your time"})

    started = time.monotonic()
    ack = runtime.cancel_worker(wid)

    assert time.monotonic() - started < 2.0
    assert ack["status"] == "cancelled"
    events = events_of(runtime, wid)
    assert "text_done" not in kinds(events)
    assert kinds(events)[-1] == "worker_exited"
    assert runtime.transcript(wid)["total_items"] == 1


def test_stop_lets_a_run_finish_within_the_grace() -> None:
    rt = open_runtime()
    try:
        wid = create(rt, options={"delay_ms": 50})["worker_id"]
        rt.send_input(wid, {"content": "finish me"})

        ack = rt.stop_worker(wid)

        assert ack["status"] == "stopped"
        assert kinds(events_of(rt, wid))[-3:] == ["text_done", "status", "worker_exited"]
    finally:
        rt.close()


def test_stop_interrupts_a_run_that_outlasts_the_grace() -> None:
    slow = ProfileSpec(
        name="slow-echo", description="", builtin="echo", options=SLOW_ECHO_OPTIONS, stop_grace_seconds=0.2
    )
    rt = open_runtime(config=config_with(slow))
    try:
        wid = create(rt, {"kind": "named", "value": "slow-echo"})["worker_id"]
        rt.send_input(wid, {"content": "never finishes"})

        started = time.monotonic()
        ack = rt.stop_worker(wid)
        elapsed = time.monotonic() - started

        assert ack["status"] == "stopped"
        assert 0.2 <= elapsed < 3.0
        assert "text_done" not in kinds(events_of(rt, wid))
    finally:
        rt.close()


def test_cancel_escalates_a_pending_stop(runtime: WorkerRuntime) -> None:
    wid = create(runtime, options=SLOW_ECHO_OPTIONS)["worker_id"]
    runtime.send_input(wid, {"content": "slow"})
    results: dict[str, Any] = {}
    stopper = threading.Thread(target=lambda: results.update(stop=runtime.stop_worker(wid)))
    started = time.monotonic()
    stopper.start()
    # The stop waits out its 5 s grace; wait until it is under way (no public view of that).
    wait_until(lambda: runtime._workers[wid].pending_final is not None, what="the stop to be under way")

    ack = runtime.cancel_worker(wid, reason="too slow")
    stopper.join(timeout=10)

    assert not stopper.is_alive()
    assert time.monotonic() - started < 3.0
    assert ack["status"] == results["stop"]["status"] == "cancelled"
    events = events_of(runtime, wid)
    assert kinds(events).count("worker_exited") == 1
    assert events[-1].data["reason"] == "too slow"


def test_input_while_a_stop_is_pending_is_refused(runtime: WorkerRuntime) -> None:
    wid = create(runtime, options=SLOW_ECHO_OPTIONS)["worker_id"]
    runtime.send_input(wid, {"content": "slow"})
    stopper = threading.Thread(target=runtime.stop_worker, args=(wid,))
    stopper.start()
    try:
        wait_until(lambda: runtime._workers[wid].pending_final is not None, what="the stop to be under way")
        with pytest.raises(WorkerNotRunning):
            runtime.send_input(wid, {"content": "more"})
    finally:
        runtime.cancel_worker(wid)
        stopper.join(timeout=10)
    assert runtime.transcript(wid)["total_items"] == 1


def test_stop_reason_is_bounded(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]

    with pytest.raises(InvalidRequest):
        runtime.stop_worker(wid, reason="x" * 501)
    with pytest.raises(InvalidRequest):
        runtime.cancel_worker(wid, reason=5)  # type: ignore[arg-type]

    assert runtime.get_worker(wid)["status"] == "running"
    assert runtime.stop_worker(wid, reason="x" * 500)["status"] == "stopped"


def test_summary_counts_workers_by_status(runtime: WorkerRuntime) -> None:
    ids = [create(runtime)["worker_id"] for _ in range(4)]
    runtime.stop_worker(ids[0])
    runtime.cancel_worker(ids[1])

    summary = runtime.summary()

    assert {k: summary[k] for k in summary if k.endswith("_count")} == {
        "worker_count": 4,
        "active_worker_count": 2,
        "stopped_worker_count": 1,
        "cancelled_worker_count": 1,
        "failed_worker_count": 0,
    }
    assert summary["runtime_id"] == "rt-test"
    assert summary["backend"] == "memory"
    assert summary["status"] == "running"
    assert summary["protocol_version"] == "1"
    assert summary["limits"] == {"max_transcript_projection_items": 256, "max_input_bytes": 1024 * 1024}
    assert [p["name"] for p in summary["profiles"]] == ["builtin:echo", "builtin:burst"]
    assert summary["default_profile"] == "builtin:echo"
    assert summary["event_streams_open"] == 0


def test_list_workers_is_oldest_first() -> None:
    ticks = iter(range(1000, 2000))
    rt = WorkerRuntime(runtime_id="rt-test", clock=lambda: float(next(ticks)))
    rt.open()
    try:
        for wid in ("c", "a", "b"):
            create(rt, worker_id=wid)
        assert [w["worker_id"] for w in rt.list_workers()] == ["c", "a", "b"]
    finally:
        rt.close()


def test_a_closed_runtime_refuses_commands(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    runtime.close()
    runtime.close()  # idempotent

    for call in (
        lambda: create(runtime),
        lambda: runtime.send_input(wid, {"content": "hi"}),
        lambda: runtime.stop_worker(wid),
        lambda: runtime.cancel_worker(wid),
        lambda: runtime.subscribe(wid, after=0, listener=Collector()),
    ):
        with pytest.raises(RuntimeStopped):
            call()
    assert runtime.summary()["status"] == "stopped"


def test_error_types_carry_their_wire_code_and_status() -> None:
    cases = [
        (InvalidRequest, "invalid_request", 400),
        (LimitTooLarge, "limit_too_large", 400),
        (PayloadTooLarge, "payload_too_large", 413),
        (WorkerNotFound, "worker_not_found", 404),
        (WorkerNotRunning, "worker_not_running", 409),
        (WorkerExists, "worker_exists", 409),
        (RuntimeStopped, "runtime_stopped", 409),
    ]
    for cls, code, status in cases:
        error: RuntimeApiError = cls("msg")
        assert (error.code, error.status) == (code, status)
        assert error.to_json() == {"error": {"code": code, "message": "msg"}}


# ------------------------------------------------------------------------------------------ create validation


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"intent": {"kind": "task"}, "profile": ECHO}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


MISSING = None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="not-an-object"),
        pytest.param("echo", id="a-string"),
        pytest.param(_body(intent=MISSING), id="missing-intent"),
        pytest.param(_body(intent="assistant"), id="intent-not-object"),
        pytest.param(_body(intent={"kind": "boss"}), id="bad-intent-kind"),
        pytest.param(_body(intent={}), id="intent-without-kind"),
        pytest.param(_body(profile=MISSING), id="missing-profile"),
        pytest.param(_body(profile="builtin:echo"), id="profile-not-object"),
        pytest.param(_body(profile={"kind": "magic", "value": "echo"}), id="bad-profile-kind"),
        pytest.param(_body(profile={"kind": "builtin"}), id="builtin-without-value"),
        pytest.param(_body(profile={"kind": "builtin", "value": "  "}), id="blank-builtin-value"),
        pytest.param(_body(profile={"kind": "builtin", "value": "builtin:nope"}), id="unknown-builtin"),
        pytest.param(_body(profile={"kind": "builtin", "value": "nope"}), id="unknown-bare-builtin"),
        pytest.param(_body(profile={"kind": "named", "value": "nope"}), id="unknown-named"),
        pytest.param(_body(profile={"kind": "named", "value": "builtin:echo"}), id="named-builtin"),
        pytest.param(_body(profile={"kind": "named", "value": 5}), id="named-not-string"),
        pytest.param(_body(initial_input=""), id="empty-initial-input"),
        pytest.param(_body(initial_input=" \n\t"), id="blank-initial-input"),
        pytest.param(_body(initial_input=5), id="initial-input-not-string"),
    ],
)
def test_create_rejects_invalid_bodies(runtime: WorkerRuntime, body: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        runtime.create_worker(body)

    assert (info.value.code, info.value.status) == ("invalid_request", 400)
    assert runtime.list_workers() == []


@pytest.mark.parametrize(
    ("selector", "profile"),
    [
        ({"kind": "runtime_default"}, "builtin:echo"),
        ({"kind": "builtin", "value": "echo"}, "builtin:echo"),
        ({"kind": "builtin", "value": "builtin:burst"}, "builtin:burst"),
        ({"kind": "named", "value": "burst-3"}, "burst-3"),
    ],
)
def test_create_resolves_profile_selectors(selector: dict[str, Any], profile: str) -> None:
    variant = ProfileSpec(name="burst-3", description="", builtin="burst", options={"count": 3, "rate": 0})
    rt = open_runtime(config=config_with(variant))
    try:
        assert create(rt, selector)["profile"] == profile
    finally:
        rt.close()


def test_a_named_builtin_variant_runs_with_its_options() -> None:
    variant = ProfileSpec(name="burst-3", description="", builtin="burst", options={"count": 3, "rate": 0})
    rt = open_runtime(config=config_with(variant))
    try:
        wid = create(rt, {"kind": "named", "value": "burst-3"})["worker_id"]
        rt.send_input(wid, {"content": "go"})
        assert kinds(wait_for_kind(rt, wid, "run_end")).count("text_delta") == 3
    finally:
        rt.close()


@pytest.mark.parametrize(
    "worker_id",
    ["..", ".", "a/b", "a\\b", "a\nb", "a\x00b", "tab\there", "x" * 121, "", "a b", "é", "a.b", 5, ["a"]],
)
def test_create_rejects_bad_worker_ids(runtime: WorkerRuntime, worker_id: Any) -> None:
    with pytest.raises(InvalidRequest, match="worker_id"):
        create(runtime, worker_id=worker_id)

    assert runtime.list_workers() == []


def test_create_accepts_ids_of_the_whole_alphabet_up_to_120_chars(runtime: WorkerRuntime) -> None:
    for wid in ("x" * 120, "Az09_:-", "a:b"):
        assert create(runtime, worker_id=wid)["worker_id"] == wid


def test_create_with_a_taken_worker_id_raises_worker_exists(runtime: WorkerRuntime) -> None:
    create(runtime, worker_id="dup", initial_input="first")
    wait_for_kind(runtime, "dup", "text_done")

    with pytest.raises(WorkerExists):
        create(runtime, BURST, worker_id="dup", initial_input="second")

    detail = runtime.get_worker("dup")
    assert detail["profile"] == "builtin:echo"
    assert detail["transcript_len"] == 2


def test_lookups_of_unknown_or_malformed_ids(runtime: WorkerRuntime) -> None:
    with pytest.raises(WorkerNotFound):
        runtime.get_worker("nobody")
    with pytest.raises(WorkerNotFound):
        runtime.send_input("nobody", {"content": "hi"})
    with pytest.raises(WorkerNotFound):
        runtime.stop_worker("nobody")
    with pytest.raises(WorkerNotFound):
        runtime.transcript("nobody")
    with pytest.raises(InvalidRequest):
        runtime.get_worker("../etc")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="not-an-object"),
        pytest.param({"kind": "tool", "content": "hi"}, id="bad-kind"),
        pytest.param({"content": ""}, id="empty"),
        pytest.param({"content": "   "}, id="blank"),
        pytest.param({"content": 5}, id="not-a-string"),
        pytest.param({"kind": "user"}, id="missing-content"),
    ],
)
def test_send_input_rejects_invalid_bodies(runtime: WorkerRuntime, body: Any) -> None:
    wid = create(runtime)["worker_id"]

    with pytest.raises(InvalidRequest):
        runtime.send_input(wid, body)

    assert runtime.get_worker(wid)["transcript_len"] == 0


def test_oversized_content_raises_payload_too_large() -> None:
    rt = open_runtime(config=RuntimeConfig(max_input_bytes=16))
    try:
        wid = create(rt)["worker_id"]
        # Bytes count, not characters: 9 x "é" is 18 bytes.
        for content in ("x" * 17, "é" * 9):
            with pytest.raises(PayloadTooLarge) as info:
                rt.send_input(wid, {"content": content})
            assert (info.value.code, info.value.status) == ("payload_too_large", 413)
        with pytest.raises(PayloadTooLarge):
            create(rt, initial_input="y" * 17)

        assert rt.send_input(wid, {"content": "x" * 16})["transcript_sequence"] == 1
        assert len(rt.list_workers()) == 1
    finally:
        rt.close()


# ------------------------------------------------------------------------------------------ transcript


def test_transcript_pages_with_start_limit_and_next_start(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    for n in range(3):
        answered(runtime, wid, f"msg {n}", count=n + 1)

    first = runtime.transcript(wid, start=0, limit=4)
    second = runtime.transcript(wid, start=first["next_start"], limit=4)
    beyond = runtime.transcript(wid, start=10, limit=4)
    default = runtime.transcript(wid)

    assert (first["start"], first["limit"], first["total_items"], first["next_start"]) == (0, 4, 6, 4)
    assert [i["sequence"] for i in first["items"]] == [1, 2, 3, 4]
    assert (second["start"], second["next_start"]) == (4, None)
    assert [i["content"] for i in second["items"]] == ["msg 2", "echo: msg 2"]
    assert (beyond["items"], beyond["next_start"], beyond["total_items"]) == ([], None, 6)
    assert (default["limit"], len(default["items"]), default["next_start"]) == (50, 6, None)
    assert first["worker_ref"] == {"runtime_id": "rt-test", "worker_id": wid}
    exact = runtime.transcript(wid, start=2, limit=4)
    assert (len(exact["items"]), exact["next_start"]) == (4, None)


def test_transcript_limit_and_start_are_validated(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]

    assert runtime.transcript(wid, limit=256)["limit"] == 256
    with pytest.raises(LimitTooLarge) as info:
        runtime.transcript(wid, limit=257)
    assert (info.value.code, info.value.status) == ("limit_too_large", 400)
    with pytest.raises(InvalidRequest):
        runtime.transcript(wid, start=-1)
    with pytest.raises(InvalidRequest):
        runtime.transcript(wid, limit=0)


# ------------------------------------------------------------------------------------------ subscribe


def test_subscribe_replays_the_backlog_after_a_cursor_then_delivers_live(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    log = answered(runtime, wid, "one")
    collector = Collector()

    sub = runtime.subscribe(wid, after=3, listener=collector)
    try:
        assert (sub.reset_earliest_seq, sub.finished) == (None, False)
        assert sub.backlog == log[3:]
        runtime.send_input(wid, {"content": "two words"})
        live = collector.wait_for("text_done")
    finally:
        sub.close()

    assert_consecutive(sub.backlog + live, 4, log[-1].seq + 6)
    assert live[0].kind == "user_message"
    assert live[0].data["content"] == "two words"
    assert live == events_of(runtime, wid)[len(log) :]


def test_subscribe_from_zero_and_from_the_last_seq(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    log = answered(runtime, wid, "one")

    from_zero = runtime.subscribe(wid, after=0, listener=Collector())
    from_last = runtime.subscribe(wid, after=log[-1].seq, listener=Collector())
    from_future = runtime.subscribe(wid, after=log[-1].seq + 100, listener=Collector())
    for sub in (from_zero, from_last, from_future):
        sub.close()

    assert from_zero.backlog == log
    assert from_last.backlog == []
    # A cursor past the end belongs to another log of these ids: a reset, then this log from its start.
    assert (from_future.reset_reason, from_future.reset_earliest_seq) == ("cursor_ahead", 1)
    assert from_future.backlog == log
    assert from_zero.epoch == from_future.epoch == runtime.get_worker(wid)["epoch"] != ""


def test_subscribe_without_a_cursor_is_live_only(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    log = answered(runtime, wid, "before")
    collector = Collector()

    sub = runtime.subscribe(wid, after=None, listener=collector)
    try:
        assert sub.backlog == []
        runtime.send_input(wid, {"content": "after"})
        live = collector.wait_for("text_done")
    finally:
        sub.close()

    assert_consecutive(live, log[-1].seq + 1, log[-1].seq + 6)


def test_subscribe_rejects_a_negative_cursor(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]

    with pytest.raises(InvalidRequest):
        runtime.subscribe(wid, after=-1, listener=Collector())

    assert runtime.summary()["event_streams_open"] == 0


def test_live_subscribers_see_the_worker_exit(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    collector = Collector()
    sub = runtime.subscribe(wid, after=1, listener=collector)

    runtime.stop_worker(wid)

    live = collector.snapshot()
    sub.close()
    assert kinds(live) == ["status", "worker_exited"]
    assert_consecutive(live, 2, 3)


def test_subscribe_to_a_finished_worker_ends_with_worker_exited(runtime: WorkerRuntime) -> None:
    wid = create(runtime, initial_input="hi")["worker_id"]
    wait_for_kind(runtime, wid, "text_done")
    runtime.cancel_worker(wid)
    log = events_of(runtime, wid)
    collector = Collector()

    replay = runtime.subscribe(wid, after=2, listener=collector)
    live_only = runtime.subscribe(wid, after=None, listener=collector)
    replay.close()
    live_only.close()

    assert replay.finished and live_only.finished
    assert replay.backlog == log[2:]
    assert replay.backlog[-1].kind == "worker_exited"
    assert live_only.backlog == [log[-1]]
    assert live_only.backlog[0].data["status"] == "cancelled"
    assert collector.snapshot() == []


def test_subscribing_during_a_fast_burst_loses_and_repeats_nothing(runtime: WorkerRuntime) -> None:
    wid = create(runtime, BURST, options={"count": 30_000})["worker_id"]
    rng = random.Random(7)
    subs: list[tuple[int | None, Any, Collector]] = []

    runtime.send_input(wid, {"content": "go"})
    while runtime.get_worker(wid)["transcript_len"] < 2 and len(subs) < 400:
        last = runtime.get_worker(wid)["last_seq"]
        after = None if len(subs) % 4 == 3 else rng.randint(max(0, last - 300), last)
        collector = Collector()
        subs.append((after, runtime.subscribe(wid, after=after, listener=collector), collector))
    final = wait_for_kind(runtime, wid, "run_end")[-1].seq

    mid_stream = 0
    for after, sub, collector in subs:
        sub.close()
        live = collector.snapshot()
        if after is None:
            assert sub.backlog == []
            if live:
                assert_consecutive(live, live[0].seq, final)
        else:
            assert_consecutive(sub.backlog + live, after + 1, final)
            mid_stream += bool(live) and live[0].seq < final - 2
    # The check above means something only if subscriptions really raced the burst.
    assert mid_stream >= 3
    assert runtime.summary()["event_streams_open"] == 0


def test_subscribe_answers_a_reset_when_the_history_is_gone() -> None:
    rt = open_runtime(config=RuntimeConfig(event_retention=10))
    try:
        wid = create(rt, BURST, options={"count": 50})["worker_id"]
        rt.send_input(wid, {"content": "go"})
        log = wait_for_kind(rt, wid, "run_end")
        earliest = log[0].seq

        expired = rt.subscribe(wid, after=0, listener=Collector())
        just_expired = rt.subscribe(wid, after=earliest - 2, listener=Collector())
        kept = rt.subscribe(wid, after=earliest - 1, listener=Collector())
        for sub in (expired, just_expired, kept):
            sub.close()
    finally:
        rt.close()

    assert earliest > 1
    assert 10 <= len(log) <= 12
    assert log[-1].seq == 2 + 50 + 2
    assert_consecutive(log, earliest, log[-1].seq)
    assert (expired.reset_earliest_seq, expired.backlog) == (earliest, log)
    assert just_expired.reset_earliest_seq == earliest
    assert (kept.reset_earliest_seq, kept.backlog) == (None, log)


def test_event_streams_open_counts_subscriptions_and_close_is_idempotent(runtime: WorkerRuntime) -> None:
    running = create(runtime)["worker_id"]
    finished = create(runtime)["worker_id"]
    runtime.stop_worker(finished)
    collector = Collector()

    first = runtime.subscribe(running, after=None, listener=collector)
    second = runtime.subscribe(running, after=0, listener=Collector())
    third = runtime.subscribe(finished, after=0, listener=Collector())
    assert runtime.summary()["event_streams_open"] == 3

    first.close()
    first.close()
    assert runtime.summary()["event_streams_open"] == 2
    third.close()
    second.close()
    second.close()
    assert runtime.summary()["event_streams_open"] == 0

    answered(runtime, running, "nobody listens")
    assert collector.snapshot() == []


def test_a_failing_listener_is_dropped_and_the_others_go_on(
    runtime: WorkerRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    wid = create(runtime)["worker_id"]
    calls: list[int] = []

    def broken(batch: Any) -> None:
        calls.append(len(batch))
        raise RuntimeError("boom")

    good = Collector()
    bad_sub = runtime.subscribe(wid, after=None, listener=broken)
    good_sub = runtime.subscribe(wid, after=None, listener=good)
    with caplog.at_level(logging.ERROR, logger="worker_runtime.core"):
        answered(runtime, wid, "hi")
        good.wait_for("text_done")
    bad_sub.close()
    good_sub.close()

    assert calls == [1]
    assert kinds(good.snapshot()) == ["user_message"] + ["text_delta"] * 4 + ["text_done"]
    assert "worker_runtime.listener_failed" in [r.message for r in caplog.records]


def test_an_idle_worker_can_be_created_stopped_and_waited(runtime: WorkerRuntime) -> None:
    wid = create(runtime)["worker_id"]
    wait_status(runtime, wid, "running")

    runtime.stop_worker(wid)

    assert wait_status(runtime, wid, "stopped")["reason"] is None
