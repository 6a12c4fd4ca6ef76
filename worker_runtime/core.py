"""The runtime core: workers, their status machine, transcripts and durable event logs.

Thread-safe and synchronous. Every event is durable (appended and fsync'd by the store) before any
subscriber sees it, so a seq once delivered is never reused after a crash. Subscribers are plain callbacks
run under the worker's lock; they must only hand the events on (for example to an asyncio queue).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker_runtime import PROTOCOL_VERSION
from worker_runtime.config import BUILTIN_KINDS, ProfileSpec, RuntimeConfig
from worker_runtime.errors import (
    InvalidRequest,
    LimitTooLarge,
    PayloadTooLarge,
    RuntimeStopped,
    WorkerExists,
    WorkerNotFound,
    WorkerNotRunning,
)
from worker_runtime.execution import FINISH_TIMEOUT, Executor, make_executor
from worker_runtime.ids import ID_PATTERN, is_valid_id, require_id
from worker_runtime.model import (
    FINAL_EVENT,
    INPUT_KINDS,
    INTENT_KINDS,
    MAX_REASON_CHARS,
    Event,
    TranscriptItem,
    WorkerRecord,
    new_epoch,
)
from worker_runtime.store import MemoryStore, Store, WorkerLog

logger = logging.getLogger(__name__)

Listener = Callable[[Sequence[Event]], None]
DEFAULT_PAGE = 50
# Limits on the per-create options of the builtins: (min, max) per key.
OPTION_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "echo": {"delay_ms": (0, 5000)},
    "burst": {"count": (1, 1_000_000), "rate": (0, 100_000)},
}


RESET_HISTORY_EXPIRED = "history_expired"
RESET_CURSOR_AHEAD = "cursor_ahead"


@dataclass
class Subscription:
    """A worker's events after a cursor: ``backlog`` now, then the listener gets every later batch.

    ``reset_earliest_seq`` is set when the cursor cannot be honoured (the backlog then starts there), with
    ``reset_reason``: ``history_expired`` (those events are gone) or ``cursor_ahead`` (the cursor is past
    the log's end: it belongs to another log of the same ids). ``epoch`` names the worker's event log;
    ``finished`` means the backlog ends the worker's log and nothing will follow.
    """

    backlog: list[Event]
    reset_earliest_seq: int | None
    finished: bool
    _close: Callable[[], None] = field(repr=False)
    epoch: str = ""
    reset_reason: str | None = None

    def close(self) -> None:
        """Stop delivering to the listener (idempotent)."""
        self._close()


class _Worker:
    """Live state of one worker (guarded by ``lock``)."""

    def __init__(self, log: WorkerLog, spec: ProfileSpec | None) -> None:
        self.record = log.record
        self.events = log.events
        self.transcript = log.transcript
        self.spec = spec
        self.lock = threading.RLock()
        self.listeners: list[Listener] = []
        self.executor: Executor | None = None
        self.pending_final: tuple[str, str | None] | None = None
        self.finished = threading.Event()
        if self.record.status != "running":
            self.finished.set()

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    @property
    def running(self) -> bool:
        return self.record.status == "running" and self.pending_final is None


class _Sink:
    """The WorkerSink an executor reports through."""

    def __init__(self, runtime: WorkerRuntime, worker: _Worker) -> None:
        self._runtime = runtime
        self._worker = worker

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.emit_batch([(kind, data)])

    def emit_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        with self._worker.lock:
            if self._worker.record.status == "running" and self._runtime._writable:
                self._runtime._append(self._worker, items)

    def reply(self, text: str) -> None:
        with self._worker.lock:
            if self._worker.record.status == "running" and self._runtime._writable:
                self._runtime._add_transcript(
                    self._worker, role="assistant", content=text, kind="text_done", key="text"
                )

    def exited(self, exit_code: int | None) -> None:
        with self._worker.lock:
            if self._runtime._writable:
                self._runtime._finish(self._worker, exit_code)


class WorkerRuntime:
    """One runtime: a set of workers over a store. ``open()`` before use, ``close()`` after."""

    def __init__(
        self,
        *,
        runtime_id: str,
        store: Store | None = None,
        config: RuntimeConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime_id = require_id(runtime_id, field="runtime_id")
        self.config = config or RuntimeConfig()
        self._store: Store = store or MemoryStore()
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._streams_open = 0
        # Events made durable since this process opened the runtime (its /metrics counter).
        self._events_written = 0
        self._events_lock = threading.Lock()
        self._state = "new"
        # False once close() has released the store: executors still running then must not write to it.
        self._writable = True
        # Answered POSTs loaded from the store; the server's idempotency cache takes them over.
        self.idempotency_entries: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"WorkerRuntime(runtime_id={self.runtime_id!r}, backend={self._store.backend!r})"

    # ----------------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Load the store and bring every worker back; raises StoreError if the store is unusable."""
        contents = self._store.open(self.runtime_id)
        self.idempotency_entries = list(contents.idempotency)
        with self._lock:
            for worker_id, log in contents.workers.items():
                self._workers[worker_id] = _Worker(log, self.config.profile(log.record.profile))
            self._state = "running"
        for worker in list(self._workers.values()):
            self._recover(worker)

    def _recover(self, w: _Worker) -> None:
        with w.lock:
            if not w.record.epoch:
                # A log kept by a store from before epochs: it gets one now, kept from here on.
                w.record.epoch = new_epoch()
                self._store.save_worker(w.record)
            self._reconcile_transcript(w)
            if not w.events:
                self._append(w, [("status", {"status": "running"})])
            last = w.events[-1]
            if last.kind == FINAL_EVENT and w.record.status == "running":
                # Crashed between the final events and the snapshot: the log is the authority.
                status, code = str(last.data.get("status", "failed")), last.data.get("exit_code")
                self._set_final(w, status, last.data.get("reason"), code if isinstance(code, int) else None)
                w.finished.set()
            if w.record.status != "running":
                return
            if w.spec is None:
                w.pending_final = ("failed", "profile_removed")
            elif w.spec.builtin is None:
                w.pending_final = ("failed", "runtime_restarted")
            else:
                w.executor = make_executor(_Sink(self, w), w.spec, w.record.worker_id, w.record.options)
                w.executor.start()
                return
        logger.info("worker_runtime.worker_lost", extra={"worker_id": w.record.worker_id})
        self._finish(w, None)

    def _reconcile_transcript(self, w: _Worker) -> None:
        """Re-add transcript items whose event is durable but whose own append was cut by a crash."""
        missing: list[TranscriptItem] = []
        for event in w.events:
            sequence = event.data.get("transcript_sequence")
            if isinstance(sequence, int) and sequence > len(w.transcript) + len(missing):
                if event.kind == "user_message":
                    role, content = str(event.data.get("kind", "user")), event.data.get("content")
                else:
                    role, content = "assistant", event.data.get("text")
                if isinstance(content, str) and sequence == len(w.transcript) + len(missing) + 1:
                    missing.append(TranscriptItem(sequence, role, content, event.seq))
        if missing:
            logger.warning("worker_runtime.transcript_recovered", extra={"worker_id": w.record.worker_id})
            self._store.append_transcript(w.record.worker_id, missing)
            w.transcript.extend(missing)

    def close(self) -> None:
        """Refuse new commands, end subprocess workers (they cannot outlive the runtime), release the store."""
        with self._lock:
            if self._state != "running":
                return
            self._state = "stopped"
            workers = list(self._workers.values())
        for w in workers:
            with w.lock:
                if not (w.running and w.spec is not None and w.spec.builtin is None and w.executor):
                    continue
                w.pending_final = ("failed", "runtime_shutdown")
                executor, grace = w.executor, w.spec.stop_grace_seconds
            executor.stop(min(grace, 2.0))
        self._writable = False
        for w in workers:
            with w.lock:  # wait out a write under way; later ones see _writable and are dropped
                pass
        self._store.close()

    def _check_running(self) -> None:
        if self._state != "running":
            raise RuntimeStopped("the runtime is not running")

    # ----------------------------------------------------------------------------------------- queries

    @property
    def events_written(self) -> int:
        """Events made durable since this process opened the runtime."""
        with self._events_lock:
            return self._events_written

    def summary(self) -> dict[str, Any]:
        """The RuntimeSummary of the protocol."""
        with self._lock:
            statuses = [w.record.status for w in self._workers.values()]
            streams = self._streams_open
        return {
            "runtime_id": self.runtime_id,
            "display_name": self.config.display_name,
            "backend": self._store.backend,
            "status": "running" if self._state == "running" else "stopped",
            "worker_count": len(statuses),
            "active_worker_count": statuses.count("running"),
            "stopped_worker_count": statuses.count("stopped"),
            "cancelled_worker_count": statuses.count("cancelled"),
            "failed_worker_count": statuses.count("failed"),
            "limits": {
                "max_transcript_projection_items": self.config.max_transcript_page,
                "max_input_bytes": self.config.max_input_bytes,
            },
            "profiles": [p.to_json() for p in self.config.profiles],
            "default_profile": self.config.default_profile,
            "protocol_version": PROTOCOL_VERSION,
            "event_streams_open": streams,
        }

    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker, oldest first."""
        with self._lock:
            workers = sorted(self._workers.values(), key=lambda w: (w.record.created_at, w.record.worker_id))
        return [self._worker_json(w) for w in workers]

    def get_worker(self, worker_id: str) -> dict[str, Any]:
        """One worker's detail."""
        return self._worker_json(self._get(worker_id))

    def transcript(self, worker_id: str, *, start: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """A bounded page of the transcript; ``start`` is a 0-based offset."""
        if start < 0:
            raise InvalidRequest("start must be >= 0")
        if limit < 1:
            raise InvalidRequest("limit must be >= 1")
        if limit > self.config.max_transcript_page:
            raise LimitTooLarge(f"limit must be <= {self.config.max_transcript_page}")
        w = self._get(worker_id)
        with w.lock:
            total = len(w.transcript)
            items = [item.to_json() for item in w.transcript[start : start + limit]]
        next_start = start + len(items) if start + len(items) < total else None
        return {
            "worker_ref": self._ref(worker_id),
            "start": start,
            "limit": limit,
            "total_items": total,
            "items": items,
            "next_start": next_start,
        }

    # ----------------------------------------------------------------------------------------- commands

    def create_worker(self, body: Any) -> dict[str, Any]:
        """Create a worker from a CreateWorker body; it starts running at once."""
        self._check_running()
        spec, selector, intent, options, initial_input, worker_id = self._parse_create(body)
        now = self._clock()
        with self._lock:
            self._check_running()
            if worker_id is None:
                worker_id = f"w-{uuid.uuid4().hex[:16]}"
            elif worker_id in self._workers:
                raise WorkerExists("a worker with that id exists")
            record = WorkerRecord(
                worker_id=worker_id,
                profile=spec.name,
                profile_selector=selector,
                intent=intent,
                options=options,
                status="running",
                created_at=now,
                updated_at=now,
                epoch=new_epoch(),
            )
            w = _Worker(WorkerLog(record=record), spec)
            self._workers[worker_id] = w
        with w.lock:
            try:
                self._store.save_worker(record)
            except BaseException:
                with self._lock:
                    del self._workers[worker_id]
                raise
            self._append(w, [("status", {"status": "running"})])
            w.executor = make_executor(_Sink(self, w), spec, worker_id, options)
            try:
                w.executor.start()
            except OSError:
                logger.warning("worker_runtime.spawn_failed", extra={"worker_id": worker_id})
                w.pending_final = ("failed", "spawn_failed")
        if w.pending_final is not None:
            self._finish(w, None)
        elif initial_input is not None:
            self.send_input(worker_id, {"kind": "user", "content": initial_input})
        return self._worker_json(w)

    def send_input(self, worker_id: str, body: Any) -> dict[str, Any]:
        """Append an input to the transcript and hand it to the worker's executor."""
        self._check_running()
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        kind = body.get("kind", "user")
        if kind not in INPUT_KINDS:
            raise InvalidRequest("kind must be 'user' or 'system'")
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            raise InvalidRequest("content must be a non-blank string")
        if len(content.encode("utf-8")) > self.config.max_input_bytes:
            raise PayloadTooLarge(f"content is over {self.config.max_input_bytes} bytes")
        w = self._get(worker_id)
        with w.lock:
            if not w.running or w.executor is None:
                state = w.record.status if w.pending_final is None else "ending"
                raise WorkerNotRunning(f"worker is {state}")
            item, event = self._add_transcript(w, role=kind, content=content, kind="user_message", key="content")
            w.executor.submit(kind, content)
        return {
            "worker_ref": self._ref(worker_id),
            "status": w.record.status,
            "transcript_sequence": item.sequence,
            "event_id": event.seq,
        }

    def stop_worker(self, worker_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """Graceful end; a no-op returning the current status when the worker is not running."""
        return self._end(worker_id, "stopped", reason)

    def cancel_worker(self, worker_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """Immediate end; a no-op returning the current status when the worker is not running."""
        return self._end(worker_id, "cancelled", reason)

    def _end(self, worker_id: str, final: str, reason: str | None) -> dict[str, Any]:
        self._check_running()
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
            raise InvalidRequest(f"reason must be a string of at most {MAX_REASON_CHARS} characters")
        w = self._get(worker_id)
        with w.lock:
            executor, pending = w.executor, w.pending_final
            act = w.record.status == "running" and executor is not None
            if act and pending is not None and not (final == "cancelled" and pending[0] == "stopped"):
                act = False  # an equal or stronger end is already under way: wait for it
            if act:
                w.pending_final = (final, reason)
        if act and executor is not None:
            grace = w.spec.stop_grace_seconds if w.spec else 5.0
            if final == "cancelled":
                executor.cancel()
            else:
                executor.stop(grace)
            w.finished.wait(grace + FINISH_TIMEOUT)
        elif w.record.status == "running":
            w.finished.wait(FINISH_TIMEOUT)
        with w.lock:
            return {"worker_ref": self._ref(worker_id), "status": w.record.status, "event_id": w.last_seq}

    # ----------------------------------------------------------------------------------------- events

    def subscribe(self, worker_id: str, *, after: int | None, listener: Listener) -> Subscription:
        """Events after ``after`` (``None`` = live only, ``0`` = from the first); see Subscription."""
        if after is not None and after < 0:
            raise InvalidRequest("after must be >= 0")
        self._check_running()
        w = self._get(worker_id)
        with w.lock:
            earliest = w.events[0].seq
            finished = w.record.status != "running"
            reset: int | None = None
            reason: str | None = None
            if after is None:
                # Live only; a finished worker still tells how it ended, so nobody waits forever.
                backlog = [w.events[-1]] if finished else []
            elif after + 1 < earliest:
                reset, reason, backlog = earliest, RESET_HISTORY_EXPIRED, list(w.events)
            elif after > w.last_seq:
                # Seqs are never reused within one log: a cursor past its end was handed out by another log
                # under the same ids (a wiped store). Say so instead of waiting for seqs that mean nothing.
                reset, reason, backlog = earliest, RESET_CURSOR_AHEAD, list(w.events)
            else:
                backlog = w.events[after + 1 - earliest :]
            epoch = w.record.epoch
            if not finished:
                w.listeners.append(listener)
        with self._lock:
            self._streams_open += 1
        closed = threading.Event()

        def close() -> None:
            with w.lock:  # check-and-set under the lock: two closers must not both count down
                if closed.is_set():
                    return
                closed.set()
                if listener in w.listeners:
                    w.listeners.remove(listener)
            with self._lock:
                self._streams_open -= 1

        return Subscription(
            backlog=backlog,
            reset_earliest_seq=reset,
            finished=finished,
            _close=close,
            epoch=epoch,
            reset_reason=reason,
        )

    # ----------------------------------------------------------------------------------------- internals

    def _get(self, worker_id: str) -> _Worker:
        if not is_valid_id(worker_id):
            raise InvalidRequest(f"worker_id must match {ID_PATTERN}")
        with self._lock:
            w = self._workers.get(worker_id)
        if w is None:
            raise WorkerNotFound("no such worker")
        return w

    def _ref(self, worker_id: str) -> dict[str, str]:
        return {"runtime_id": self.runtime_id, "worker_id": worker_id}

    def _worker_json(self, w: _Worker) -> dict[str, Any]:
        with w.lock:
            record = w.record
            return {
                "worker_ref": self._ref(record.worker_id),
                "runtime_id": self.runtime_id,
                "worker_id": record.worker_id,
                "status": record.status,
                "profile": record.profile,
                "intent": record.intent,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
                "transcript_len": len(w.transcript),
                "last_seq": w.last_seq,
                "reason": record.reason,
                "exit_code": record.exit_code,
                "epoch": record.epoch,
            }

    def _append(self, w: _Worker, items: Sequence[tuple[str, dict[str, Any]]]) -> list[Event]:
        """Make events durable, then hand them to subscribers. Caller holds ``w.lock``."""
        now, first = self._clock(), w.last_seq + 1
        events = [
            Event.make(seq=first + i, worker_id=w.record.worker_id, kind=kind, data=data, ts=now)
            for i, (kind, data) in enumerate(items)
        ]
        self._store.append_events(w.record.worker_id, events)
        with self._events_lock:
            self._events_written += len(events)
        w.events.extend(events)
        retention = self.config.event_retention
        if len(w.events) > retention + max(1, retention // 4):
            del w.events[:-retention]
            self._store.rewrite_events(w.record.worker_id, w.events)
        for listener in list(w.listeners):
            try:
                listener(events)
            except Exception:
                logger.exception("worker_runtime.listener_failed", extra={"worker_id": w.record.worker_id})
                w.listeners.remove(listener)
        return events

    def _add_transcript(
        self, w: _Worker, *, role: str, content: str, kind: str, key: str
    ) -> tuple[TranscriptItem, Event]:
        with w.lock:
            sequence = len(w.transcript) + 1
            data: dict[str, Any] = {key: content, "transcript_sequence": sequence}
            if kind == "user_message":
                data["kind"] = role
            (event,) = self._append(w, [(kind, data)])
            item = TranscriptItem(sequence=sequence, role=role, content=content, event_id=event.seq)
            self._store.append_transcript(w.record.worker_id, [item])
            w.transcript.append(item)
            return item, event

    def _finish(self, w: _Worker, exit_code: int | None) -> None:
        """Record how a worker ended (idempotent): final events first, then the snapshot."""
        with w.lock:
            if w.record.status != "running":
                return
            if w.pending_final is not None:
                status, reason = w.pending_final
            elif exit_code == 0:
                status, reason = "stopped", "exited"
            else:
                status, reason = "failed", "exited"
            self._append(
                w,
                [
                    ("status", {"status": status, "reason": reason}),
                    (FINAL_EVENT, {"status": status, "exit_code": exit_code, "reason": reason}),
                ],
            )
            self._set_final(w, status, reason, exit_code)
            w.listeners.clear()
        w.finished.set()

    def _set_final(self, w: _Worker, status: str, reason: Any, exit_code: int | None) -> None:
        w.record.status = status
        w.record.reason = reason if isinstance(reason, str) else None
        w.record.exit_code = exit_code
        w.record.updated_at = self._clock()
        w.pending_final = None
        self._store.save_worker(w.record)

    def _parse_create(
        self, body: Any
    ) -> tuple[ProfileSpec, dict[str, Any], dict[str, Any], dict[str, Any], str | None, str | None]:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        intent = body.get("intent")
        if not isinstance(intent, dict) or intent.get("kind") not in INTENT_KINDS:
            raise InvalidRequest(f"intent.kind must be one of {', '.join(INTENT_KINDS)}")
        selector = body.get("profile")
        spec = self._resolve_profile(selector)
        assert isinstance(selector, dict)
        initial_input = body.get("initial_input")
        if initial_input is not None and (not isinstance(initial_input, str) or not initial_input.strip()):
            raise InvalidRequest("initial_input must be a non-blank string")
        if isinstance(initial_input, str) and len(initial_input.encode("utf-8")) > self.config.max_input_bytes:
            raise PayloadTooLarge(f"initial_input is over {self.config.max_input_bytes} bytes")
        worker_id = body.get("worker_id")
        if worker_id is not None:
            require_id(worker_id, field="worker_id")
        options = self._parse_options(spec, body.get("options"))
        return spec, dict(selector), dict(intent), options, initial_input, worker_id

    def _resolve_profile(self, selector: Any) -> ProfileSpec:
        if not isinstance(selector, dict) or selector.get("kind") not in ("runtime_default", "builtin", "named"):
            raise InvalidRequest("profile.kind must be runtime_default, builtin or named")
        kind, value = selector["kind"], selector.get("value")
        if kind == "runtime_default":
            name = self.config.default_profile
        elif not isinstance(value, str) or not value.strip():
            raise InvalidRequest("profile.value must be a non-blank string")
        elif kind == "builtin":
            name = value if value.startswith("builtin:") else f"builtin:{value}"
            if name.removeprefix("builtin:") not in BUILTIN_KINDS:
                raise InvalidRequest("unknown builtin profile")
        else:
            name = value
            if name.startswith("builtin:"):
                raise InvalidRequest("a named profile cannot be a builtin")
        spec = self.config.profile(name)
        if spec is None:
            raise InvalidRequest("unknown profile")
        return spec

    def _parse_options(self, spec: ProfileSpec, raw: Any) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidRequest("options must be an object")
        bounds = OPTION_BOUNDS.get(spec.builtin or "", {})
        for key, value in raw.items():
            if key not in bounds:
                raise InvalidRequest(f"option {key!r} is not supported by profile {spec.name!r}")
            low, high = bounds[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidRequest(f"option {key!r} must be a number in [{low:g}, {high:g}]")
        return {**spec.options, **raw}
