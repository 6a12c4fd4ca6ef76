"""The runtime's SSE event streams over a real process: order, resume, reset, exit, crash, many streams."""

from __future__ import annotations

import shutil

import requests

from tests.conftest import RuntimeFactory
from tests.runtime_process import (
    RuntimeProcess,
    SseFrame,
    SseReader,
    api_get,
    api_post,
    create_worker,
    open_events,
    runtime_summary,
    wait_until,
    worker_detail,
)

BURST_CREATE = {
    "intent": {"kind": "task"},
    "profile": {"kind": "builtin", "value": "burst"},
    "options": {"count": 300, "rate": 300},
}
AGENT_CREATE = {"intent": {"kind": "assistant"}, "profile": {"kind": "named", "value": "example-agent"}}


def send_input(rt: RuntimeProcess, worker_id: str, content: str) -> dict[str, object]:
    response = api_post(rt, f"/v1/workers/{worker_id}/input", {"kind": "user", "content": content})
    assert response.status_code == 200, response.text
    ack: dict[str, object] = response.json()["ack"]
    return ack


def seqs(frames: list[SseFrame]) -> list[int]:
    return [frame.seq for frame in frames]


def assert_frame_shape(frame: SseFrame, worker_id: str) -> None:
    data = frame.json()
    assert data["seq"] == frame.seq and data["event"] == frame.event and data["worker_id"] == worker_id
    assert isinstance(data["data"], dict) and isinstance(data["ts"], float)


def wait_streams_open(rt: RuntimeProcess, count: int) -> None:
    wait_until(lambda: runtime_summary(rt)["event_streams_open"] == count, message=f"({count} streams open)")


def test_events_arrive_in_order_and_resume_with_last_event_id(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt, initial_input="first")["worker_id"]
    stream = open_events(rt, worker_id, after=0)
    frames = stream.events(until="text_done")
    assert seqs(frames) == list(range(1, len(frames) + 1))
    assert [f.event for f in frames[:2]] == ["status", "user_message"]
    assert frames[-1].json()["data"] == {"text": "echo: first", "transcript_sequence": 2}
    for frame in frames:
        assert_frame_shape(frame, worker_id)
    stream.close()
    wait_streams_open(rt, 0)

    seen = frames[-1].seq
    send_input(rt, worker_id, "second")
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 4)
    last = worker_detail(rt, worker_id)["last_seq"]
    resumed = open_events(rt, worker_id, last_event_id=seen)
    missing = resumed.events(count=last - seen)
    assert seqs(missing) == list(range(seen + 1, last + 1))
    assert missing[0].event == "user_message" and missing[-1].event == "text_done"
    # Nothing else is pending: the next frame is a keep-alive ping, not an event.
    ping = resumed.next_frame()
    assert ping is not None and ping.comment == "ping" and ping.event is None
    resumed.close()


def test_last_event_id_wins_over_after(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt, initial_input="hi")["worker_id"]
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    stream = open_events(rt, worker_id, after=0, last_event_id=3)
    assert stream.events(count=1)[0].seq == 4
    stream.close()


def test_stream_without_cursor_is_live_only(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt, initial_input="old")["worker_id"]
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    before = worker_detail(rt, worker_id)["last_seq"]
    stream = open_events(rt, worker_id)
    wait_streams_open(rt, 1)
    ack = send_input(rt, worker_id, "new")
    frames = stream.events(until="text_done")
    assert frames[0].seq == before + 1 == ack["event_id"]
    assert frames[0].event == "user_message" and frames[0].json()["data"]["content"] == "new"
    assert seqs(frames) == list(range(before + 1, before + 1 + len(frames)))
    stream.close()


def test_reset_when_history_is_gone(small_retention_runtime: RuntimeProcess) -> None:
    rt = small_retention_runtime
    worker_id = create_worker(rt, initial_input="hello")["worker_id"]
    # status, user_message, 4 x text_delta, text_done: 7 events; the log keeps the last 5.
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    last = worker_detail(rt, worker_id)["last_seq"]
    assert last == 7

    for cursor in ({"after": 0}, {"last_event_id": 1}):
        stream = open_events(rt, worker_id, **cursor)
        reset = stream.next_frame()
        assert reset is not None and reset.event == "reset" and reset.id is None
        assert reset.json() == {
            "reason": "history_expired",
            "earliest_seq": 3,
            "epoch": worker_detail(rt, worker_id)["epoch"],
        }
        assert seqs(stream.events(count=5)) == [3, 4, 5, 6, 7]
        stream.close()

    stream = open_events(rt, worker_id, last_event_id=2)
    first = stream.next_frame()
    assert first is not None and first.event == "text_delta" and first.seq == 3
    stream.close()


