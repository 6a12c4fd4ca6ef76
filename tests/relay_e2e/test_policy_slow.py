"""The slow rows of socket policy on a real Backend with its default timings, and the message flood.

* A change Django cannot see — a user edited in a shell of another process (no shared channel layer), a
  session expiring — closes the socket within 35 s, through the periodic revalidation (default interval).
* One socket sending 2 M tiny messages is closed 4400 after the tenth, and the Backend's memory (RSS, read
  from ``/proc``) comes back to where it was.

Slow (about a minute): run with ``YOI_RUN_SLOW=1`` (``.ci/run`` does).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.relay_e2e.conftest import Backend, RuntimeEntry
from tests.relay_e2e.policy_helpers import People, closes_within, make_users, module_site, report, watch_new_worker
from tests.runtime_process import RuntimeProcess, create_worker, start_runtime

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("YOI_RUN_SLOW") != "1", reason="slow: set YOI_RUN_SLOW=1 (.ci/run does)"),
]

OTHER_CHANGE_CLOSE = 35.0
SESSION_SECONDS = 10  # long enough to connect its socket first
FLOOD_MESSAGES = 2_000_000
FLOOD_CHUNK = 64 * 1024
# One masked text frame of one byte (a zero mask leaves the payload as it is).
TINY_FRAME = b"\x81\x81\x00\x00\x00\x00x"
RSS_SETTLE_TIMEOUT = 20.0
RSS_GROWTH_LIMIT = 20 * 1024 * 1024
USERS = {"u-shell": {}, "u-flood": {}}


@dataclass
class Stage:
    """A Backend with the default revalidation interval and its remote runtime."""

    backend: Backend
    rt: RuntimeProcess
    people: People


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite: tuple[Path, str, str]) -> Iterator[Stage]:
    with module_site(tmp_path_factory, migrated_sqlite, "policy-slow") as (launcher, root):
        rt = start_runtime(root / "rt", runtime_id="rt-slow")
        backend = launcher.start(runtimes=[RuntimeEntry.of(rt)])
        yield Stage(backend, rt, make_users(backend, USERS, {}))


async def test_a_user_edited_in_another_process_is_closed_within_35_s(stage: Stage) -> None:
    login = stage.people.users["u-shell"]
    client = await watch_new_worker(stage.backend, stage.rt, "rt-slow", login, name="shell-edit")
    script = (
        "from django.contrib.auth.models import User; "
        f"User.objects.filter(pk={login.user_id}).update(is_active=False)"
    )

    def shell_edit() -> None:
        # Another process, no shared channel layer, no signal: only the row changes.
        result = stage.backend.manage("shell", "-c", script)
        assert result.returncode == 0, result.stderr

    try:
        change = lambda: asyncio.to_thread(shell_edit)  # noqa: E731
        closes = await closes_within([client], change, timeout=OTHER_CHANGE_CLOSE, from_end=True)
    finally:
        await client.close()
    report("user deactivated in a shell of another process (default interval)", closes)
    assert [(c.code, c.error_code) for c in closes] == [(4401, "not_authenticated")]
    assert closes[0].seconds < OTHER_CHANGE_CLOSE


async def test_a_session_that_expires_is_closed_within_35_s(stage: Stage) -> None:
    people = await asyncio.to_thread(make_users, stage.backend, {"u-expiring": {"expiry": SESSION_SECONDS}}, {})
    login = people.users["u-expiring"]
    client = await watch_new_worker(stage.backend, stage.rt, "rt-slow", login, name="expiring")
    try:
        await client.wait_closed(timeout=SESSION_SECONDS + OTHER_CHANGE_CLOSE)
    finally:
        await client.close()
    after_expiry = time.time() - login.expires
    print(f"\npolicy close: session expired (default interval): closed {after_expiry:.3f} s after its expiry")
    assert client.close_code == 4401
    assert [f["error"]["code"] for f in client.of_type("error")] == ["not_authenticated"]
    assert after_expiry < OTHER_CHANGE_CLOSE


# ------------------------------------------------------------------------------------------- the flood


def rss_bytes(pid: int) -> int:
    """A process's resident set size, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class RssSampler:
    """Samples a process's RSS on a thread every 50 ms."""

    pid: int
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(rss_bytes(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def open_raw_socket(backend: Backend, path: str, session_key: str) -> socket.socket:
    """A WebSocket handshake by hand (so that frames can then be written in bulk); the connected socket."""
    sock = socket.create_connection(("127.0.0.1", backend.port), timeout=10)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{backend.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {backend.origin}\r\nCookie: sessionid={session_key}\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood(sock: socket.socket, messages: int) -> int:
    """Write ``messages`` tiny frames as fast as the socket takes them; the bytes written before the server
    closed the connection."""
    chunk = TINY_FRAME * (FLOOD_CHUNK // len(TINY_FRAME))
    total, written = messages * len(TINY_FRAME), 0
    sock.settimeout(10)
    try:
        while written < total:
            part = chunk[: total - written]
            sock.sendall(part)
            written += len(part)
    except OSError:
        pass  # the Backend dropped the connection
    return written


def close_code_of(sock: socket.socket) -> int | None:
    """Read the server's frames until its close frame; its code (None when the connection just ended)."""
    sock.settimeout(10)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    offset = 0
    while offset + 2 <= len(data):
        opcode, size = data[offset] & 0x0F, data[offset + 1] & 0x7F
        offset += 2
        if size == 126:
            (size,) = struct.unpack("!H", data[offset : offset + 2])
            offset += 2
        payload = data[offset : offset + size]
        offset += size
        if opcode == 8 and len(payload) >= 2:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


async def settled_rss(pid: int, *, at_most: int) -> int:
    """The RSS once it is at most ``at_most`` (polled with a deadline), else the last reading."""
    deadline = time.monotonic() + RSS_SETTLE_TIMEOUT
    rss = rss_bytes(pid)
    while rss > at_most and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        rss = rss_bytes(pid)
    return rss


async def test_a_flood_of_tiny_messages_is_closed_4400_and_memory_returns(stage: Stage) -> None:
    pid, login = stage.backend.proc.pid, stage.people.users["u-flood"]
    worker_id = str((await asyncio.to_thread(create_worker, stage.rt))["worker_id"])
    path = f"/ws/runtimes/rt-slow/workers/{worker_id}/events/"
    # Warm up every code path once (a socket, its relay, a 4400 close), then take the baseline.
    warm = await asyncio.to_thread(open_raw_socket, stage.backend, path, login.session_key)
    await asyncio.to_thread(flood, warm, 20)
    assert await asyncio.to_thread(close_code_of, warm) == 4400
    warm.close()
    await asyncio.sleep(0)
    baseline = rss_bytes(pid)

    sock = await asyncio.to_thread(open_raw_socket, stage.backend, path, login.session_key)
    with RssSampler(pid) as sampler:
        started = time.monotonic()
        written = await asyncio.to_thread(flood, sock, FLOOD_MESSAGES)
        code = await asyncio.to_thread(close_code_of, sock)
        elapsed = time.monotonic() - started
    sock.close()
    after = await settled_rss(pid, at_most=baseline + RSS_GROWTH_LIMIT)
    peak = max(sampler.samples, default=after)
    mib = 1024 * 1024
    print(
        f"\nflood: {FLOOD_MESSAGES} messages of 1 byte tried, {written // len(TINY_FRAME)} taken by the socket "
        f"before the Backend closed ({code}) in {elapsed:.2f} s; daphne RSS baseline {baseline / mib:.1f} MiB, "
        f"peak {peak / mib:.1f} MiB, after {after / mib:.1f} MiB"
    )
    assert code == 4400
    assert after - baseline < RSS_GROWTH_LIMIT
    assert stage.backend.alive()
