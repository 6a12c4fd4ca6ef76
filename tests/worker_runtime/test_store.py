"""The FS store: restart round trips, crash recovery, the lock, and every kind of damage it must survive."""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.worker_runtime.helpers import (
    BURST,
    EXAMPLE_AGENT,
    REPO_ROOT,
    RUNTIME_ID,
    agent_profile,
    assert_consecutive,
    config_with,
    create,
    events_of,
    kinds,
    open_fs_runtime,
    open_runtime,
    wait_for_kind,
    wait_until,
)
from worker_runtime.config import ProfileSpec, RuntimeConfig
from worker_runtime.core import WorkerRuntime
from worker_runtime.errors import InvalidRequest, StoreError
from worker_runtime.model import Event
from worker_runtime.store import FsStore, MemoryStore

AGENT = {"kind": "named", "value": "example-agent"}


def worker_dir(root: Path, worker_id: str) -> Path:
    return root / "workers" / ("w" + worker_id.encode("utf-8").hex())


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def echo_worker_with_history(root: Path, worker_id: str = "w1") -> list[Event]:
    """An FS runtime with one answered echo worker, closed again; returns its event log."""
    rt = open_fs_runtime(root)
    create(rt, worker_id=worker_id, initial_input="hello there")
    log = wait_for_kind(rt, worker_id, "text_done")
    rt.close()
    return log


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


# ------------------------------------------------------------------------------------------ round trips


def test_restart_brings_back_workers_transcripts_and_seq(tmp_path: Path) -> None:
    rt = open_fs_runtime(tmp_path)
    create(rt, worker_id="live", initial_input="hello there")
    wait_for_kind(rt, "live", "text_done")
    create(rt, worker_id="done", initial_input="bye")
    wait_for_kind(rt, "done", "text_done")
    rt.stop_worker("done", reason="finished")
    create(rt, worker_id="dropped")
    rt.cancel_worker("dropped")
    ids = ("live", "done", "dropped")
    before = {wid: (rt.get_worker(wid), events_of(rt, wid), rt.transcript(wid)) for wid in ids}
    summary = rt.summary()
    rt.close()

    rt2 = open_fs_runtime(tmp_path)
    try:
        for wid in ids:
            assert (rt2.get_worker(wid), events_of(rt2, wid), rt2.transcript(wid)) == before[wid]
        assert {k: v for k, v in rt2.summary().items() if k.endswith("_count")} == {
            k: v for k, v in summary.items() if k.endswith("_count")
        }
        assert rt2.summary()["backend"] == "fs_store"
        assert rt2.get_worker("done")["reason"] == "finished"

        # The builtin worker runs again and its seq and transcript numbering go on where they were.
        last = before["live"][1][-1].seq
        ack = rt2.send_input("live", {"content": "again"})
        assert (ack["event_id"], ack["transcript_sequence"]) == (last + 1, 3)
        log = wait_for_kind(rt2, "live", "text_done", count=2)
        assert_consecutive(log, 1, last + 6)
    finally:
        rt2.close()
    assert list(tmp_path.rglob("*.tmp")) == []


def test_restart_accepts_old_cursors(tmp_path: Path) -> None:
    log = echo_worker_with_history(tmp_path)

    rt = open_fs_runtime(tmp_path)
    try:
        for cursor in (0, 1, 3, log[-1].seq):
            sub = rt.subscribe("w1", after=cursor, listener=lambda _batch: None)
            sub.close()
            assert sub.reset_earliest_seq is None
            assert sub.backlog == log[cursor:]
    finally:
        rt.close()


