"""Each limit under load, through a real daphne (``python -m yoi_backend.serve``) on 127.0.0.1.

* login lockout on /login/ and /admin/login/, then success once the cool-down has passed;
* the per-user command rate: a burst of concurrent inputs, every refusal a 429 with Retry-After;
* request bodies: a 400 MiB anonymous POST is refused with 413 while the Backend's memory and temporary
  files grow by less than 5 MiB; a chunked body is cut at the cap; an anonymous body is refused before it
  is sent;
* (slow) the bulkhead: 300 concurrent calls to a blackholed runtime while /healthz and a healthy runtime
  keep their p99 under 100 ms;
* (slow) production start: static files collected before the server listens, so the pages never 500.

Figures are printed (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import RuntimeFactory
from tests.faults.conftest import (
    FAKE_WORKER_ID,
    BackendFactory,
    BlackholeListener,
    FaultBackend,
    RuntimeRow,
)
from tests.runtime_process import wait_until

EMBEDDED = RuntimeRow(runtime_id="embedded", kind="embedded", display_name="Embedded")
LOGIN_USER, LOGIN_PASSWORD = "lockout-user", "lockout-pw-7c1e55a9"
MIB = 1024 * 1024
BODY_CAP = 2_621_440
ANSWER_TIMEOUT = 15.0
COOL_OFF = 10
CREATE_LOGIN_USER = """
from django.contrib.auth.models import User
User.objects.create_user(%(name)r, "lockout@example.invalid", %(password)r, is_staff=True)
"""


# --------------------------------------------------------------------------------------------- login lockout


class LoginBrowser:
    """A browser's cookie jar and the login form of one path."""

    def __init__(self, backend: FaultBackend, path: str) -> None:
        self.url = backend.base_url + path
        self.session = requests.Session()

    def attempt(self, password: str) -> requests.Response:
        """GET the form (CSRF cookie), POST the credentials; the answer, redirects not followed."""
        self.session.cookies.clear()
        form = self.session.get(self.url, timeout=60)
        assert form.status_code == 200, form.text[:300]
        data = {
            "username": LOGIN_USER,
            "password": password,
            "csrfmiddlewaretoken": self.session.cookies["csrftoken"],
            "next": "/",
        }
        return self.session.post(self.url, data=data, timeout=60, allow_redirects=False)


@pytest.fixture
def lockout_backend(fault_backend_factory: BackendFactory) -> FaultBackend:
    backend = fault_backend_factory(
        rows=[EMBEDDED], env={"YOI_LOGIN_FAILURE_LIMIT": "3", "YOI_LOGIN_COOLOFF_SECONDS": str(COOL_OFF)}
    )
    created = backend.manage("shell", "-c", CREATE_LOGIN_USER % {"name": LOGIN_USER, "password": LOGIN_PASSWORD})
    assert created.returncode == 0, created.stderr
    return backend


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_login_lockout_then_success_after_the_cool_down(lockout_backend: FaultBackend, path: str) -> None:
    browser = LoginBrowser(lockout_backend, path)
    answers = [browser.attempt("wrong-password").status_code for _ in range(3)]
    locked_at = time.monotonic()
    assert answers == [200, 200, 429], answers  # the form twice, then the lockout at the third failure

    refused = browser.attempt(LOGIN_PASSWORD)
    assert time.monotonic() - locked_at < COOL_OFF - 1, "too slow to check within the cool-down"
    assert refused.status_code == 429  # the right password too: axes refuses before any password is checked

    # A burst of wrong passwords from 10 threads while locked out: every one decided within the cool-down
    # is refused (later ones are ordinary failures again, which lock the user out anew).
    def guess(_: int) -> tuple[requests.Response, float]:
        response = LoginBrowser(lockout_backend, path).attempt("guess")
        return response, time.monotonic() - locked_at

    with ThreadPoolExecutor(max_workers=10) as pool:
        started = time.perf_counter()
        burst = list(pool.map(guess, range(60)))
        burst_seconds = time.perf_counter() - started
    within = [response for response, at in burst if at < COOL_OFF - 1]  # a second of margin for the clock
    assert within, "no guess was answered within the cool-down (a machine this slow proves nothing)"
    assert Counter(r.status_code for r in within) == {429: len(within)}
    assert all(response.status_code in {200, 429} for response, _ in burst)  # never admitted
    for response in within:
        assert 1 <= int(response.headers["Retry-After"]) <= COOL_OFF
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "Too many failed logins" in response.text

    # The right password is refused until the cool-down has passed, then logs in.
    admitted = wait_until(
        lambda: (r := browser.attempt(LOGIN_PASSWORD)).status_code == 302 and r,
        timeout=60,
        message="a login after the cool-down",
        interval=0.25,
    )
    waited = time.monotonic() - locked_at
    print(
        f"\nlockout {path}: locked at failure 3; 60 guesses in {burst_seconds * 1000:.0f} ms, the "
        f"{len(within)} answered within the cool-down all 429; right password admitted {waited:.1f} s after "
        f"the lockout (cool-off {COOL_OFF} s)"
    )
    assert waited >= COOL_OFF - 2  # not before the cool-down (locked_at is taken after the lockout answer)
    assert "sessionid" in admitted.cookies
    assert lockout_backend.alive()


