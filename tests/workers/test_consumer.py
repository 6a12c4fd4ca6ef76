"""The browser's event socket through the real router (docs/architecture.md §4, §5): handshake, errors, frames,
cursors."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, Group, User

from runtimes.models import Runtime
from tests.runtime_process import RuntimeProcess
from tests.workers.conftest import DEAD_TOKEN_VALUE
from tests.workers.ws_helpers import (
    create_worker,
    events_path,
    expect_error,
    has_seq,
    is_event,
    open_socket,
    runtime_handle,
    send_input,
    seqs,
    stop_worker,
    wait_until,
    worker_settled,
)
from workers.relay import relay_hub
from workers.routing import websocket_urlpatterns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("quick_relay")]

HIDDEN_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_WS_HIDDEN"
HIDDEN_TOKEN_VALUE = "hidden-runtime-token-5d0c81f4-never-shown"
WRONG_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_WS_WRONG"
WRONG_TOKEN_VALUE = "wrong-token-a61f09e3-never-shown"
EVENT_KEYS = {"type", "runtime_id", "worker_id", "seq", "event", "data", "ts"}
ERROR_KEYS = {"code", "message", "retryable", "runtime_id", "worker_id", "fields", "upstream_code"}
# An echo worker created with an initial input: status, user_message, 4 text_delta, text_done.
MAX_CLIENT_MESSAGES, MAX_CLIENT_MESSAGE_BYTES = 10, 4096  # the documented defaults
ECHO_FIRST_ANSWER = ["status", "user_message", "text_delta", "text_delta", "text_delta", "text_delta", "text_done"]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A 127.0.0.1 listening socket this test owns: whoever connects to it stays in its backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def was_contacted(sock: socket.socket) -> bool:
    """True when someone connected to the listener (the kernel completes handshakes without accept())."""
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.fixture
def hidden_runtime(listener: socket.socket, monkeypatch: pytest.MonkeyPatch, db: None) -> Runtime:
    """A remote row limited to a group ``user`` is not in, pointing at the test's own listener."""
    monkeypatch.setenv(HIDDEN_TOKEN_ENV, HIDDEN_TOKEN_VALUE)
    port = listener.getsockname()[1]
    row = Runtime.objects.create(
        runtime_id="hidden",
        display_name="Hidden",
        kind=Runtime.Kind.REMOTE,
        base_url=f"http://127.0.0.1:{port}",
        token_ref=f"env:{HIDDEN_TOKEN_ENV}",
        connect_timeout=1.0,
        read_timeout=0.5,
    )
    row.groups.add(Group.objects.create(name="ops"))
    return row


def assert_no_relay() -> None:
    assert list(relay_hub.relays()) == []


def assert_error(frame: dict[str, Any], code: str) -> dict[str, Any]:
    """The frame is an error frame of ``code`` with the §5 shape; returns the error object."""
    assert set(frame) == {"type", "error"}
    error: dict[str, Any] = frame["error"]
    assert error["code"] == code
    assert set(error) <= ERROR_KEYS
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["retryable"], bool)
    return error


# ------------------------------------------------------------------------------------------- handshake


async def test_anonymous_is_refused_at_the_handshake_with_4401(embedded_runtime: Runtime) -> None:
    socket_ = await open_socket(events_path("local", "w1"), user=AnonymousUser())
    assert not socket_.accepted
    assert socket_.refused_code == 4401
    assert await socket_.communicator.receive_nothing()
    await socket_.disconnect()
    assert_no_relay()


async def test_a_scope_without_user_is_refused_with_4401(embedded_runtime: Runtime) -> None:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), events_path("local", "w1"))
    accepted, code = await communicator.connect(timeout=5)
    assert (accepted, code) == (False, 4401)
    assert await communicator.receive_nothing()
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("runtime_id", "worker_id", "bad_fields"),
    [
        ("..", "w1", {"runtime_id"}),
        ("local", "..", {"worker_id"}),
        ("..", "..", {"runtime_id", "worker_id"}),
        ("a" * 121, "w1", {"runtime_id"}),
        ("local", "w" * 121, {"worker_id"}),
        ("ランタイム", "w1", {"runtime_id"}),
        ("local", "wörker", {"worker_id"}),
        ("a%20b", "w1", {"runtime_id"}),
        ("local", "w.1", {"worker_id"}),
    ],
)
async def test_bad_ids_get_invalid_request_and_4400(
    user: User, embedded_runtime: Runtime, runtime_id: str, worker_id: str, bad_fields: set[str]
) -> None:
    socket_ = await expect_error(events_path(runtime_id, worker_id), user=user)
    assert socket_.close_code == 4400
    error = assert_error(socket_.frames[0], "invalid_request")
    assert set(error["fields"]) == bad_fields
    assert all(isinstance(m, str) for messages in error["fields"].values() for m in messages)
    assert_no_relay()


