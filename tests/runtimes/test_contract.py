"""One contract for every RuntimeHandle: the embedded core in-process, and a remote handle on a real process.

The same test bodies run against both; embedded and remote workers must be indistinguishable.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.client import RemoteRuntimeClient
from runtimes.errors import IdempotencyKeyReused, InvalidRequest, RuntimeRejected, WorkerNotFound
from runtimes.handles.base import RuntimeHandle
from runtimes.handles.embedded import EmbeddedRuntimeHandle
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.registry import RuntimeConnection, build_handle
from runtimes.types import StreamReset, WorkerEvent, WorkerSpec
from tests.conftest import RuntimeFactory
from tests.tls_certs import make_tls

RUNTIME_ID = "contract-rt"
TLS_TOKEN_ENV = "YOI_RUNTIME_TOKEN_CONTRACT_TLS"
STREAM_TIMEOUT = 15.0


@pytest.fixture(params=["embedded", "remote", "remote-mtls"])
def handle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuntimeHandle]:
    """The handle under contract, over a fresh store; ``remote-mtls`` is built from a runtime row by the
    registry's builder, over HTTPS with a client certificate (certificates made by trustme)."""
    if request.param == "embedded":
        embedded = EmbeddedRuntimeHandle(RUNTIME_ID, data_dir=tmp_path / "data")
        yield embedded
        embedded.close()
        return
    factory: RuntimeFactory = request.getfixturevalue("runtime_factory")
    if request.param == "remote-mtls":
        secrets_dir: Path = request.getfixturevalue("secrets_dir")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        tls = make_tls(tmp_path / "tls", key_dir=secrets_dir)
        process = factory(
            runtime_id=RUNTIME_ID, extra_args=("--ping-interval", "0.5", *tls.runtime_args(mtls=True))
        )
        assert process.token is not None and process.base_url.startswith("https://")
        monkeypatch.setenv(TLS_TOKEN_ENV, process.token)
        built = build_handle(
            RuntimeConnection(
                runtime_id=RUNTIME_ID,
                display_name="Contract over mTLS",
                kind="remote",
                base_url=process.base_url,
                token_ref=f"env:{TLS_TOKEN_ENV}",
                connect_timeout=2.0,
                read_timeout=10.0,
                enabled=True,
                group_ids=frozenset(),
                updated_at=None,
                tls_ca_file=str(tls.ca_file),
                tls_client_cert_file=str(tls.client_cert),
                tls_client_key_ref=f"file:{tls.client_key}",
            )
        )
        yield built
        built.close()
        return
    process = factory(runtime_id=RUNTIME_ID)
    token = process.token
    assert token is not None
    client = RemoteRuntimeClient(
        runtime_id=RUNTIME_ID,
        base_url=process.base_url,
        token_provider=lambda: token,
        connect_timeout=2.0,
        read_timeout=10.0,
    )
    remote = RemoteRuntimeHandle(RUNTIME_ID, client)
    yield remote
    remote.close()


def collect_events(handle: RuntimeHandle, worker_id: str, *, after: int | None, until: str) -> list[WorkerEvent]:
    """Read a worker's stream until an event of kind ``until`` (bounded by a watchdog that closes it)."""
    stream = handle.open_events(worker_id, after=after)
    watchdog = threading.Timer(STREAM_TIMEOUT, stream.close)
    watchdog.start()
    events: list[WorkerEvent] = []
    try:
        for item in stream:
            assert not isinstance(item, StreamReset)
            events.append(item)
            if item.event == until:
                break
    finally:
        watchdog.cancel()
        stream.close()
    assert events and events[-1].event == until, f"stream ended before {until}"
    return events


def test_summary_reports_identity_capabilities_and_counts(handle: RuntimeHandle) -> None:
    summary = handle.summary()
    assert summary.runtime_id == RUNTIME_ID
    assert summary.status == "running"
    assert summary.worker_count == 0
    caps = handle.capabilities()
    assert caps.profiles is not None
    assert "builtin:echo" in {p.name for p in caps.profiles}
    assert caps.max_transcript_items == 256
    assert caps.protocol_version == "1"