def test_worker_exited_ends_the_stream(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    stream = open_events(rt, worker_id)
    wait_streams_open(rt, 1)
    api_post(rt, f"/v1/workers/{worker_id}/stop")
    frames = stream.events(until="worker_exited")
    assert [f.event for f in frames] == ["status", "worker_exited"]
    assert frames[-1].json()["data"] == {"status": "stopped", "exit_code": None, "reason": None}
    assert stream.next_frame() is None  # the server closed the stream
    wait_streams_open(rt, 0)

    # A finished worker: live-only still tells how it ended; a replay ends with worker_exited too.
    live = open_events(rt, worker_id)
    assert [f.event for f in live.events(count=10)] == ["worker_exited"]
    assert live.closed
    replay = open_events(rt, worker_id, after=0)
    assert [f.event for f in replay.events(count=10)] == ["status", "status", "worker_exited"]
    assert replay.closed
    wait_streams_open(rt, 0)


def _read_events(stream: SseReader, frames: list[SseFrame], minimum: int) -> None:
    while len(frames) < minimum:
        frame = stream.next_frame()
        assert frame is not None
        if frame.event is not None:
            frames.append(frame)


def test_kill_restart_and_resume_delivers_every_event_once(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt, BURST_CREATE)["worker_id"]
    stream = open_events(rt, worker_id, after=0)
    send_input(rt, worker_id, "go")
    frames: list[SseFrame] = []
    _read_events(stream, frames, minimum=40)
    rt.kill()  # events are still flowing
    try:
        while (frame := stream.next_frame()) is not None:
            if frame.event is not None:
                frames.append(frame)
    except requests.RequestException:
        pass  # the connection broke mid-frame: a torn frame is never parsed
    stream.close()
    assert seqs(frames) == list(range(1, len(frames) + 1))

    restarted = rt.restart()
    assert restarted.port == rt.port
    detail = worker_detail(restarted, worker_id)
    assert detail["status"] == "running"  # builtin workers come back running
    durable = detail["last_seq"]
    assert durable >= frames[-1].seq

    resumed = open_events(restarted, worker_id, last_event_id=frames[-1].seq)
    frames += resumed.events(count=durable - frames[-1].seq)
    wait_streams_open(restarted, 1)
    send_input(restarted, worker_id, "again")
    frames += resumed.events(until="run_end", timeout=20)
    resumed.close()
    assert seqs(frames) == list(range(1, len(frames) + 1))
    assert frames[-1].seq == worker_detail(restarted, worker_id)["last_seq"]
    texts = api_get(restarted, f"/v1/workers/{worker_id}/transcript").json()["transcript"]["items"]
    assert [i["content"] for i in texts][-2:] == ["again", "burst: 300 events"]


def test_subprocess_profile_end_to_end(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker = create_worker(rt, AGENT_CREATE)
    assert worker["profile"] == "example-agent"
    worker_id = worker["worker_id"]
    stream = open_events(rt, worker_id, after=0)
    send_input(rt, worker_id, "hello big world")
    frames = stream.events(until="run_end")
    kinds = [f.event for f in frames]
    assert kinds == ["status", "user_message", "tool_call", "tool_result", "text_delta", "text_done", "run_end"]
    by_kind = {f.event: f.json()["data"] for f in frames}
    assert by_kind["tool_call"] == {"tool": "count_words", "args": {"text": "hello big world"}}
    assert by_kind["tool_result"] == {"tool": "count_words", "result": 3}
    assert by_kind["text_delta"] == {"text": "you said 3 words"}
    assert by_kind["text_done"]["text"] == "agent: HELLO BIG WORLD"
    items = api_get(rt, f"/v1/workers/{worker_id}/transcript").json()["transcript"]["items"]
    assert [(i["role"], i["content"]) for i in items] == [
        ("user", "hello big world"),
        ("assistant", "agent: HELLO BIG WORLD"),
    ]

    stop = api_post(rt, f"/v1/workers/{worker_id}/stop")
    assert stop.json()["ack"]["status"] == "stopped"
    end = stream.events(until="worker_exited")
    assert end[-1].json()["data"]["status"] == "stopped"
    assert stream.next_frame() is None
    assert worker_detail(rt, worker_id)["status"] == "stopped"


def test_subprocess_worker_comes_back_failed_after_a_crash(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt, AGENT_CREATE)["worker_id"]
    rt.kill()
    restarted = rt.restart()
    detail = worker_detail(restarted, worker_id)
    assert (detail["status"], detail["reason"]) == ("failed", "runtime_restarted")
    frames = open_events(restarted, worker_id, after=0).events(count=10)
    assert frames[-1].event == "worker_exited"
    assert frames[-1].json()["data"]["reason"] == "runtime_restarted"


def test_many_idle_streams_are_counted_and_released(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    streams = [open_events(rt, worker_id) for _ in range(100)]
    wait_streams_open(rt, 100)
    # The streams hold no thread: commands still answer promptly while all of them are open.
    send_input(rt, worker_id, "still here")
    first = streams[0].events(until="text_done")
    assert first[0].event == "user_message"
    for stream in streams:
        stream.close()
    wait_streams_open(rt, 0)


EPOCH_HEADER = "Yoi-Stream-Epoch"


def test_stream_epoch_is_in_the_header_and_the_worker_detail_and_survives_a_restart(
    runtime_process: RuntimeProcess,
) -> None:
    rt = runtime_process
    worker = create_worker(rt, initial_input="hi")
    epoch = worker["epoch"]
    assert isinstance(epoch, str) and len(epoch) == 32
    other = create_worker(rt)["epoch"]
    assert other != epoch  # one epoch per worker event log
    stream = open_events(rt, worker["worker_id"], after=0)
    assert stream.response.headers[EPOCH_HEADER] == epoch
    stream.close()
    head = requests.head(
        rt.url(f"/v1/workers/{worker['worker_id']}/events"), headers=rt.headers(), timeout=(5, 10)
    )
    assert head.status_code == 200 and head.headers[EPOCH_HEADER] == epoch

    rt.kill()
    restarted = rt.restart()
    assert worker_detail(restarted, worker["worker_id"])["epoch"] == epoch  # kept with the log
    again = open_events(restarted, worker["worker_id"], after=0)
    assert again.response.headers[EPOCH_HEADER] == epoch
    again.close()


def test_cursor_past_the_end_gets_a_cursor_ahead_reset_then_the_log(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker = create_worker(rt, initial_input="hi")
    worker_id = worker["worker_id"]
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    last = worker_detail(rt, worker_id)["last_seq"]
    for cursor in ({"last_event_id": last + 1}, {"after": last + 500}):
        stream = open_events(rt, worker_id, **cursor)
        reset = stream.next_frame()
        assert reset is not None and reset.event == "reset" and reset.id is None
        assert reset.json() == {"reason": "cursor_ahead", "earliest_seq": 1, "epoch": worker["epoch"]}
        assert seqs(stream.events(count=last)) == list(range(1, last + 1))
        stream.close()
    # A cursor at the end is not ahead: nothing to replay, no reset.
    at_end = open_events(rt, worker_id, last_event_id=last)
    wait_streams_open(rt, 1)
    send_input(rt, worker_id, "more")
    assert at_end.events(count=1)[0].seq == last + 1
    at_end.close()


def test_a_wiped_store_gives_a_recreated_worker_a_new_epoch_and_old_cursors_a_reset(
    runtime_process: RuntimeProcess,
) -> None:
    rt = runtime_process
    old = create_worker(rt, worker_id="w-same", initial_input="before the wipe")
    wait_until(lambda: worker_detail(rt, "w-same")["transcript_len"] == 2)
    old_last = worker_detail(rt, "w-same")["last_seq"]
    rt.kill()
    shutil.rmtree(rt.store)
    restarted = rt.restart()
    new = create_worker(restarted, worker_id="w-same")
    assert new["epoch"] != old["epoch"]
    assert new["last_seq"] < old_last
    stream = open_events(restarted, "w-same", last_event_id=old_last)
    assert stream.response.headers[EPOCH_HEADER] == new["epoch"]
    reset = stream.next_frame()
    assert reset is not None and reset.json() == {
        "reason": "cursor_ahead",
        "earliest_seq": 1,
        "epoch": new["epoch"],
    }
    stream.close()


def test_memory_store_makes_new_epochs_in_every_process(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory(extra_args=("--memory", "--ping-interval", "0.5"))
    first = create_worker(rt, worker_id="w-mem")["epoch"]
    rt.kill()
    restarted = rt.restart()
    second = create_worker(restarted, worker_id="w-mem")["epoch"]
    assert first and second and first != second