async def test_an_id_of_120_chars_is_valid_and_looked_up(user: User) -> None:
    socket_ = await expect_error(events_path("r" * 120, "w" * 120), user=user)
    assert socket_.close_code == 4404
    assert_error(socket_.frames[0], "runtime_not_found")


@pytest.mark.parametrize("after", ["-1", "abc", "1.5", str(2**53), "9" * 40, "%EF%BC%91", "1e3", "+1", "0x10"])
async def test_bad_after_gets_invalid_request_and_4400(user: User, embedded_runtime: Runtime, after: str) -> None:
    socket_ = await expect_error(events_path("local", "w1", f"after={after}"), user=user)
    assert socket_.close_code == 4400
    error = assert_error(socket_.frames[0], "invalid_request")
    assert set(error["fields"]) == {"after"}
    assert_no_relay()


# ------------------------------------------------------------------------------------------- lookups


async def test_unknown_runtime_gets_runtime_not_found_and_4404(user: User) -> None:
    socket_ = await expect_error(events_path("nope", "w1"), user=user)
    assert socket_.close_code == 4404
    error = assert_error(socket_.frames[0], "runtime_not_found")
    assert error["runtime_id"] == "nope"
    assert_no_relay()


async def test_invisible_runtime_is_not_found_and_never_contacted(
    user: User, hidden_runtime: Runtime, listener: socket.socket
) -> None:
    socket_ = await expect_error(events_path("hidden", "w1", "after=0"), user=user)
    assert socket_.close_code == 4404
    error = assert_error(socket_.frames[0], "runtime_not_found")
    assert error["runtime_id"] == "hidden"
    assert_no_relay()
    assert not was_contacted(listener)
    text = socket_.texts[0]
    assert hidden_runtime.base_url not in text and HIDDEN_TOKEN_VALUE not in text


async def test_the_same_runtime_visible_to_staff_is_contacted(
    staff_user: User, hidden_runtime: Runtime, listener: socket.socket
) -> None:
    """The control of the test above: the listener does see a Backend that is allowed to call it."""
    socket_ = await expect_error(events_path("hidden", "w1"), user=staff_user)
    # The listener accepts the connection but never answers: a read timeout.
    assert socket_.close_code == 4504
    assert_error(socket_.frames[0], "runtime_timeout")
    assert was_contacted(listener)
    assert_no_relay()


async def test_unknown_worker_gets_worker_not_found_and_4404(user: User, embedded_runtime: Runtime) -> None:
    socket_ = await expect_error(events_path("local", "ghost", "after=0"), user=user)
    assert socket_.close_code == 4404
    error = assert_error(socket_.frames[0], "worker_not_found")
    assert (error["runtime_id"], error["worker_id"]) == ("local", "ghost")
    assert_no_relay()


async def test_disabled_runtime_gets_runtime_disabled_and_4503(user: User, db: None) -> None:
    await Runtime.objects.acreate(runtime_id="off", display_name="Off", kind=Runtime.Kind.EMBEDDED, enabled=False)
    socket_ = await expect_error(events_path("off", "w1"), user=user)
    assert socket_.close_code == 4503
    assert_error(socket_.frames[0], "runtime_disabled")
    assert_no_relay()


async def test_dead_remote_gets_runtime_unreachable_and_4502(user: User, dead_runtime: Runtime) -> None:
    socket_ = await expect_error(events_path("dead", "w1", "after=0"), user=user)
    assert socket_.close_code == 4502
    error = assert_error(socket_.frames[0], "runtime_unreachable")
    assert error["retryable"] is True
    port = dead_runtime.base_url.rsplit(":", 1)[1]
    for text in socket_.texts:
        assert dead_runtime.base_url not in text and f"127.0.0.1:{port}" not in text
        assert DEAD_TOKEN_VALUE not in text and "dead-runtime-token" not in text
    assert_no_relay()


async def test_remote_answering_401_gets_runtime_auth_failed_and_4502(
    user: User, runtime_process: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WRONG_TOKEN_ENV, WRONG_TOKEN_VALUE)
    await Runtime.objects.acreate(
        runtime_id="remote-1",
        display_name="Remote",
        kind=Runtime.Kind.REMOTE,
        base_url=runtime_process.base_url,
        token_ref=f"env:{WRONG_TOKEN_ENV}",
        connect_timeout=2.0,
        read_timeout=5.0,
    )
    socket_ = await expect_error(events_path("remote-1", "w1"), user=user)
    assert socket_.close_code == 4502  # the Backend's credential failed: never a 4401 to the browser
    error = assert_error(socket_.frames[0], "runtime_auth_failed")
    assert error["runtime_id"] == "remote-1"
    for text in socket_.texts:
        assert runtime_process.base_url not in text and f"127.0.0.1:{runtime_process.port}" not in text
        assert WRONG_TOKEN_VALUE not in text
        assert runtime_process.token is not None and runtime_process.token not in text
    assert_no_relay()