def test_create_input_detail_transcript_stop_cancel_round_trip(handle: RuntimeHandle) -> None:
    worker = handle.create_worker(WorkerSpec(profile="builtin:echo", worker_id="w-1"))
    assert (worker.runtime_id, worker.worker_id, worker.status) == (RUNTIME_ID, "w-1", "running")
    assert worker.profile == "builtin:echo"
    assert worker.intent == {"kind": "assistant"}

    ack = handle.send_input("w-1", content="hello")
    assert (ack.runtime_id, ack.worker_id, ack.status, ack.transcript_sequence) == (
        RUNTIME_ID,
        "w-1",
        "running",
        1,
    )
    events = collect_events(handle, "w-1", after=0, until="text_done")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].data["text"] == "echo: hello"
    assert {e.event for e in events} >= {"status", "user_message", "text_delta", "text_done"}

    page = handle.transcript("w-1", start=0, limit=1)
    assert (page.total_items, page.next_start, page.items[0].content) == (2, 1, "hello")
    page = handle.transcript("w-1", start=1, limit=1)
    assert (page.items[0].role, page.items[0].content, page.next_start) == ("assistant", "echo: hello", None)

    detail = handle.get_worker("w-1")
    assert (detail.transcript_len, detail.last_seq) == (2, events[-1].seq)
    assert [w.worker_id for w in handle.list_workers()] == ["w-1"]

    stopped = handle.stop_worker("w-1", reason="done")
    assert stopped.status == "stopped"
    again = handle.cancel_worker("w-1")
    assert again.status == "stopped"  # cancel of a finished worker is a no-op returning the status
    tail = collect_events(handle, "w-1", after=events[-1].seq, until="worker_exited")
    assert tail[-1].data["status"] == "stopped"
    summary = handle.summary()
    assert (summary.worker_count, summary.active_worker_count, summary.stopped_worker_count) == (1, 0, 1)


def test_cancel_ends_a_running_worker(handle: RuntimeHandle) -> None:
    handle.create_worker(WorkerSpec(profile="builtin:echo", worker_id="w-c"))
    assert handle.cancel_worker("w-c").status == "cancelled"
    assert handle.get_worker("w-c").status == "cancelled"


def test_runtime_default_profile_and_initial_input(handle: RuntimeHandle) -> None:
    worker = handle.create_worker(WorkerSpec(initial_input="first", intent={"kind": "task"}))
    assert worker.profile == "builtin:echo"
    assert worker.intent == {"kind": "task"}
    events = collect_events(handle, worker.worker_id, after=0, until="text_done")
    assert events[-1].data["text"] == "echo: first"


def test_unknown_worker_is_worker_not_found(handle: RuntimeHandle) -> None:
    with pytest.raises(WorkerNotFound) as caught:
        handle.get_worker("nobody")
    assert (caught.value.runtime_id, caught.value.worker_id) == (RUNTIME_ID, "nobody")
    with pytest.raises(WorkerNotFound):
        handle.send_input("nobody", content="x")


def test_input_to_a_finished_worker_is_rejected_with_upstream_code(handle: RuntimeHandle) -> None:
    handle.create_worker(WorkerSpec(worker_id="w-done"))
    handle.stop_worker("w-done")
    with pytest.raises(RuntimeRejected) as caught:
        handle.send_input("w-done", content="late")
    assert (caught.value.upstream_code, caught.value.http_status) == ("worker_not_running", 409)


def test_unknown_profile_is_rejected(handle: RuntimeHandle) -> None:
    with pytest.raises(RuntimeRejected) as caught:
        handle.create_worker(WorkerSpec(profile="no-such-profile"))
    assert (caught.value.upstream_code, caught.value.http_status) == ("invalid_request", 422)


def test_duplicate_worker_id_is_rejected(handle: RuntimeHandle) -> None:
    handle.create_worker(WorkerSpec(worker_id="twice"))
    with pytest.raises(RuntimeRejected) as caught:
        handle.create_worker(WorkerSpec(worker_id="twice"))
    assert caught.value.upstream_code == "worker_exists"


