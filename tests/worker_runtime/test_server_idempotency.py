"""Idempotency-Key on the runtime's POST routes: one effect per key, durable across restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.runtime_process import (
    ECHO_CREATE,
    RuntimeProcess,
    api_get,
    api_post,
    create_worker,
    runtime_summary,
    wait_until,
    worker_detail,
)
from worker_runtime.errors import IdempotencyConflict
from worker_runtime.idempotency import IdempotencyCache, is_replayable, request_fingerprint


def user_items(rt: RuntimeProcess, worker_id: str) -> list[str]:
    items = api_get(rt, f"/v1/workers/{worker_id}/transcript").json()["transcript"]["items"]
    return [i["content"] for i in items if i["role"] == "user"]


def keyed_input(rt: RuntimeProcess, worker_id: str, key: str, content: str) -> Any:
    return api_post(
        rt,
        f"/v1/workers/{worker_id}/input",
        {"kind": "user", "content": content},
        headers={"Idempotency-Key": key},
    )


def test_same_key_same_body_has_one_effect(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    first = keyed_input(rt, worker_id, "key-1", "hello")
    second = keyed_input(rt, worker_id, "key-1", "hello")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    assert user_items(rt, worker_id) == ["hello"]


def test_same_key_with_another_body_or_route_is_refused(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    assert keyed_input(rt, worker_id, "key-2", "hello").status_code == 200
    other = keyed_input(rt, worker_id, "key-2", "goodbye")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    stop = api_post(rt, f"/v1/workers/{worker_id}/stop", headers={"Idempotency-Key": "key-2"})
    assert stop.status_code == 422
    assert worker_detail(rt, worker_id)["status"] == "running"
    assert user_items(rt, worker_id) == ["hello"]


def test_key_order_and_whitespace_of_the_body_do_not_matter(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    path = f"/v1/workers/{worker_id}/input"
    headers = {"Idempotency-Key": "key-3", "Content-Type": "application/json"}
    first = api_post(rt, path, data=b'{"kind":"user","content":"hi"}', headers=headers)
    second = api_post(rt, path, data=b'{ "content": "hi",\n  "kind": "user" }', headers=headers)
    assert second.status_code == 200 and second.json() == first.json()


def test_concurrent_requests_with_one_key_take_effect_once(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: keyed_input(rt, worker_id, "key-4", "once"), range(8)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.text for r in responses}) == 1
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    assert user_items(rt, worker_id) == ["once"]


def test_create_with_a_key_creates_one_worker(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    headers = {"Idempotency-Key": "create-1"}
    first = api_post(rt, "/v1/workers", ECHO_CREATE, headers=headers)
    second = api_post(rt, "/v1/workers", ECHO_CREATE, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["worker"]["worker_id"] == second.json()["worker"]["worker_id"]
    assert runtime_summary(rt)["worker_count"] == 1


@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_replay_survives_a_restart(runtime_process: RuntimeProcess, how: str) -> None:
    rt = runtime_process
    worker_id = create_worker(rt)["worker_id"]
    first = keyed_input(rt, worker_id, "key-5", "durable")
    assert first.status_code == 200
    wait_until(lambda: worker_detail(rt, worker_id)["transcript_len"] == 2)
    if how == "sigterm":
        assert rt.stop() == 0
    else:
        rt.kill()
    restarted = rt.restart()
    again = keyed_input(restarted, worker_id, "key-5", "durable")
    assert again.status_code == 200 and again.json() == first.json()
    assert keyed_input(restarted, worker_id, "key-5", "changed").status_code == 422
    assert user_items(restarted, worker_id) == ["durable"]


def test_answers_that_depend_on_state_are_not_replayed(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    missing = keyed_input(rt, "later", "key-6", "hi")
    assert missing.status_code == 404
    create_worker(rt, worker_id="later")
    found = keyed_input(rt, "later", "key-6", "hi")
    assert found.status_code == 200
    assert user_items(rt, "later") == ["hi"]


# --------------------------------------------------------------------------------------------- the cache


class RecordingStore:
    """The two idempotency methods of a Store, recorded."""

    backend = "memory"

    def __init__(self) -> None:
        self.appended: list[dict[str, Any]] = []
        self.rewrites: list[list[dict[str, Any]]] = []

    def append_idempotency(self, entry: dict[str, Any]) -> None:
        self.appended.append(entry)

    def rewrite_idempotency(self, entries: Sequence[dict[str, Any]]) -> None:
        self.rewrites.append(list(entries))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_cache(store: RecordingStore, entries: Sequence[Any] = (), **kwargs: Any) -> IdempotencyCache:
    return IdempotencyCache(store, entries, **kwargs)  # type: ignore[arg-type]


def test_cache_replays_until_the_ttl_then_forgets() -> None:
    store, clock = RecordingStore(), Clock()
    cache = make_cache(store, clock=clock, ttl=100)
    fp = request_fingerprint(method="POST", path="/v1/workers", body=b"json:{}")
    assert cache.lookup("k", fp) is None
    cache.record("k", fp, 201, {"worker": {"worker_id": "w1"}})
    assert store.appended[0]["key"] == "k" and store.appended[0]["status"] == 201
    stored = cache.lookup("k", fp)
    assert stored is not None and stored.status == 201 and stored.body == {"worker": {"worker_id": "w1"}}
    with pytest.raises(IdempotencyConflict):
        cache.lookup("k", "another fingerprint")
    clock.now += 100
    assert cache.lookup("k", "another fingerprint") is None


def test_cache_reload_drops_expired_and_malformed_entries() -> None:
    store, clock = RecordingStore(), Clock()
    live = {"key": "a", "fingerprint": "f", "status": 200, "body": {"ack": {}}, "created_at": clock.now - 10}
    old = {**live, "key": "b", "created_at": clock.now - 200}
    cache = make_cache(store, [live, old, {"key": "c"}, "junk"], clock=clock, ttl=100)
    assert len(cache) == 1 and cache.lookup("a", "f") is not None
    assert store.rewrites == [[live]]
    untouched = RecordingStore()
    make_cache(untouched, [live], clock=clock, ttl=100)
    assert untouched.rewrites == []


def test_cache_compacts_and_caps_its_entries() -> None:
    store, clock = RecordingStore(), Clock()
    cache = make_cache(store, clock=clock, ttl=100, max_entries=3)
    for i in range(5):
        cache.record(f"k{i}", "f", 200, {})
        clock.now += 1
    assert len(cache) == 3
    assert [e["key"] for e in store.rewrites[-1]] == ["k2", "k3", "k4"]


def test_per_key_lock_serialises_one_key_only() -> None:
    cache = make_cache(RecordingStore())
    order: list[str] = []

    async def use(key: str, label: str, pause: float) -> None:
        async with cache.hold(key):
            order.append(f"{label}-in")
            await asyncio.sleep(pause)
            order.append(f"{label}-out")

    async def main() -> None:
        await asyncio.gather(use("x", "a", 0.05), use("x", "b", 0), use("y", "c", 0))

    asyncio.run(main())
    assert order.index("a-out") < order.index("b-in")
    assert order.index("c-in") < order.index("a-out")
    assert cache._key_locks == {}


@pytest.mark.parametrize(
    ("status", "code", "replayable"),
    [
        (200, None, True),
        (201, None, True),
        (400, "invalid_request", True),
        (409, "worker_not_running", True),
        (404, "worker_not_found", False),
        (409, "runtime_stopped", False),
        (500, "internal_error", False),
    ],
)
def test_which_answers_are_replayed(status: int, code: str | None, replayable: bool) -> None:
    body: dict[str, Any] = {"error": {"code": code, "message": "m"}} if code else {"ack": {}}
    assert is_replayable(status, body) is replayable