def test_the_epoch_of_a_worker_log_is_kept_with_it_across_restarts(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    snapshot = json.loads((worker_dir(tmp_path, "w1") / "worker.json").read_text("utf-8"))
    epoch = snapshot["epoch"]
    assert isinstance(epoch, str) and len(epoch) == 32

    rt = open_fs_runtime(tmp_path)
    try:
        assert rt.get_worker("w1")["epoch"] == epoch
        sub = rt.subscribe("w1", after=0, listener=lambda _batch: None)
        sub.close()
        assert sub.epoch == epoch
    finally:
        rt.close()


def test_a_log_stored_before_epochs_gets_one_that_is_then_kept(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    path = worker_dir(tmp_path, "w1") / "worker.json"
    snapshot = json.loads(path.read_text("utf-8"))
    del snapshot["epoch"]
    path.write_text(json.dumps(snapshot), "utf-8")

    rt = open_fs_runtime(tmp_path)
    given = rt.get_worker("w1")["epoch"]
    rt.close()
    assert given and json.loads(path.read_text("utf-8"))["epoch"] == given
    rt = open_fs_runtime(tmp_path)
    try:
        assert rt.get_worker("w1")["epoch"] == given
    finally:
        rt.close()


def test_a_cursor_past_the_end_of_a_log_is_a_cursor_ahead_reset(tmp_path: Path) -> None:
    log = echo_worker_with_history(tmp_path)
    rt = open_fs_runtime(tmp_path)
    try:
        sub = rt.subscribe("w1", after=log[-1].seq + 1, listener=lambda _batch: None)
        sub.close()
        assert (sub.reset_reason, sub.reset_earliest_seq, sub.backlog) == ("cursor_ahead", 1, log)
        at_end = rt.subscribe("w1", after=log[-1].seq, listener=lambda _batch: None)
        at_end.close()
        assert (at_end.reset_reason, at_end.reset_earliest_seq, at_end.backlog) == (None, None, [])
    finally:
        rt.close()


def test_the_store_files_hold_one_json_line_per_event_and_item(tmp_path: Path) -> None:
    log = echo_worker_with_history(tmp_path)
    directory = worker_dir(tmp_path, "w1")

    events = [json.loads(line) for line in lines_of(directory / "events.jsonl")]
    items = [json.loads(line) for line in lines_of(directory / "transcript.jsonl")]
    snapshot = json.loads((directory / "worker.json").read_text("utf-8"))
    meta = json.loads((tmp_path / "runtime.json").read_text("utf-8"))

    assert events == [e.to_json() for e in log]
    assert [i["role"] for i in items] == ["user", "assistant"]
    assert snapshot["worker_id"] == "w1"
    assert snapshot["status"] == "running"
    assert (meta["format"], meta["runtime_id"]) == (1, RUNTIME_ID)


def test_worker_ids_are_never_used_raw_as_path_components(tmp_path: Path) -> None:
    rt = open_fs_runtime(tmp_path)
    create(rt, worker_id="a:b")
    with pytest.raises(InvalidRequest):
        create(rt, worker_id="..")
    rt.close()

    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == ["w613a62"]
    assert json.loads((tmp_path / "workers" / "w613a62" / "worker.json").read_text("utf-8"))["worker_id"] == "a:b"
    rt2 = open_fs_runtime(tmp_path)
    try:
        assert rt2.get_worker("a:b")["status"] == "running"
    finally:
        rt2.close()


def test_memory_store_keeps_nothing_across_runtimes() -> None:
    store = MemoryStore()
    rt = open_runtime(store)
    create(rt, worker_id="w1")
    rt.close()

    rt2 = open_runtime(store)
    try:
        assert rt2.list_workers() == []
        assert rt2.summary()["backend"] == "memory"
    finally:
        rt2.close()


def test_store_reprs_name_no_path(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    rt = WorkerRuntime(runtime_id=RUNTIME_ID, store=store)

    assert repr(store) == "FsStore(<store>)"
    assert str(tmp_path) not in repr(rt)
    assert repr(MemoryStore()) == "MemoryStore()"


# ------------------------------------------------------------------------------------------ recovery


def test_a_subprocess_worker_running_at_close_comes_back_failed(tmp_path: Path) -> None:
    config = config_with(agent_profile())
    rt = open_fs_runtime(tmp_path, config)
    create(rt, AGENT, worker_id="agent", initial_input="hi there")
    wait_for_kind(rt, "agent", "run_end")
    rt.close()

    rt2 = open_fs_runtime(tmp_path, config)
    try:
        detail = rt2.get_worker("agent")
        log = events_of(rt2, "agent")
    finally:
        rt2.close()

    assert (detail["status"], detail["reason"]) == ("failed", "runtime_shutdown")
    assert kinds(log)[-2:] == ["status", "worker_exited"]
    assert kinds(log).count("worker_exited") == 1
    assert log[-1].data["status"] == "failed"
    assert detail["transcript_len"] == 2


def test_a_builtin_worker_whose_profile_is_gone_comes_back_failed(tmp_path: Path) -> None:
    variant = ProfileSpec(name="burst-3", description="", builtin="burst", options={"count": 3, "rate": 0})
    rt = open_fs_runtime(tmp_path, config_with(variant))
    create(rt, {"kind": "named", "value": "burst-3"}, worker_id="b")
    rt.close()

    rt2 = open_fs_runtime(tmp_path, RuntimeConfig())
    try:
        detail = rt2.get_worker("b")
        assert (detail["status"], detail["reason"]) == ("failed", "profile_removed")
        assert kinds(events_of(rt2, "b")) == ["status", "status", "worker_exited"]
        assert rt2.summary()["failed_worker_count"] == 1
    finally:
        rt2.close()


def test_a_final_event_without_its_snapshot_is_taken_from_the_log(tmp_path: Path) -> None:
    # Crash between the worker_exited append and the snapshot: worker.json still says running.
    config = config_with(agent_profile())
    rt = open_fs_runtime(tmp_path, config)
    create(rt, AGENT, worker_id="agent", initial_input="exit 3")
    wait_for_kind(rt, "agent", "worker_exited")
    log = events_of(rt, "agent")
    rt.close()
    snapshot_path = worker_dir(tmp_path, "agent") / "worker.json"
    snapshot = json.loads(snapshot_path.read_text("utf-8"))
    snapshot.update(status="running", reason=None, exit_code=None)
    snapshot_path.write_text(json.dumps(snapshot), "utf-8")

    rt2 = open_fs_runtime(tmp_path, config)
    try:
        detail = rt2.get_worker("agent")
        assert (detail["status"], detail["reason"], detail["exit_code"]) == ("failed", "exited", 3)
        assert events_of(rt2, "agent") == log
    finally:
        rt2.close()
    assert json.loads(snapshot_path.read_text("utf-8"))["status"] == "failed"


def test_a_worker_without_any_event_gets_its_running_status_back(tmp_path: Path) -> None:
    # Crash between the first snapshot and the first event.
    rt = open_fs_runtime(tmp_path)
    create(rt, worker_id="w1")
    rt.close()
    (worker_dir(tmp_path, "w1") / "events.jsonl").unlink()

    rt2 = open_fs_runtime(tmp_path)
    try:
        (event,) = events_of(rt2, "w1")
        assert (event.seq, event.kind, event.data) == (1, "status", {"status": "running"})
        assert rt2.send_input("w1", {"content": "hi"})["event_id"] == 2
    finally:
        rt2.close()


def test_a_transcript_item_lost_after_its_event_is_reconciled_from_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = open_fs_runtime(tmp_path)
    create(rt, worker_id="w1", initial_input="hello there")
    wait_for_kind(rt, "w1", "text_done")
    rt.send_input("w1", {"kind": "system", "content": "second one"})
    wait_for_kind(rt, "w1", "text_done", count=2)
    transcript = rt.transcript("w1")["items"]
    rt.close()
    path = worker_dir(tmp_path, "w1") / "transcript.jsonl"
    intact = path.read_bytes()
    path.write_bytes(b"".join(lines_of(path)[:1]))

    with caplog.at_level(logging.WARNING):
        rt2 = open_fs_runtime(tmp_path)
    try:
        assert rt2.transcript("w1")["items"] == transcript
        assert "worker_runtime.transcript_recovered" in log_messages(caplog)
        ack = rt2.send_input("w1", {"content": "third"})
        assert ack["transcript_sequence"] == 5
    finally:
        rt2.close()
    assert path.read_bytes().startswith(intact)


def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    snapshot = worker_dir(tmp_path, "w1") / "worker.json"
    good = snapshot.read_bytes()
    snapshot.write_bytes(b"{")

    with pytest.raises(StoreError):
        open_fs_runtime(tmp_path)
    snapshot.write_bytes(good)

    rt = open_fs_runtime(tmp_path)
    rt.close()


def test_executor_writes_after_close_never_reach_the_store(tmp_path: Path) -> None:
    # A store belongs to one owner at a time: a builtin run still going at close must not write on.
    rt = open_fs_runtime(tmp_path)
    create(rt, BURST, worker_id="w1", options={"count": 30, "rate": 100})
    rt.send_input("w1", {"content": "go"})
    wait_for_kind(rt, "w1", "text_delta", count=3)
    rt.close()
    events_path = worker_dir(tmp_path, "w1") / "events.jsonl"
    at_close = events_path.read_bytes()
    executor = rt._workers["w1"].executor
    assert executor is not None
    # The burst ends on its own within 0.3 s; wait for its thread (no public view of it).
    wait_until(executor._idle.is_set, what="the burst run to end")  # type: ignore[attr-defined]

    assert events_path.read_bytes() == at_close
    rt2 = open_fs_runtime(tmp_path)
    try:
        log = events_of(rt2, "w1")
        assert_consecutive(log, 1, len(log))
        assert "text_done" not in kinds(log)
    finally:
        rt2.close()


# ------------------------------------------------------------------------------------------ crash + lock


CRASHING_RUNTIME = """
import sys, time
from worker_runtime.config import BUILTIN_PROFILES, ProfileSpec, RuntimeConfig
from worker_runtime.core import WorkerRuntime
from worker_runtime.store import FsStore

root, agent = sys.argv[1], sys.argv[2]
profile = ProfileSpec(name="example-agent", description="", command=(sys.executable, agent))
config = RuntimeConfig(profiles=BUILTIN_PROFILES + (profile,))
rt = WorkerRuntime(runtime_id="rt-test", store=FsStore(root), config=config)
rt.open()
intent = {"kind": "task"}
rt.create_worker({"intent": intent, "profile": {"kind": "named", "value": "example-agent"}, "worker_id": "agent",
                  "initial_input": "count these words"})
rt.create_worker({"intent": intent, "profile": {"kind": "runtime_default"}, "worker_id": "echo",
                  "initial_input": "hi there"})
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    if all(rt.get_worker(w)["transcript_len"] == 2 for w in ("agent", "echo")):
        break
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(60)
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of a child's stdout, or fail after ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no line from the child within {timeout:g}s")
    return proc.stdout.readline()


def test_a_crashed_runtime_leaves_its_subprocess_workers_failed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUNTIME, str(tmp_path), str(EXAMPLE_AGENT)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert read_line(child, timeout=15) == b"ready\n"
        # While the child owns the store, nobody else may open it.
        with pytest.raises(StoreError, match="locked by another process"):
            FsStore(tmp_path).open(RUNTIME_ID)
        assert (tmp_path / "LOCK").read_text().strip() == str(child.pid)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -9

    config = config_with(agent_profile())
    rt = open_fs_runtime(tmp_path, config)
    try:
        agent = rt.get_worker("agent")
        assert (agent["status"], agent["reason"], agent["exit_code"]) == ("failed", "runtime_restarted", None)
        log = events_of(rt, "agent")
        assert kinds(log) == [
            "status",
            "user_message",
            "tool_call",
            "tool_result",
            "text_delta",
            "text_done",
            "run_end",
            "status",
            "worker_exited",
        ]
        assert_consecutive(log, 1, 9)
        assert rt.transcript("agent")["items"][1]["content"] == "agent: COUNT THESE WORDS"
        # The builtin worker is brought back running and answers again.
        assert rt.get_worker("echo")["status"] == "running"
        rt.send_input("echo", {"content": "after the crash"})
        assert wait_for_kind(rt, "echo", "text_done", count=2)[-1].data["text"] == "echo: after the crash"
    finally:
        rt.close()


def test_a_second_open_of_a_locked_store_raises_store_error(tmp_path: Path) -> None:
    rt = open_fs_runtime(tmp_path)
    create(rt, worker_id="w1")

    with pytest.raises(StoreError, match="locked by another process"):
        open_fs_runtime(tmp_path)
    # The refused attempt left the owner's lock and store alone.
    assert rt.send_input("w1", {"content": "still mine"})["event_id"] == 2
    rt.close()

    again = open_fs_runtime(tmp_path)
    again.close()


# ------------------------------------------------------------------------------------------ damage


def test_a_corrupt_worker_snapshot_raises_store_error_at_open(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    (worker_dir(tmp_path, "w1") / "worker.json").write_bytes(b'{"worker_id": "w1", "prof')

    with pytest.raises(StoreError, match=r"worker\.json is corrupt"):
        open_fs_runtime(tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"status": "sleeping"}, id="unknown-status"),
        pytest.param({"worker_id": 5}, id="worker-id-not-a-string"),
        pytest.param({"created_at": "yesterday"}, id="bad-timestamp"),
        pytest.param({"intent": None}, id="intent-not-an-object"),
    ],
)
def test_a_snapshot_of_the_wrong_shape_raises_store_error(tmp_path: Path, change: dict[str, Any]) -> None:
    echo_worker_with_history(tmp_path)
    path = worker_dir(tmp_path, "w1") / "worker.json"
    path.write_text(json.dumps({**json.loads(path.read_text("utf-8")), **change}), "utf-8")

    with pytest.raises(StoreError, match=r"worker\.json"):
        open_fs_runtime(tmp_path)


def test_a_snapshot_in_the_wrong_directory_raises_store_error(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    worker_dir(tmp_path, "w1").rename(worker_dir(tmp_path, "w2"))

    with pytest.raises(StoreError, match="does not belong"):
        open_fs_runtime(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is corrupt"),
        (b"{not json", "is corrupt"),
        (b"[]", "is corrupt"),
        (b'{"format": 1}', "is corrupt"),
        (b'{"format": 2, "runtime_id": "rt-test"}', "unsupported store format 2"),
    ],
)
def test_a_bad_runtime_json_raises_store_error(tmp_path: Path, content: bytes, message: str) -> None:
    echo_worker_with_history(tmp_path)
    (tmp_path / "runtime.json").write_bytes(content)

    with pytest.raises(StoreError, match=message):
        open_fs_runtime(tmp_path)


def test_the_store_of_another_runtime_raises_store_error(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)

    with pytest.raises(StoreError, match="belongs to runtime 'rt-test', not 'rt-other'"):
        WorkerRuntime(runtime_id="rt-other", store=FsStore(tmp_path)).open()


@pytest.mark.parametrize("name", ["events.jsonl", "transcript.jsonl"])
def test_a_torn_last_line_is_truncated_and_the_worker_usable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    log = echo_worker_with_history(tmp_path)
    path = worker_dir(tmp_path, "w1") / name
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"seq": 99, "worker_id": "w1", "ev')

    with caplog.at_level(logging.WARNING, logger="worker_runtime.store"):
        rt = open_fs_runtime(tmp_path)
    try:
        assert path.read_bytes() == intact
        assert "store.torn_line_truncated" in log_messages(caplog)
        assert events_of(rt, "w1") == log
        assert rt.transcript("w1")["total_items"] == 2
        ack = rt.send_input("w1", {"content": "still here"})
        assert (ack["event_id"], ack["transcript_sequence"]) == (log[-1].seq + 1, 3)
        wait_for_kind(rt, "w1", "text_done", count=2)
    finally:
        rt.close()


def test_a_file_that_is_only_a_torn_line_is_emptied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = open_fs_runtime(tmp_path)
    create(rt, worker_id="w1")
    rt.close()
    path = worker_dir(tmp_path, "w1") / "transcript.jsonl"
    path.write_bytes(b'{"sequence": 1, "ro')

    with caplog.at_level(logging.WARNING, logger="worker_runtime.store"):
        rt2 = open_fs_runtime(tmp_path)
    try:
        assert path.read_bytes() == b""
        assert rt2.transcript("w1")["total_items"] == 0
    finally:
        rt2.close()


@pytest.mark.parametrize("name", ["events.jsonl", "transcript.jsonl"])
@pytest.mark.parametrize("index", [0, -1])
def test_a_corrupt_complete_line_raises_store_error(tmp_path: Path, name: str, index: int) -> None:
    echo_worker_with_history(tmp_path)
    path = worker_dir(tmp_path, "w1") / name
    lines = lines_of(path)
    lines[index] = b'{"garbage": true}\n'
    path.write_bytes(b"".join(lines))

    with pytest.raises(StoreError, match=f"line {len(lines) if index == -1 else 1} is corrupt"):
        open_fs_runtime(tmp_path)
    assert path.read_bytes() == b"".join(lines)


def test_a_middle_line_that_is_not_json_raises_store_error(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    path = worker_dir(tmp_path, "w1") / "events.jsonl"
    lines = lines_of(path)
    lines[2] = b"\x00\xff not json\n"
    path.write_bytes(b"".join(lines))

    with pytest.raises(StoreError, match=r"events\.jsonl: line 3 is corrupt"):
        open_fs_runtime(tmp_path)


def test_a_gap_in_the_event_log_raises_store_error(tmp_path: Path) -> None:
    echo_worker_with_history(tmp_path)
    path = worker_dir(tmp_path, "w1") / "events.jsonl"
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))

    with pytest.raises(StoreError, match="seq jumps from 2 to 4"):
        open_fs_runtime(tmp_path)


def test_a_worker_directory_without_a_snapshot_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    echo_worker_with_history(tmp_path)
    orphan = worker_dir(tmp_path, "half-made")
    orphan.mkdir()
    (orphan / "events.jsonl").write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="worker_runtime.store"):
        rt = open_fs_runtime(tmp_path)
    try:
        assert [w["worker_id"] for w in rt.list_workers()] == ["w1"]
        assert "store.incomplete_worker_skipped" in log_messages(caplog)
        # The id was never acknowledged, so it is free to create.
        assert create(rt, worker_id="half-made")["status"] == "running"
    finally:
        rt.close()


def test_event_retention_trims_the_log_on_disk_and_resets_survive_a_restart(tmp_path: Path) -> None:
    config = RuntimeConfig(event_retention=10)
    rt = open_fs_runtime(tmp_path, config)
    create(rt, BURST, worker_id="w1", options={"count": 50})
    rt.send_input("w1", {"content": "go"})
    log = wait_for_kind(rt, "w1", "run_end")
    rt.close()
    on_disk = [json.loads(line)["seq"] for line in lines_of(worker_dir(tmp_path, "w1") / "events.jsonl")]

    rt2 = open_fs_runtime(tmp_path, config)
    try:
        reset = rt2.subscribe("w1", after=0, listener=lambda _batch: None)
        tail = rt2.subscribe("w1", after=log[-1].seq - 3, listener=lambda _batch: None)
        reset.close()
        tail.close()
        ack = rt2.send_input("w1", {"content": "more"})
    finally:
        rt2.close()

    assert on_disk == [e.seq for e in log]
    assert len(on_disk) <= 12
    assert (reset.reset_reason, reset.reset_earliest_seq, reset.backlog) == ("history_expired", log[0].seq, log)
    assert tail.backlog == log[-3:]
    assert ack["event_id"] == log[-1].seq + 1


def test_the_lock_file_names_the_owner_pid(tmp_path: Path) -> None:
    rt = open_fs_runtime(tmp_path)
    try:
        assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"
    finally:
        rt.close()


def test_opening_an_empty_directory_creates_the_store(tmp_path: Path) -> None:
    root = tmp_path / "nested" / "store"
    started = time.time()

    rt = open_fs_runtime(root)
    rt.close()

    meta = json.loads((root / "runtime.json").read_text("utf-8"))
    assert meta["runtime_id"] == RUNTIME_ID
    assert meta["created_at"] >= started - 1
    assert (root / "workers").is_dir()
