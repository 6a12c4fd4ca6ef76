"""RemoteRuntimeHandle against a real ``worker_runtime`` process on 127.0.0.1 (tests/runtime_process.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from runtimes.client import RemoteRuntimeClient
from runtimes.errors import (
    RuntimeAuthFailed,
    RuntimeBadResponse,
    RuntimeRejected,
    RuntimeUnreachable,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.types import StreamReset, WorkerEvent, WorkerSpec
from tests.runtime_process import RuntimeProcess

HandleFactory = Callable[..., RemoteRuntimeHandle]
RuntimeFactory = Callable[..., RuntimeProcess]


@pytest.fixture
def make_handle() -> Iterator[HandleFactory]:
    handles: list[RemoteRuntimeHandle] = []

    def make(
        process: RuntimeProcess, *, runtime_id: str | None = None, token: str | None = None
    ) -> RemoteRuntimeHandle:
        rid = runtime_id or process.runtime_id
        secret = token or process.token or ""
        client = RemoteRuntimeClient(
            runtime_id=rid,
            base_url=process.base_url,
            token_provider=lambda: secret,
            connect_timeout=2.0,
            read_timeout=10.0,
            stream_idle_timeout=5.0,  # the test runtimes ping every 0.5 s
        )
        handle = RemoteRuntimeHandle(rid, client)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.close()


def read_until(events: Iterator[WorkerEvent | StreamReset], kind: str) -> list[WorkerEvent]:
    """Events up to and including the first of ``kind`` (the stream's idle timeout bounds every wait)."""
    seen: list[WorkerEvent] = []
    for item in events:
        assert isinstance(item, WorkerEvent)
        seen.append(item)
        if item.event == kind:
            return seen
    raise AssertionError(f"stream ended before a {kind} event")


def test_echo_worker_through_the_remote_handle(
    runtime_process: RuntimeProcess, make_handle: HandleFactory
) -> None:
    handle = make_handle(runtime_process)

    summary = handle.summary()
    assert summary.runtime_id == runtime_process.runtime_id
    assert summary.status == "running"
    caps = handle.capabilities()
    assert caps.protocol_version == "1"
    assert caps.profiles is not None
    assert {"builtin:echo", "builtin:burst", "example-agent"} <= {p.name for p in caps.profiles}
    assert caps.max_input_bytes is not None and caps.max_transcript_items is not None

    worker = handle.create_worker(WorkerSpec(profile="builtin:echo"))
    assert (worker.runtime_id, worker.status, worker.profile) == (
        runtime_process.runtime_id,
        "running",
        "builtin:echo",
    )
    ack = handle.send_input(worker.worker_id, content="hello")
    assert (ack.worker_id, ack.status, ack.transcript_sequence) == (worker.worker_id, "running", 1)

    events = iter(handle.open_events(worker.worker_id, after=0))
    first = read_until(events, "text_done")
    assert first[-1].data["text"] == "echo: hello"

    detail = handle.get_worker(worker.worker_id)
    assert detail.transcript_len == 2
    assert detail.last_seq == first[-1].seq
    page = handle.transcript(worker.worker_id, start=0, limit=1)
    assert (page.total_items, page.next_start, page.items[0].content) == (2, 1, "hello")
    page = handle.transcript(worker.worker_id, start=1, limit=10)
    assert page.items[0].role == "assistant" and page.next_start is None

    assert handle.stop_worker(worker.worker_id, reason="done").status == "stopped"
    assert handle.cancel_worker(worker.worker_id).status == "stopped"  # a no-op on a finished worker
    rest = list(events)  # the open stream goes on to the end and closes
    all_events = first + [e for e in rest if isinstance(e, WorkerEvent)]
    assert [e.seq for e in all_events] == list(range(1, len(all_events) + 1))
    assert all_events[-1].event == "worker_exited"
    assert all_events[-1].data["status"] == "stopped"

    replay = [e for e in handle.open_events(worker.worker_id, after=0) if isinstance(e, WorkerEvent)]
    assert [e.seq for e in replay] == [e.seq for e in all_events]
    assert replay[-1].event == "worker_exited"

    listed = handle.list_workers()
    assert [(w.worker_id, w.status) for w in listed] == [(worker.worker_id, "stopped")]

    with pytest.raises(RuntimeRejected) as info:
        handle.send_input(worker.worker_id, content="too late")
    assert (info.value.upstream_code, info.value.http_status) == ("worker_not_running", 409)
    with pytest.raises(WorkerNotFound):
        handle.get_worker("w-does-not-exist")
    with pytest.raises(WorkerNotFound):
        handle.open_events("w-does-not-exist", after=None)


def test_create_with_the_same_idempotency_key_makes_one_worker(
    runtime_process: RuntimeProcess, make_handle: HandleFactory
) -> None:
    handle = make_handle(runtime_process)
    first = handle.create_worker(WorkerSpec(profile="builtin:echo"), idempotency_key="create-once")
    again = handle.create_worker(WorkerSpec(profile="builtin:echo"), idempotency_key="create-once")
    assert again.worker_id == first.worker_id
    assert len(handle.list_workers()) == 1


def test_close_from_another_thread_ends_a_live_stream(
    runtime_process: RuntimeProcess, make_handle: HandleFactory
) -> None:
    handle = make_handle(runtime_process)
    worker = handle.create_worker(WorkerSpec(profile="builtin:echo"))
    stream = handle.open_events(worker.worker_id, after=0)
    got_first = threading.Event()
    outcome: list[object] = []

    def read() -> None:
        try:
            for item in stream:
                outcome.append(item)
                got_first.set()
            outcome.append("ended")
        except YoiError as exc:  # pragma: no cover - reported by the asserts below
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert got_first.wait(5)
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert outcome[-1] == "ended"


def test_wrong_token_is_runtime_auth_failed(runtime_process: RuntimeProcess, make_handle: HandleFactory) -> None:
    handle = make_handle(runtime_process, token="not-the-token")
    for call in (
        handle.summary,
        handle.list_workers,
        lambda: handle.create_worker(WorkerSpec()),
        lambda: handle.open_events("w-1", after=None),
    ):
        with pytest.raises(RuntimeAuthFailed) as info:
            call()
        assert info.value.http_status == 502
        assert "not-the-token" not in str(info.value) and runtime_process.base_url not in str(info.value)


def test_runtime_reporting_another_id_is_bad_response(
    runtime_factory: RuntimeFactory, make_handle: HandleFactory
) -> None:
    process = runtime_factory(runtime_id="rt-actual")
    handle = make_handle(process, runtime_id="rt-configured")
    with pytest.raises(RuntimeBadResponse) as info:
        handle.summary()
    assert "identity" in info.value.message
    assert process.base_url not in info.value.message
    with pytest.raises(RuntimeBadResponse):
        handle.create_worker(WorkerSpec(profile="builtin:echo"))  # its worker_ref names the other runtime


def test_killed_runtime_is_unreachable(runtime_factory: RuntimeFactory, make_handle: HandleFactory) -> None:
    process = runtime_factory()
    handle = make_handle(process)
    assert handle.summary().status == "running"
    process.kill()
    with pytest.raises(RuntimeUnreachable):
        handle.summary()
