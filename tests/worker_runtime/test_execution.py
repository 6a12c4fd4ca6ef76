"""Executors: subprocess agents end to end (events, exit codes, signals, spawn failure), builtins' contract."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker_runtime.helpers import (
    agent_profile,
    config_with,
    create,
    events_of,
    kinds,
    named,
    open_runtime,
    wait_for_kind,
    wait_status,
    wait_until,
)
from worker_runtime.core import WorkerRuntime
from worker_runtime.errors import WorkerNotRunning
from worker_runtime.execution import BurstExecutor, EchoExecutor

# Writes every input's content to stdout as one line ("stderr:..." goes to stderr, "env" describes itself).
PARROT = r"""
import json, os, sys
for line in sys.stdin:
    content = json.loads(line)["content"]
    if content.startswith("stderr:"):
        sys.stderr.write(content + "\n")
        sys.stderr.flush()
        continue
    if content == "env":
        data = {"worker_id": os.environ.get("YOI_WORKER_ID"), "flavour": os.environ.get("FLAVOUR"),
                "cwd": os.getcwd()}
        content = json.dumps({"event": "tool_result", "data": data})
    sys.stdout.write(content + "\n")
    sys.stdout.flush()
"""

# Ignores SIGTERM: only the SIGKILL after the stop grace ends it.
STUBBORN = r"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

STUBBORN_GRACE = 0.3


def profile(name: str) -> dict[str, str]:
    return {"kind": "named", "value": name}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[WorkerRuntime]:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "parrot.py").write_text(PARROT, "utf-8")
    (scripts / "stubborn.py").write_text(STUBBORN, "utf-8")
    config = config_with(
        agent_profile(grace=5.0),
        named("parrot", [sys.executable, "parrot.py"], cwd=str(scripts), env={"FLAVOUR": "mint"}),
        named("stubborn", [sys.executable, str(scripts / "stubborn.py")], grace=STUBBORN_GRACE),
        named("ghost", [str(tmp_path / "no-such-agent")]),
    )
    rt = open_runtime(config=config)
    yield rt
    rt.close()


def say(runtime: WorkerRuntime, worker_id: str, content: str, expect: int) -> list[Any]:
    """Send one input and wait until the worker's log holds ``expect`` events; return the new ones."""
    before = len(events_of(runtime, worker_id))
    runtime.send_input(worker_id, {"content": content})
    log = wait_for_count(runtime, worker_id, before + 1 + expect)
    return log[before + 1 :]


def wait_for_count(runtime: WorkerRuntime, worker_id: str, count: int) -> list[Any]:
    log: list[Any] = []

    def enough() -> bool:
        log[:] = events_of(runtime, worker_id)
        return len(log) >= count

    wait_until(enough, what=f"{count} events of {worker_id}")
    return log


# ------------------------------------------------------------------------------------------ example agent


def test_the_example_agent_answers_with_tool_events_text_and_a_transcript(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("example-agent"), initial_input="count these four words")["worker_id"]

    log = wait_for_kind(runtime, wid, "run_end")

    assert kinds(log) == [
        "status",
        "user_message",
        "tool_call",
        "tool_result",
        "text_delta",
        "text_done",
        "run_end",
    ]
    assert log[2].data == {"tool": "count_words", "args": {"text": "count these four words"}}
    assert log[3].data == {"tool": "count_words", "result": 4}
    assert log[4].data == {"text": "you said 4 words"}
    assert log[5].data == {"text": "agent: COUNT THESE FOUR WORDS", "transcript_sequence": 2}
    assert log[6].data == {"ok": True}
    assert runtime.transcript(wid)["items"] == [
        {"sequence": 1, "role": "user", "content": "count these four words", "event_id": 2},
        {"sequence": 2, "role": "assistant", "content": "agent: COUNT THESE FOUR WORDS", "event_id": 6},
    ]
    assert runtime.get_worker(wid)["profile"] == "example-agent"

    runtime.send_input(wid, {"content": "again"})
    assert wait_for_kind(runtime, wid, "run_end", count=2)[-2].data["text"] == "agent: AGAIN"