@pytest.mark.parametrize("bad_id", ["..", "a/b", "x" * 121, "tab\there", "ünï"])
def test_bad_worker_ids_never_reach_the_runtime(handle: RuntimeHandle, bad_id: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        handle.get_worker(bad_id)
    assert caught.value.fields and "worker_id" in caught.value.fields


def test_events_resume_after_a_cursor_exactly(handle: RuntimeHandle) -> None:
    handle.create_worker(WorkerSpec(worker_id="w-r", initial_input="one"))
    first = collect_events(handle, "w-r", after=0, until="text_done")
    handle.send_input("w-r", content="two")
    rest = collect_events(handle, "w-r", after=first[-1].seq, until="text_done")
    assert rest[0].seq == first[-1].seq + 1
    assert [e.seq for e in first + rest] == list(range(1, len(first) + len(rest) + 1))
    assert rest[-1].data["text"] == "echo: two"


def test_every_worker_stream_has_an_epoch_in_its_detail_and_on_its_stream(handle: RuntimeHandle) -> None:
    one = handle.create_worker(WorkerSpec(worker_id="w-e1"))
    two = handle.create_worker(WorkerSpec(worker_id="w-e2"))
    assert one.epoch and two.epoch and one.epoch != two.epoch
    assert handle.get_worker("w-e1").epoch == one.epoch
    assert {w.worker_id: w.epoch for w in handle.list_workers()} == {"w-e1": one.epoch, "w-e2": two.epoch}
    stream = handle.open_events("w-e1", after=0)
    try:
        assert stream.epoch == one.epoch
    finally:
        stream.close()


def test_a_cursor_past_the_end_is_a_cursor_ahead_reset_then_the_whole_log(handle: RuntimeHandle) -> None:
    worker = handle.create_worker(WorkerSpec(worker_id="w-ahead", initial_input="hi"))
    log = collect_events(handle, "w-ahead", after=0, until="text_done")
    stream = handle.open_events("w-ahead", after=log[-1].seq + 40)
    watchdog = threading.Timer(STREAM_TIMEOUT, stream.close)
    watchdog.start()
    items: list[WorkerEvent | StreamReset] = []
    try:
        for item in stream:
            items.append(item)
            if len(items) == len(log) + 1:
                break
    finally:
        watchdog.cancel()
        stream.close()
    assert items[0] == StreamReset(reason="cursor_ahead", earliest_seq=1, epoch=worker.epoch)
    assert [e.seq for e in items[1:] if isinstance(e, WorkerEvent)] == [e.seq for e in log]


def test_one_idempotency_key_is_one_effect_and_one_answer(handle: RuntimeHandle) -> None:
    first = handle.create_worker(WorkerSpec(profile="builtin:echo"), idempotency_key="create-k")
    assert handle.create_worker(WorkerSpec(profile="builtin:echo"), idempotency_key="create-k") == first
    assert [w.worker_id for w in handle.list_workers()] == [first.worker_id]
    wid = first.worker_id
    ack = handle.send_input(wid, content="once", idempotency_key="input-k")
    assert handle.send_input(wid, content="once", idempotency_key="input-k") == ack
    with pytest.raises(IdempotencyKeyReused) as caught:
        handle.send_input(wid, content="other", idempotency_key="input-k")
    assert (caught.value.code, caught.value.http_status) == ("idempotency_key_reused", 422)
    with pytest.raises(IdempotencyKeyReused):
        handle.stop_worker(wid, idempotency_key="input-k")  # another command under the same key
    collect_events(handle, wid, after=0, until="text_done")
    page = handle.transcript(wid, start=0, limit=10)
    assert [(i.role, i.content) for i in page.items] == [("user", "once"), ("assistant", "echo: once")]
    stopped = handle.stop_worker(wid, reason="bye", idempotency_key="stop-k")
    assert handle.stop_worker(wid, reason="bye", idempotency_key="stop-k") == stopped


def test_concurrent_commands_with_one_key_take_effect_once(handle: RuntimeHandle) -> None:
    wid = handle.create_worker(WorkerSpec(profile="builtin:echo")).worker_id
    acks: list[object] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            acks.append(handle.send_input(wid, content="racing", idempotency_key="race-k"))
        except BaseException as exc:  # reported below: a thread must not swallow it
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STREAM_TIMEOUT)
    assert errors == [] and len(acks) == 8
    assert all(ack == acks[0] for ack in acks)
    assert handle.get_worker(wid).transcript_len in (1, 2)  # one input (and maybe its answer already)
    assert [i.content for i in handle.transcript(wid, start=0, limit=10).items if i.role == "user"] == ["racing"]


def test_the_embedded_runtime_keeps_answered_keys_across_a_restart(tmp_path: Path) -> None:
    first = EmbeddedRuntimeHandle(RUNTIME_ID, data_dir=tmp_path)
    wid = first.create_worker(WorkerSpec(profile="builtin:echo")).worker_id
    ack = first.send_input(wid, content="durable", idempotency_key="k-durable")
    first.close()
    again = EmbeddedRuntimeHandle(RUNTIME_ID, data_dir=tmp_path)
    try:
        assert again.send_input(wid, content="durable", idempotency_key="k-durable") == ack
        users = [i.content for i in again.transcript(wid, start=0, limit=10).items if i.role == "user"]
        assert users == ["durable"]
    finally:
        again.close()
