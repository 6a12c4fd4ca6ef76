"""A runtime killed with SIGKILL and restarted while 200 inputs go through the Backend.

Every answer is a 202 or a typed §5 envelope (never a 500, never a non-JSON body), the Backend recovers once
the runtime is back, and nothing is half-applied: every accepted input is in the transcript exactly once,
and no input appears twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import RuntimeFactory
from tests.faults.conftest import BackendFactory, FaultBackend, RuntimeRow
from tests.runtime_process import wait_until

RUNTIME_ID = "rt-load"
REQUESTS = 200
CLIENT_THREADS = 32
KILL_AFTER = 50  # answers before the SIGKILL
AFTER_RESTART = 40
# What a browser may be told while its runtime dies and comes back.
TYPED_FAILURES = {
    502: {"runtime_unreachable", "runtime_bad_response"},
    503: {"runtime_circuit_open"},
    504: {"runtime_timeout"},
}


@dataclass(frozen=True)
class Answer:
    """One input's outcome."""

    content: str
    status: int
    code: str  # "accepted" for a 202
    elapsed: float


def classify(content: str, response: requests.Response, elapsed: float) -> Answer:
    """The answer, after checking it is a 202 ack or a typed envelope (fails on anything else)."""
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"non-JSON answer {response.status_code}: {response.text[:300]!r}") from None
    if response.status_code == 202:
        assert body["runtime_id"] == RUNTIME_ID and isinstance(body["transcript_sequence"], int), body
        return Answer(content, 202, "accepted", elapsed)
    code = body["error"]["code"]
    assert code in TYPED_FAILURES.get(response.status_code, set()), (response.status_code, body)
    assert body["error"]["retryable"] is True
    if code == "runtime_circuit_open":
        assert int(response.headers["Retry-After"]) >= 1
    return Answer(content, response.status_code, code, elapsed)


def transcript_user_contents(backend: FaultBackend, worker_id: str) -> list[str]:
    """Every user input in the worker's transcript, paging through it 200 at a time."""
    contents: list[str] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        response = backend.api(
            "GET", f"runtimes/{RUNTIME_ID}/workers/{worker_id}/transcript/?start={start}&limit=200"
        )
        assert response.status_code == 200, response.text
        page = response.json()
        contents += [item["content"] for item in page["items"] if item["role"] == "user"]
        start = page["next_start"]
        pages += 1
        assert pages < 100, "transcript paging does not end"
    return contents


@pytest.mark.slow
def test_runtime_killed_and_restarted_under_200_concurrent_inputs(
    runtime_factory: RuntimeFactory, fault_backend_factory: BackendFactory
) -> None:
    runtime = runtime_factory(runtime_id=RUNTIME_ID)
    row = RuntimeRow(
        runtime_id=RUNTIME_ID,
        base_url=runtime.base_url,
        token=runtime.token,
        connect_timeout=1.0,
        read_timeout=5.0,
    )
    backend = fault_backend_factory(rows=[row])
    created = backend.api("POST", f"runtimes/{RUNTIME_ID}/workers/", {"profile": "builtin:echo"})
    assert created.status_code == 201, created.text
    worker_id = created.json()["worker_id"]
    input_path = f"runtimes/{RUNTIME_ID}/workers/{worker_id}/input/"

    answered = 0
    progress = threading.Condition()
    local = threading.local()

    def send(content: str) -> Answer:
        nonlocal answered
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        response = backend.api("POST", input_path, {"content": content}, session=session, timeout=(5.0, 30.0))
        answer = classify(content, response, time.perf_counter() - started)
        with progress:
            answered += 1
            progress.notify_all()
        return answer

    contents = [f"load-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(REQUESTS)]
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        futures = [pool.submit(send, content) for content in contents]
        with progress:
            assert progress.wait_for(lambda: answered >= KILL_AFTER, timeout=60), "the first answers never came"
        killed_at = time.monotonic()
        runtime.kill()
        runtime = runtime.restart()
        restarted_in = time.monotonic() - killed_at
        answers = [future.result(timeout=120) for future in futures]

    counts = Counter((a.status, a.code) for a in answers)
    print(
        f"\nrestart under load: runtime back in {restarted_in:.2f} s; answers {dict(sorted(counts.items()))}; "
        f"slowest {max(a.elapsed for a in answers):.2f} s"
    )
    assert len(answers) == REQUESTS
    assert counts[(202, "accepted")] >= KILL_AFTER // 2
    assert all(a.elapsed < 15 for a in answers)

    # The Backend finds the runtime again (once the breaker lets a trial call through) and takes input.
    def reachable() -> bool:
        return backend.api("GET", f"runtimes/{RUNTIME_ID}/workers/{worker_id}/").status_code == 200

    wait_until(reachable, timeout=45, interval=0.25, message="the Backend to reach the restarted runtime")
    later = [f"after-{i:02d}-{uuid.uuid4().hex[:8]}" for i in range(AFTER_RESTART)]
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS // 2) as pool:
        after = list(pool.map(send, later, timeout=120))
    assert {(a.status, a.code) for a in after} == {(202, "accepted")}

    # Nothing half-applied: each accepted input exactly once; no input twice; inputs whose answer was lost
    # in the crash may or may not be there.
    transcript = transcript_user_contents(backend, worker_id)
    seen = Counter(transcript)
    accepted = [a.content for a in answers if a.status == 202] + later
    assert [c for c in accepted if seen[c] != 1] == []
    assert [c for c, n in seen.items() if n > 1] == []
    assert set(seen) <= set(contents) | set(later)
    lost_answers = [a for a in answers if a.status != 202 and seen[a.content] == 1]
    print(
        f"transcript: {len(transcript)} user items; accepted {len(accepted)}; "
        f"applied but answered with an error (reply lost in the crash): {len(lost_answers)} "
        f"{sorted(Counter(a.code for a in lost_answers).items())}"
    )
    log = backend.log_text(2_000_000)
    assert "Internal Server Error" not in log and "Traceback" not in log, log[-3000:]
