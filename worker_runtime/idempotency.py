"""Idempotency-Key support for the runtime's POST routes: the first answer of a request, replayed.

A key names one request (method + path + body). Within the TTL (24 h) the same key with the same request
gets the first answer again (status and body) without a second effect; the same key with another request
is refused with ``idempotency_key_reused``. Entries are durable: each is one JSON line of the store's
``idempotency.jsonl`` ``{"key", "fingerprint", "status", "body", "created_at"}``, reloaded at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from worker_runtime.errors import IdempotencyConflict, InvalidRequest
from worker_runtime.model import compact_json
from worker_runtime.store import Store

logger = logging.getLogger(__name__)

IDEMPOTENCY_TTL_SECONDS = 24 * 3600.0
MAX_KEY_CHARS = 255
MAX_ENTRIES = 100_000
# Visible ASCII only: a key is an opaque token chosen by the client.
_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_CHARS}}}")
# Answers that depend on state that can change later; replaying them would be wrong.
UNCACHED_CODES = frozenset(
    {"worker_not_found", "runtime_stopped", "unauthorized", "idempotency_key_reused", "not_found"}
)


def parse_key(value: str | None) -> str | None:
    """The Idempotency-Key header's value, or None when absent; ``invalid_request`` when malformed."""
    if value is None:
        return None
    if not _KEY_RE.fullmatch(value):
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters")
    return value