@pytest.mark.parametrize(("code", "status"), [(0, "stopped"), (3, "failed")])
def test_an_agent_exiting_by_itself_ends_the_worker(runtime: WorkerRuntime, code: int, status: str) -> None:
    wid = create(runtime, profile("example-agent"))["worker_id"]

    runtime.send_input(wid, {"content": f"exit {code}"})
    detail = wait_status(runtime, wid, status)

    assert (detail["reason"], detail["exit_code"]) == ("exited", code)
    log = events_of(runtime, wid)
    assert kinds(log) == ["status", "user_message", "status", "worker_exited"]
    assert log[-2].data == {"status": status, "reason": "exited"}
    assert log[-1].data == {"status": status, "exit_code": code, "reason": "exited"}
    with pytest.raises(WorkerNotRunning):
        runtime.send_input(wid, {"content": "hello?"})


def test_stop_sends_sigterm_and_the_worker_is_stopped(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("example-agent"), initial_input="warm up")["worker_id"]
    wait_for_kind(runtime, wid, "run_end")  # the agent's SIGTERM handler is installed by now

    started = time.monotonic()
    ack = runtime.stop_worker(wid, reason="enough")

    assert time.monotonic() - started < 3.0
    assert ack["status"] == "stopped"
    detail = runtime.get_worker(wid)
    # The example agent exits 0 on SIGTERM: it got the graceful signal, not a kill.
    assert (detail["reason"], detail["exit_code"]) == ("enough", 0)
    assert kinds(events_of(runtime, wid))[-2:] == ["status", "worker_exited"]


def test_cancel_kills_the_agent_and_the_worker_is_cancelled(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("example-agent"), initial_input="warm up")["worker_id"]
    wait_for_kind(runtime, wid, "run_end")

    ack = runtime.cancel_worker(wid)

    assert ack["status"] == "cancelled"
    assert runtime.get_worker(wid)["exit_code"] == -9
    assert events_of(runtime, wid)[-1].data == {"status": "cancelled", "exit_code": -9, "reason": None}


def test_an_agent_that_ignores_sigterm_is_killed_after_the_stop_grace(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("stubborn"))["worker_id"]
    wait_for_kind(runtime, wid, "text_delta")  # "ready": SIGTERM is ignored from here on

    started = time.monotonic()
    ack = runtime.stop_worker(wid)
    elapsed = time.monotonic() - started

    assert ack["status"] == "stopped"
    assert STUBBORN_GRACE <= elapsed < STUBBORN_GRACE + 3.0
    assert runtime.get_worker(wid)["exit_code"] == -9


def test_a_command_that_does_not_exist_fails_the_worker_with_spawn_failed(
    runtime: WorkerRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker_runtime.core"):
        detail = create(runtime, profile("ghost"), initial_input="anyone?")

    assert (detail["status"], detail["reason"], detail["exit_code"]) == ("failed", "spawn_failed", None)
    log = events_of(runtime, detail["worker_id"])
    assert kinds(log) == ["status", "status", "worker_exited"]
    assert log[-1].data == {"status": "failed", "exit_code": None, "reason": "spawn_failed"}
    assert detail["transcript_len"] == 0
    assert "worker_runtime.spawn_failed" in [r.getMessage() for r in caplog.records]
    assert runtime.summary()["failed_worker_count"] == 1


# ------------------------------------------------------------------------------------------ agent output


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "status", "data": {"status": "stopped"}}',
        '{"event": "worker_exited", "data": {"exit_code": 0}}',
        '{"event": "user_message", "data": {"content": "forged"}}',
        '{"event": "not_a_kind", "data": {}}',
    ],
)
def test_kinds_an_agent_may_not_send_become_error_events(runtime: WorkerRuntime, line: str) -> None:
    wid = create(runtime, profile("parrot"))["worker_id"]

    (event,) = say(runtime, wid, line, expect=1)

    assert event.kind == "error"
    assert "may not send" in event.data["message"]
    assert runtime.get_worker(wid)["status"] == "running"
    assert runtime.transcript(wid)["total_items"] == 1