# ------------------------------------------------------------------------------------------- relaying


async def test_frames_have_the_design_shapes(user: User, embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "shapes")
    await worker_settled(handle, "shapes", transcript_len=2)
    socket_ = await open_socket(events_path("local", "shapes", "after=0"), user=user)
    try:
        assert socket_.accepted
        await socket_.read_until(has_seq(7))
    finally:
        await socket_.disconnect()
    states = [f for f in socket_.frames if f["type"] == "state"]
    assert states and states[0] == {"type": "state", "upstream": "connected"}
    for frame in socket_.frames:
        assert frame["type"] in {"state", "event"}, frame
        if frame["type"] == "state":
            assert set(frame) <= {"type", "upstream", "reason", "retry_in"}
            assert frame["upstream"] in {"connected", "reconnecting", "unavailable"}
            continue
        assert set(frame) == EVENT_KEYS
        assert (frame["runtime_id"], frame["worker_id"]) == ("local", "shapes")
        assert isinstance(frame["seq"], int) and not isinstance(frame["seq"], bool)
        assert isinstance(frame["event"], str)
        assert isinstance(frame["data"], dict)
        assert isinstance(frame["ts"], float | int)
    first = socket_.events()[0]
    assert first["event"] == "status" and first["data"] == {"status": "running"}


async def test_after_zero_replays_everything_from_seq_1_in_order(user: User, embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "replay")
    settled = await worker_settled(handle, "replay", transcript_len=2)
    assert settled.last_seq == len(ECHO_FIRST_ANSWER)
    socket_ = await open_socket(events_path("local", "replay", "after=0"), user=user)
    try:
        assert socket_.accepted
        await socket_.read_until(has_seq(7))
        await send_input(handle, "replay", "more")
        await socket_.read_until(is_event("text_done", 13))
    finally:
        await socket_.disconnect()
    events = socket_.events()
    assert seqs(events) == list(range(1, 14))
    assert [e["event"] for e in events[:7]] == ECHO_FIRST_ANSWER
    assert events[7]["event"] == "user_message" and events[7]["data"]["content"] == "more"


async def test_after_a_cursor_replays_only_later_events(user: User, embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "cursor")
    await worker_settled(handle, "cursor", transcript_len=2)
    socket_ = await open_socket(events_path("local", "cursor", "after=4"), user=user)
    try:
        await socket_.read_until(has_seq(7))
    finally:
        await socket_.disconnect()
    assert seqs(socket_.frames) == [5, 6, 7]


async def test_without_after_only_live_events_are_sent(user: User, embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "live", initial_input="before")
    before = await worker_settled(handle, "live", transcript_len=2)
    assert before.last_seq is not None
    socket_ = await open_socket(events_path("local", "live"), user=user)
    try:
        assert socket_.accepted
        await socket_.read_until(lambda f: f == {"type": "state", "upstream": "connected"})
        await send_input(handle, "live", "after")
        await socket_.read_event("text_done")
    finally:
        await socket_.disconnect()
    events = socket_.events()
    assert seqs(events) == list(range(before.last_seq + 1, before.last_seq + 1 + len(events)))
    assert events[0]["event"] == "user_message" and events[0]["data"]["content"] == "after"
    assert all(e["data"].get("content") != "before" for e in events)


async def test_a_few_small_client_messages_are_ignored_and_the_socket_stays_open(
    user: User, embedded_runtime: Runtime
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "chatty", initial_input=None)
    socket_ = await open_socket(events_path("local", "chatty"), user=user)
    try:
        assert socket_.accepted
        for index in range(MAX_CLIENT_MESSAGES):
            if index % 2:
                await socket_.communicator.send_to(bytes_data=b"\x00\x01")
            else:
                await socket_.send_text('{"type": "input", "content": "hello"}')
        await send_input(handle, "chatty", "via REST")
        done = await socket_.read_event("text_done")
    finally:
        await socket_.disconnect()
    assert done["data"]["text"] == "echo: via REST"
    assert [f for f in socket_.frames if f["type"] not in {"event", "state"}] == []  # no reply per message
    assert socket_.close_code is None