# --------------------------------------------------------------------------------------------- command rate


def test_a_burst_of_commands_over_the_rate_gets_429_with_retry_after(
    fault_backend_factory: BackendFactory,
) -> None:
    backend = fault_backend_factory(rows=[EMBEDDED], env={"YOI_RATE_COMMANDS": "20/min"})
    created = backend.api("POST", "runtimes/embedded/workers/", {"profile": "builtin:echo"})
    assert created.status_code == 201, created.text
    input_path = f"runtimes/embedded/workers/{created.json()['worker_id']}/input/"
    local = threading.local()

    def send(index: int) -> requests.Response:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        return backend.api("POST", input_path, {"content": f"burst {index}"}, session=session)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, range(80)))
    elapsed = time.perf_counter() - started
    counts = Counter(r.status_code for r in answers)
    retry_after = sorted({int(r.headers["Retry-After"]) for r in answers if r.status_code == 429})
    print(
        f"\ncommand rate 20/min: 80 inputs from 16 threads in {elapsed:.2f} s -> {dict(counts)}; "
        f"Retry-After values {retry_after}"
    )
    assert counts == {202: 19, 429: 61}  # the create was the first of the 20
    for response in answers:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
    # Reads are not limited; another user's commands are not either (its own count).
    assert backend.api("GET", "runtimes/embedded/workers/").status_code == 200


# --------------------------------------------------------------------------------------------- request bodies