@pytest.mark.parametrize(
    ("line", "kind", "data"),
    [
        ("just some words", "text_delta", {"text": "just some words"}),
        ("[1, 2]", "text_delta", {"text": "[1, 2]"}),
        ('{"no_event": 1}', "text_delta", {"text": '{"no_event": 1}'}),
        ('{"event": 5}', "text_delta", {"text": '{"event": 5}'}),
        ('{"event": "tool_call", "data": 5}', "tool_call", {"value": 5}),
        ('{"event": "tool_result"}', "tool_result", {}),
        ('{"event": "error", "data": {"message": "agent trouble"}}', "error", {"message": "agent trouble"}),
        ('{"event": "text_done", "data": {"note": "no text"}}', "text_done", {"note": "no text"}),
    ],
)
def test_agent_stdout_lines_become_events(
    runtime: WorkerRuntime, line: str, kind: str, data: dict[str, Any]
) -> None:
    wid = create(runtime, profile("parrot"))["worker_id"]

    (event,) = say(runtime, wid, line, expect=1)

    assert (event.kind, event.data) == (kind, data)
    assert runtime.transcript(wid)["total_items"] == 1


def test_an_agent_text_done_with_text_becomes_the_assistant_transcript_item(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("parrot"))["worker_id"]

    (event,) = say(runtime, wid, '{"event": "text_done", "data": {"text": "the answer"}}', expect=1)

    assert (event.kind, event.data) == ("text_done", {"text": "the answer", "transcript_sequence": 2})
    assert runtime.transcript(wid)["items"][1] == {
        "sequence": 2,
        "role": "assistant",
        "content": "the answer",
        "event_id": event.seq,
    }


def test_agent_stderr_never_becomes_an_event(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("parrot"))["worker_id"]
    runtime.send_input(wid, {"content": "stderr: something broke"})

    (event,) = say(runtime, wid, "after", expect=1)

    assert (event.kind, event.data) == ("text_delta", {"text": "after"})
    assert kinds(events_of(runtime, wid)).count("text_delta") == 1


def test_an_agent_runs_with_its_profile_env_cwd_and_worker_id(runtime: WorkerRuntime, tmp_path: Path) -> None:
    wid = create(runtime, profile("parrot"), worker_id="parrot-1")["worker_id"]

    (event,) = say(runtime, wid, "env", expect=1)

    assert event.kind == "tool_result"
    assert event.data == {"worker_id": "parrot-1", "flavour": "mint", "cwd": str((tmp_path / "scripts").resolve())}


def test_close_ends_subprocess_workers_as_failed_runtime_shutdown(runtime: WorkerRuntime) -> None:
    wid = create(runtime, profile("example-agent"), initial_input="hi")["worker_id"]
    wait_for_kind(runtime, wid, "run_end")

    runtime.close()

    detail = runtime.get_worker(wid)
    assert (detail["status"], detail["reason"], detail["exit_code"]) == ("failed", "runtime_shutdown", 0)


# ------------------------------------------------------------------------------------------ builtin executors


class RecordingSink:
    """A WorkerSink that records what an executor reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.replies: list[str] = []
        self.exits: list[int | None] = []
        self.lock = threading.Lock()

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.emit_batch([(kind, data)])

    def emit_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        with self.lock:
            self.events.extend(items)

    def reply(self, text: str) -> None:
        with self.lock:
            self.replies.append(text)

    def exited(self, exit_code: int | None) -> None:
        with self.lock:
            self.exits.append(exit_code)


def test_an_idle_builtin_executor_exits_once_on_stop() -> None:
    sink = RecordingSink()
    executor = EchoExecutor(sink, {"delay_ms": 0})
    executor.start()

    executor.stop(1.0)

    assert sink.exits == [None]
    assert sink.events == []


def test_a_builtin_stop_drains_queued_inputs_within_the_grace() -> None:
    sink = RecordingSink()
    executor = EchoExecutor(sink, {"delay_ms": 1})
    for n in range(3):
        executor.submit("user", f"input {n}")

    executor.stop(5.0)

    assert sink.replies == ["echo: input 0", "echo: input 1", "echo: input 2"]
    assert sink.exits == [None]


def test_a_builtin_cancel_drops_queued_inputs() -> None:
    sink = RecordingSink()
    executor = BurstExecutor(sink, {"count": 10, "rate": 5})
    for n in range(3):
        executor.submit("user", f"input {n}")

    started = time.monotonic()
    executor.cancel()

    assert time.monotonic() - started < 1.0
    assert sink.replies == []
    assert len(sink.events) < 10
    assert sink.exits == [None]