def request_fingerprint(*, method: str, path: str, body: bytes) -> str:
    """A digest naming one request; ``body`` should be canonical (see ``canonical_body``)."""
    digest = hashlib.sha256()
    for part in (method.upper().encode("ascii"), path.encode("utf-8", "surrogateescape"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def canonical_body(parsed: Any, raw: bytes, *, parsed_ok: bool) -> bytes:
    """The body as compared between requests: sorted compact JSON when it parsed, else the raw bytes."""
    if not parsed_ok:
        return b"raw:" + raw
    if parsed is None:
        return b"empty"
    return b"json:" + compact_json(_sorted(parsed)).encode("utf-8")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def is_replayable(status: int, body: dict[str, Any]) -> bool:
    """Whether an answer is kept for replay: 2xx, and 4xx that the same request would get again."""
    if 200 <= status < 300:
        return True
    if not 400 <= status < 500:
        return False
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code not in UNCACHED_CODES


@dataclass(frozen=True)
class StoredAnswer:
    """The first answer given to a key (``replayed``: given again, not made now)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class _Entry:
    key: str
    fingerprint: str
    status: int
    body: dict[str, Any]
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "body": self.body,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> _Entry:
        if not isinstance(raw, dict):
            raise ValueError("entry is not an object")
        key, fingerprint, status = raw["key"], raw["fingerprint"], raw["status"]
        body, created_at = raw["body"], raw["created_at"]
        if not (isinstance(key, str) and isinstance(fingerprint, str) and isinstance(body, dict)):
            raise ValueError("entry has fields of the wrong type")
        if not isinstance(status, int) or isinstance(status, bool):
            raise ValueError("entry status is not an integer")
        return cls(key=key, fingerprint=fingerprint, status=status, body=body, created_at=float(created_at))


class IdempotencyCache:
    """Answered POSTs by Idempotency-Key, durable through the store; thread-safe.

    ``hold(key)`` serialises requests that share a key (on the server's event loop), so two concurrent
    requests with one key never both take effect: the second waits and then finds the first answer.
    In-process callers use ``answer_once`` (``hold_blocking`` from threads); one cache serves one kind.
    """

    def __init__(
        self,
        store: Store,
        entries: Iterable[Any] = (),
        *,
        ttl: float = IDEMPOTENCY_TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._appended = 0
        # key -> (its lock, how many hold or wait on it): asyncio locks from the server, threading ones in-process.
        self._key_locks: dict[str, tuple[Any, int]] = {}
        # Not self._lock: that one is held across store writes, and the server's event loop takes this one.
        self._key_locks_guard = threading.Lock()
        loaded = dropped = 0
        now = clock()
        for raw in entries:
            loaded += 1
            try:
                entry = _Entry.from_json(raw)
            except (KeyError, ValueError, TypeError):
                dropped += 1
                continue
            if entry.created_at + ttl <= now:
                dropped += 1
                continue
            self._entries.pop(entry.key, None)  # a later line for a key wins, and moves to the end
            self._entries[entry.key] = entry
        if dropped or len(self._entries) != loaded:
            self._compact(now)

    def __repr__(self) -> str:
        return f"IdempotencyCache(entries={len(self._entries)})"

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _take(self, key: str, make: Callable[[], Any]) -> Any:
        """The lock of ``key`` (made by ``make`` when nobody holds or waits on it), counted as used once more."""
        with self._key_locks_guard:
            lock, users = self._key_locks.get(key, (None, 0))
            if lock is None:
                lock = make()
            self._key_locks[key] = (lock, users + 1)
            return lock

    def _drop(self, key: str) -> None:
        with self._key_locks_guard:
            lock, users = self._key_locks[key]
            if users <= 1:
                del self._key_locks[key]
            else:
                self._key_locks[key] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the per-key lock (event-loop side; the lock is dropped when nobody waits on it)."""
        lock: asyncio.Lock = self._take(key, asyncio.Lock)
        try:
            async with lock:
                yield
        finally:
            self._drop(key)

    @contextlib.contextmanager
    def hold_blocking(self, key: str) -> Iterator[None]:
        """Hold the per-key lock from a thread (in-process callers such as the Backend's embedded runtime)."""
        lock: threading.Lock = self._take(key, threading.Lock)
        try:
            with lock:
                yield
        finally:
            self._drop(key)

    def answer_once(
        self, key: str, fingerprint: str, run: Callable[[], tuple[int, dict[str, Any]]]
    ) -> StoredAnswer:
        """The answer to the request ``fingerprint`` sent with ``key``: the first one when there was one
        (``replayed``), else what ``run()`` answers now (kept when replayable). Blocking; raises
        IdempotencyConflict when ``key`` named another request."""
        with self.hold_blocking(key):
            stored = self.lookup(key, fingerprint)
            if stored is not None:
                return StoredAnswer(status=stored.status, body=stored.body, replayed=True)
            status, body = run()
            if is_replayable(status, body):
                self.record(key, fingerprint, status, body)
            return StoredAnswer(status=status, body=body)

    def lookup(self, key: str, fingerprint: str) -> StoredAnswer | None:
        """The first answer for ``key``, None if unseen or expired; raises IdempotencyConflict on reuse."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.created_at + self._ttl <= self._clock():
                del self._entries[key]
                return None
        if entry.fingerprint != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request")
        return StoredAnswer(status=entry.status, body=entry.body)

    def record(self, key: str, fingerprint: str, status: int, body: dict[str, Any]) -> None:
        """Keep an answer for replay (memory first; the store append is logged, not raised, on failure)."""
        now = self._clock()
        entry = _Entry(key=key, fingerprint=fingerprint, status=status, body=body, created_at=now)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = entry
            self._appended += 1
            try:
                if len(self._entries) > self._max_entries or self._appended > max(1024, len(self._entries)):
                    self._compact(now)
                else:
                    self._store.append_idempotency(entry.to_json())
            except OSError:
                logger.exception("worker_runtime.idempotency.persist_failed")

    def _compact(self, now: float) -> None:
        """Drop expired entries (and the oldest beyond the cap), then rewrite the store's file."""
        live = [e for e in self._entries.values() if e.created_at + self._ttl > now]
        live = live[-self._max_entries :]
        self._entries = {e.key: e for e in live}
        self._appended = 0
        self._store.rewrite_idempotency([e.to_json() for e in live])