def open_fd_bytes(pid: int) -> int:
    """Bytes in the regular files a process holds open (deleted temporary files included)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            info = os.stat(fd)
        except OSError:
            continue
        if (info.st_mode & 0o170000) == 0o100000:  # a regular file
            total += info.st_size
    return total


def dir_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


@pytest.fixture
def body_backend(fault_backend_factory: BackendFactory, tmp_path: Path) -> Iterator[tuple[FaultBackend, Path]]:
    tmp = tmp_path / "backend-tmp"
    tmp.mkdir()
    yield fault_backend_factory(rows=[EMBEDDED], env={"TMPDIR": str(tmp)}), tmp


class Footprint:
    """The Backend's resident memory, peak, and temporary-file bytes, before and after."""

    def __init__(self, backend: FaultBackend, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp
        self.before = self.sample()

    def sample(self) -> tuple[int, int, int]:
        rss, hwm = self.backend.proc_status_kb("VmRSS") * 1024, self.backend.proc_status_kb("VmHWM") * 1024
        return rss, hwm, open_fd_bytes(self.backend.proc.pid) + dir_bytes(self.tmp)

    def growth(self) -> tuple[int, int, int]:
        after = self.sample()
        return tuple(a - b for a, b in zip(after, self.before, strict=True))  # type: ignore[return-value]


def send_body(
    port: int, head: bytes, *, total: int, chunk: bytes, chunked: bool = False
) -> tuple[bytes, int, float]:
    """Send ``head``, then ``chunk`` after ``chunk`` until the server answers or ``total`` body bytes are out;
    the answer, how many body bytes went out before it, and how long after the headers it came."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    try:
        sock.sendall(head)
        started, sent = time.perf_counter(), 0
        piece = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
        while time.perf_counter() - started < ANSWER_TIMEOUT:
            readable, _, _ = select.select([sock], [], [], 0 if sent < total else 0.5)
            if readable:
                break
            if sent < total:
                try:
                    sock.sendall(piece)
                except OSError:
                    break  # the server closed: its answer is in the receive buffer
                sent += len(chunk)
        answered_in = time.perf_counter() - started
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
        return answer, sent, answered_in
    finally:
        sock.close()


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def post_head(path: str, *, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}{extra}\r\n"
    ).encode()


def test_a_400_mib_anonymous_post_is_413_without_the_backend_growing(
    body_backend: tuple[FaultBackend, Path],
) -> None:
    backend, tmp = body_backend
    footprint = Footprint(backend, tmp)
    total = 400 * MIB
    answer, sent, answered_in = send_body(
        backend.port, post_head("/api/v1/runtimes/embedded/workers/", length=total), total=total, chunk=b"x" * MIB
    )
    rss, hwm, files = footprint.growth()
    status, headers, body = parse_answer(answer)
    print(
        f"\n400 MiB anonymous POST: {status} after {answered_in * 1000:.0f} ms with {sent / MIB:.1f} MiB of the "
        f"body sent; Backend VmRSS {rss / MIB:+.2f} MiB, VmHWM {hwm / MIB:+.2f} MiB, "
        f"temp files {files / MIB:+.2f} MiB"
    )
    assert status == 413, answer[:500]
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert headers["connection"] == "close"
    assert rss < 5 * MIB and hwm < 5 * MIB and files < 5 * MIB
    assert backend.alive()
    assert requests.get(f"{backend.base_url}/healthz", timeout=5).status_code == 200


def test_over_the_cap_with_credentials_or_expect_continue_is_413_before_the_body(
    body_backend: tuple[FaultBackend, Path],
) -> None:
    backend, _ = body_backend
    token = f"Authorization: Token {backend.api_token}\r\n"
    for extra in (token, token + "Expect: 100-continue\r\n"):
        answer, sent, _ = send_body(
            backend.port,
            post_head("/api/v1/runtimes/embedded/workers/", length=BODY_CAP + 1, extra=extra),
            total=0,
            chunk=b"",
        )
        status, _, body = parse_answer(answer)
        assert (status, sent) == (413, 0), answer[:300]
        assert b"100 Continue" not in answer  # a client that waits for it is told no, and never sends
        assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_chunked_body_is_cut_at_the_cap(body_backend: tuple[FaultBackend, Path]) -> None:
    backend, tmp = body_backend
    footprint = Footprint(backend, tmp)
    extra = f"Authorization: Token {backend.api_token}\r\n"
    answer, sent, answered_in = send_body(
        backend.port,
        post_head("/api/v1/runtimes/embedded/workers/", length=None, extra=extra),
        total=100 * MIB,
        chunk=b"y" * 65536,
        chunked=True,
    )
    rss, _, files = footprint.growth()
    status, _, body = parse_answer(answer)
    print(
        f"\nchunked POST: {status} after {sent / MIB:.2f} MiB sent ({answered_in * 1000:.0f} ms); "
        f"VmRSS {rss / MIB:+.2f} MiB, temp files {files / MIB:+.2f} MiB"
    )
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    assert sent < 20 * MIB  # cut near the 2.5 MiB cap (plus what the socket buffers held), not at 100 MiB
    assert rss < 5 * MIB and files < 5 * MIB


@pytest.mark.parametrize(
    ("path", "length", "status", "code"),
    [
        ("/api/v1/runtimes/embedded/workers/", 1024, 401, "not_authenticated"),
        ("/admin/runtimes/runtime/add/", 1024, 403, None),
        ("/login/", 100 * 1024, 413, None),  # a login form takes at most 64 KiB without a session
    ],
)
def test_an_anonymous_body_is_refused_before_it_is_sent(
    body_backend: tuple[FaultBackend, Path], path: str, length: int, status: int, code: str | None
) -> None:
    backend, _ = body_backend
    answer, sent, answered_in = send_body(backend.port, post_head(path, length=length), total=0, chunk=b"")
    got, headers, body = parse_answer(answer)
    assert (got, sent) == (status, 0), answer[:300]
    assert answered_in < 5
    if code is not None:
        assert json.loads(body)["error"]["code"] == code
        assert headers["www-authenticate"] == "Token"


def test_a_login_form_post_still_works(body_backend: tuple[FaultBackend, Path]) -> None:
    backend, _ = body_backend
    session = requests.Session()
    session.get(f"{backend.base_url}/login/", timeout=10)
    data = {"username": "nobody", "password": "x", "csrfmiddlewaretoken": session.cookies["csrftoken"]}
    answer = session.post(f"{backend.base_url}/login/", data=data, timeout=10, allow_redirects=False)
    assert answer.status_code == 200 and "Log in" in answer.text  # the form again, with its error


# --------------------------------------------------------------------------------------------- bulkhead


def p99(samples: list[float]) -> float:
    return sorted(samples)[max(0, int(len(samples) * 0.99) - 1)]


HELD_READ_TIMEOUT = 50.0  # the blackholed calls hang this long: longer than the burst takes to be answered
HELD_WINDOWS = 3  # windows of 200 samples while they hang; the machine is shared, so the best one is judged
TARGET_P99 = 0.100


def meets_target(window: dict[str, list[float]]) -> bool:
    """/healthz and the healthy runtime both answered with p99 under TARGET_P99 in this window."""
    return all(p99(values) < TARGET_P99 for values in window.values())


@pytest.mark.slow
def test_300_concurrent_calls_to_a_blackholed_runtime_leave_healthz_and_a_healthy_runtime_fast(
    fault_backend_factory: BackendFactory, runtime_factory: RuntimeFactory, blackhole: BlackholeListener
) -> None:
    hanging = RuntimeRow(
        runtime_id="bulkhead-blackhole",
        base_url=f"http://127.0.0.1:{blackhole.port}",
        token="unused-token",
        connect_timeout=2.0,
        read_timeout=HELD_READ_TIMEOUT,
        max_in_flight=32,
    )
    runtime = runtime_factory(runtime_id="bulkhead-ok")  # a real yoi-runtime process
    healthy = RuntimeRow(runtime_id="bulkhead-ok", base_url=runtime.base_url, token=runtime.token)
    backend = fault_backend_factory(rows=[EMBEDDED, hanging, healthy])
    input_path = f"runtimes/bulkhead-blackhole/workers/{FAKE_WORKER_ID}/input/"
    accepted_before = blackhole.accepted

    stop = threading.Event()
    samples: dict[str, list[float]] = {"healthz": [], "healthy": []}

    def sample() -> None:
        session = requests.Session()
        while not stop.is_set():
            for name, url in (
                ("healthz", f"{backend.base_url}/healthz"),
                ("healthy", f"{backend.base_url}/api/v1/runtimes/bulkhead-ok/workers/"),
            ):
                started = time.perf_counter()
                response = session.get(url, headers=backend.auth(), timeout=10)
                samples[name].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            time.sleep(0.02)  # pacing of the prober, not synchronisation

    def take() -> dict[str, list[float]]:
        taken = {name: list(values) for name, values in samples.items()}
        for values in samples.values():
            values.clear()
        return taken

    def call(_: int) -> tuple[int, str, str | None, float]:
        started = time.perf_counter()
        response = backend.api("POST", input_path, {"content": "x"}, timeout=(5.0, 60.0))
        error = response.json()["error"]
        return (
            response.status_code,
            error["code"],
            response.headers.get("Retry-After"),
            time.perf_counter() - started,
        )

    prober = threading.Thread(target=sample, name="prober")
    prober.start()
    try:
        wait_until(lambda: len(samples["healthy"]) >= 20, timeout=30, message="baseline samples")
        baseline = take()
        with ThreadPoolExecutor(max_workers=300) as pool:
            futures = [pool.submit(call, index) for index in range(300)]
            # The burst: every call beyond the 32 that hang is answered, while the 32 still hang.
            wait_until(lambda: sum(f.done() for f in futures) >= 300 - 32, timeout=60, message="the refusals")
            burst = take()
            assert sum(f.done() for f in futures) == 300 - 32  # the 32 hang (for HELD_READ_TIMEOUT)
            # While 32 request threads hang on the runtime: /healthz and another runtime, in windows of 200
            # samples. Without the bulkhead every window would be seconds (no request thread left); with it a
            # window is judged on its p99, and a shared machine's noise may spoil one, not all.
            windows: list[dict[str, list[float]]] = []
            while len(windows) < HELD_WINDOWS and not (windows and meets_target(windows[-1])):
                wait_until(lambda: len(samples["healthy"]) >= 200, timeout=HELD_READ_TIMEOUT, message="samples")
                windows.append(take())
                assert sum(f.done() for f in futures) == 300 - 32, "the held calls ended before the samples"
            held_connections = blackhole.accepted - accepted_before
            results = [future.result(timeout=HELD_READ_TIMEOUT + 30) for future in futures]
    finally:
        stop.set()
        prober.join(30)

    outcomes = Counter((status, code) for status, code, _, _ in results)
    busy = [r for r in results if r[1] == "runtime_busy"]

    def figures(window: dict[str, list[float]], name: str) -> str:
        values = window[name]
        if not values:
            return f"{name} -"
        return f"{name} p50/p99 {statistics.median(values) * 1000:.1f}/{p99(values) * 1000:.1f} ms ({len(values)})"

    print(
        f"\nbulkhead (max_in_flight 32): 300 concurrent calls -> {dict(outcomes)}; runtime_busy answered in "
        f"p50/p99 {statistics.median(r[3] for r in busy) * 1000:.0f}/{p99([r[3] for r in busy]) * 1000:.0f} ms; "
        f"connections to the blackhole {held_connections}"
    )
    for label, window in [("baseline", baseline), ("during the burst", burst)] + [
        (f"while 32 hang, window {index + 1}", window) for index, window in enumerate(windows)
    ]:
        print(f"  {label}: {figures(window, 'healthz')}; {figures(window, 'healthy')}")
    assert outcomes == {(503, "runtime_busy"): 300 - 32, (504, "runtime_timeout"): 32}
    assert all(retry == "1" for _, _, retry, _ in busy)
    assert p99([r[3] for r in busy]) < HELD_READ_TIMEOUT / 3  # refused, not held until the read timeout
    assert held_connections == 32  # never more than K connections (request threads) on the hanging runtime
    assert meets_target(windows[-1]), f"no window of {HELD_WINDOWS} kept both p99 under {TARGET_P99 * 1000:g} ms"


# --------------------------------------------------------------------------------------------- production start


@pytest.mark.slow
def test_a_production_start_collects_static_files_so_no_page_500s(
    fault_backend_factory: BackendFactory, tmp_path: Path
) -> None:
    static_root = tmp_path / "fresh-static"  # nothing collected: the server must do it before it listens
    backend = fault_backend_factory(rows=[EMBEDDED], env={"DJANGO_STATIC_ROOT": str(static_root)})
    assert (static_root / "staticfiles.json").is_file()
    cookies = {"sessionid": backend.session_key}
    for path, logged_in in [("/login/", False), ("/admin/login/", False), ("/api/docs/", True), ("/", True)]:
        response = requests.get(
            backend.base_url + path, cookies=cookies if logged_in else None, timeout=10, allow_redirects=False
        )
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'"), path
        for asset in [part.split('"')[0] for part in response.text.split('href="/static/')[1:]]:
            assert requests.get(f"{backend.base_url}/static/{asset}", timeout=10).status_code == 200, asset