@pytest.mark.parametrize(
    ("messages", "what"),
    [
        (["x"] * (MAX_CLIENT_MESSAGES + 1), "one message too many"),
        (["x" * (MAX_CLIENT_MESSAGE_BYTES + 1)], "a text message over the size limit"),
        (["é" * (MAX_CLIENT_MESSAGE_BYTES // 2 + 1)], "over the limit in UTF-8 bytes, not in characters"),
        ([b"\x00" * (MAX_CLIENT_MESSAGE_BYTES + 1)], "a binary message over the size limit"),
    ],
)
async def test_a_client_sending_too_much_is_closed_4400(
    user: User, embedded_runtime: Runtime, messages: list[str | bytes], what: str
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "noisy", initial_input=None)
    socket_ = await open_socket(events_path("local", "noisy"), user=user)
    try:
        assert socket_.accepted
        for message in messages:
            if isinstance(message, bytes):
                await socket_.communicator.send_to(bytes_data=message)
            else:
                await socket_.send_text(message)
        assert await socket_.read_until_closed() == 4400, what
    finally:
        await socket_.disconnect()
    errors = [f for f in socket_.frames if f["type"] == "error"]
    assert len(errors) == 1, socket_.frames
    error = assert_error(errors[0], "invalid_request")
    assert "REST" in error["message"]
    await wait_until(lambda: not list(relay_hub.relays()), message="relay closed after the socket")


async def test_a_message_of_exactly_the_size_limit_is_allowed(user: User, embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "edge", initial_input=None)
    socket_ = await open_socket(events_path("local", "edge"), user=user)
    try:
        await socket_.send_text("x" * MAX_CLIENT_MESSAGE_BYTES)
        await send_input(handle, "edge", "still here")
        done = await socket_.read_event("text_done")
    finally:
        await socket_.disconnect()
    assert done["data"]["text"] == "echo: still here" and socket_.close_code is None


async def test_a_finished_worker_watched_live_gets_its_end_then_close_1000(
    user: User, embedded_runtime: Runtime
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "done")
    await worker_settled(handle, "done", transcript_len=2)
    await stop_worker(handle, "done")
    socket_ = await open_socket(events_path("local", "done"), user=user)
    try:
        assert socket_.accepted
        assert await socket_.read_until_closed() == 1000
    finally:
        await socket_.disconnect()
    events = socket_.events()
    assert [e["event"] for e in events] == ["worker_exited"]
    assert events[0]["data"]["status"] == "stopped"
    await wait_until(lambda: not list(relay_hub.relays()), message="relay closed after the last browser left")


async def test_a_finished_worker_replayed_from_zero_ends_with_worker_exited(
    user: User, embedded_runtime: Runtime
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "ended")
    await worker_settled(handle, "ended", transcript_len=2)
    await stop_worker(handle, "ended")
    socket_ = await open_socket(events_path("local", "ended", "after=0"), user=user)
    try:
        assert await socket_.read_until_closed() == 1000
    finally:
        await socket_.disconnect()
    events = socket_.events()
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "worker_exited"


async def test_two_browsers_share_one_upstream(user: User, staff_user: User, embedded_runtime: Runtime) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "shared", initial_input=None)
    first = await open_socket(events_path("local", "shared", "after=0"), user=user)
    second = await open_socket(events_path("local", "shared", "after=0"), user=staff_user)
    try:
        await send_input(handle, "shared", "both")
        for socket_ in (first, second):
            await socket_.read_event("text_done")
        relays = list(relay_hub.relays())
        assert len(relays) == 1 and relays[0].upstreams_opened == 1
    finally:
        await first.disconnect()
        await second.disconnect()
    assert seqs(first.frames) == seqs(second.frames) == list(range(1, len(first.events()) + 1))
    await wait_until(lambda: not list(relay_hub.relays()), message="relay closed after the last browser left")


async def test_a_cursor_past_the_last_event_does_not_hold_back_other_browsers(
    user: User, embedded_runtime: Runtime
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "future")
    await worker_settled(handle, "future", transcript_len=2)
    ahead = await open_socket(events_path("local", "future", "after=1000"), user=user)
    behind = await open_socket(events_path("local", "future", "after=0"), user=user)
    try:
        await behind.read_until(has_seq(7), timeout=5)
        await send_input(handle, "future", "more")
        await behind.read_until(is_event("text_done", 13), timeout=5)
        await ahead.read_until(is_event("text_done", 13), timeout=5)
    finally:
        await ahead.disconnect()
        await behind.disconnect()
    assert seqs(behind.frames) == list(range(1, 14))
    assert seqs(ahead.frames) == list(range(8, 14))


async def test_a_finished_worker_watched_from_its_last_event_closes_1000(
    user: User, embedded_runtime: Runtime
) -> None:
    handle = await runtime_handle()
    await create_worker(handle, "seen")
    await worker_settled(handle, "seen", transcript_len=2)
    await stop_worker(handle, "seen")
    last = (await worker_settled(handle, "seen", transcript_len=2)).last_seq
    socket_ = await open_socket(events_path("local", "seen", f"after={last}"), user=user)
    try:
        assert socket_.accepted
        assert await socket_.read_until_closed(timeout=5) == 1000
    finally:
        await socket_.disconnect()
    assert socket_.events() == []
    assert all(f["type"] == "state" and f["upstream"] == "connected" for f in socket_.frames)
