"""The RuntimeHandle of the embedded runtime: the ``worker_runtime`` core, in-process, no HTTP.

The core answers with the same JSON the runtime server sends, so it goes through the same parsers as a
remote runtime's answers: one implementation of worker semantics, one shape. Its store lives under the
Backend's data dir; a store held by another process makes the runtime unavailable with a typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtimes import metrics
from runtimes.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    RuntimeRejected,
    RuntimeUnreachable,
    StoreNotOwned,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.base import EventSink
from runtimes.handles.parse import parse_ack, parse_event, parse_summary, parse_transcript, parse_worker
from runtimes.types import (
    FINAL_EVENT,
    RESET_HISTORY_EXPIRED,
    Ack,
    Capabilities,
    RuntimeKind,
    RuntimeSummary,
    StreamReset,
    TranscriptPage,
    WorkerDetail,
    WorkerEvent,
    WorkerSpec,
)
from worker_runtime.config import RuntimeConfig
from worker_runtime.core import Subscription, WorkerRuntime
from worker_runtime.errors import IdempotencyConflict, RuntimeApiError, StoreError, StoreLocked
from worker_runtime.idempotency import (
    IdempotencyCache,
    StoredAnswer,
    canonical_body,
    parse_key,
    request_fingerprint,
)
from worker_runtime.ids import ID_PATTERN, is_valid_id, path_component
from worker_runtime.model import Event
from worker_runtime.store import FsStore

logger = logging.getLogger(__name__)
T = TypeVar("T")
E = TypeVar("E", bound=RuntimeUnreachable)


class EmbeddedEventStream:
    """A worker's events from the in-process core: backlog first, then live batches from its listener."""

    def __init__(self, core: WorkerRuntime, *, runtime_id: str, worker_id: str, after: int | None) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self._queue: queue.SimpleQueue[Sequence[Event] | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._subscription: Subscription = core.subscribe(worker_id, after=after, listener=self._queue.put)
        self.epoch: str | None = self._subscription.epoch or None

    def __repr__(self) -> str:
        return f"EmbeddedEventStream(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    def __iter__(self) -> Iterator[WorkerEvent | StreamReset]:
        subscription = self._subscription
        try:
            if subscription.reset_earliest_seq is not None:
                yield StreamReset(
                    reason=subscription.reset_reason or RESET_HISTORY_EXPIRED,
                    earliest_seq=subscription.reset_earliest_seq,
                    epoch=self.epoch,
                )
            batch: Sequence[Event] | None = subscription.backlog
            while batch is not None and not self._closed.is_set():
                for event in batch:
                    item = parse_event(
                        event.kind, event.to_json(), runtime_id=self.runtime_id, worker_id=self.worker_id
                    )
                    yield item
                    if isinstance(item, WorkerEvent) and item.event == FINAL_EVENT:
                        return
                if subscription.finished:
                    return
                batch = self._queue.get()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the stream; a blocked iteration ends (safe from any thread)."""
        if not self._closed.is_set():
            self._closed.set()
            self._subscription.close()
            self._queue.put(None)


class EmbeddedLiveEvents:
    """A worker's events from the in-process core pushed to a sink on the event loop: the backlog, then
    each batch the core's listener hands over (one hand-off per batch, from the thread that logged it)."""

    def __init__(self, *, runtime_id: str, worker_id: str, sink: EventSink) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._subscription: Subscription | None = None
        self._closed = False
        self.epoch: str | None = None  # the worker event log's epoch, once started

    def __repr__(self) -> str:
        return f"EmbeddedLiveEvents(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    def start(self, core: WorkerRuntime, *, after: int | None) -> None:
        """Subscribe to the core (any thread); the backlog and every later batch go to the loop."""
        subscription = core.subscribe(self.worker_id, after=after, listener=self._hand_over)
        self._subscription = subscription
        self.epoch = subscription.epoch or None
        if subscription.reset_earliest_seq is not None:
            reset = StreamReset(
                reason=subscription.reset_reason or RESET_HISTORY_EXPIRED,
                earliest_seq=subscription.reset_earliest_seq,
                epoch=self.epoch,
            )
            self._loop.call_soon_threadsafe(self._deliver_reset, reset)
        self._hand_over(subscription.backlog)
        if subscription.finished:
            # The backlog ends the log: nothing follows (a cursor at the end of a finished worker's log).
            self._loop.call_soon_threadsafe(self._end_finished)

    def _end_finished(self) -> None:
        if not self._closed:
            self.close()
            self._sink.event_end(None)

    def _hand_over(self, batch: Sequence[Event]) -> None:
        if batch and not self._closed:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                self._loop.call_soon_threadsafe(self._deliver, list(batch))

    def _deliver_reset(self, reset: StreamReset) -> None:
        if not self._closed:
            self._sink.event_item(reset)

    def _deliver(self, batch: list[Event]) -> None:
        for event in batch:
            if self._closed:
                return
            item = parse_event(event.kind, event.to_json(), runtime_id=self.runtime_id, worker_id=self.worker_id)
            self._sink.event_item(item)
            if isinstance(item, WorkerEvent) and item.event == FINAL_EVENT:
                self.close()
                self._sink.event_end(None)
                return

    def pause_reading(self) -> None:
        """Nothing to hold back: the core hands over what it logged, batch by batch."""

    def resume_reading(self) -> None:
        """See ``pause_reading``."""

    def close(self) -> None:
        """Stop delivering (no ``event_end``)."""
        self._closed = True
        if self._subscription is not None:
            self._subscription.close()


class EmbeddedRuntimeHandle:
    """Runs a ``WorkerRuntime`` inside the Backend process, opened on first use."""

    kind: RuntimeKind = "embedded"

    def __init__(self, runtime_id: str, *, data_dir: Path, config: RuntimeConfig | None = None) -> None:
        self.runtime_id = runtime_id
        self._store_dir = Path(data_dir) / "embedded" / path_component(runtime_id)
        self._config = config or RuntimeConfig(display_name=f"Embedded runtime {runtime_id}")
        self._lock = threading.Lock()
        self._core: WorkerRuntime | None = None
        self._idempotency: IdempotencyCache | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRuntimeHandle(runtime_id={self.runtime_id!r})"

    def _runtime(self) -> WorkerRuntime:
        with self._lock:
            if self._core is None:
                store = FsStore(self._store_dir)
                core = WorkerRuntime(runtime_id=self.runtime_id, store=store, config=self._config)
                try:
                    core.open()
                    # The answered commands kept in the store, as the runtime server keeps them.
                    self._idempotency = IdempotencyCache(store, core.idempotency_entries)
                except StoreLocked as exc:
                    core.close()
                    raise self._store_not_owned() from exc
                except (StoreError, OSError) as exc:
                    # A failure after the lock was taken must not leave the store locked by a core nobody holds.
                    core.close()
                    raise self._store_unavailable() from exc
                core.idempotency_entries = []
                self._core = core
            return self._core

    def _store_unavailable(self) -> RuntimeUnreachable:
        """The typed error of a store that cannot be used. The message of a StoreError or OSError names
        paths: it stays out of logs and answers."""
        return self._store_error(
            RuntimeUnreachable, "store_unusable", "is unavailable: its store is in use or unreadable"
        )

    def _store_not_owned(self) -> StoreNotOwned:
        """The store is locked by another process: the one that serves this runtime (a second process, such
        as a management command, cannot use it while that one runs)."""
        return self._store_error(
            StoreNotOwned, "store_locked", "is served by another process: its store is locked"
        )

    def _store_error(self, error: type[E], reason: str, what: str) -> E:
        logger.warning(
            "runtimes.embedded.store_unavailable",
            extra={"runtime_id": self.runtime_id, "code": error.code, "reason": reason},
        )
        return error(runtime_id=self.runtime_id, message=f"embedded runtime {self.runtime_id} {what}")

    def _call(self, operation: Callable[[WorkerRuntime], T], *, route: str, worker_id: str | None = None) -> T:
        """Run ``operation`` on the core, typed like a remote answer and counted like an upstream request."""
        with metrics.upstream_request(self.runtime_id, route):
            if worker_id is not None and not is_valid_id(worker_id):
                fields = {"worker_id": [f"must match {ID_PATTERN}"]}
                raise InvalidRequest(runtime_id=self.runtime_id, fields=fields)
            core = self._runtime()
            try:
                return operation(core)
            except RuntimeApiError as exc:
                raise self._translate(exc, worker_id) from exc
            except (StoreError, OSError) as exc:
                # A store write failing mid-command (disk full, permissions): typed, never a path in a traceback.
                raise self._store_unavailable() from exc

    def _translate(self, exc: RuntimeApiError, worker_id: str | None) -> YoiError:
        """The embedded twin of the remote status mapping: the runtime's own codes, typed the same way."""
        if exc.code == "worker_not_found":
            return WorkerNotFound(runtime_id=self.runtime_id, worker_id=worker_id)
        if exc.code == IdempotencyConflict.code:
            return IdempotencyKeyReused(runtime_id=self.runtime_id, worker_id=worker_id)
        return RuntimeRejected(
            upstream_code=exc.code,
            upstream_status=exc.status,
            detail=exc.message,
            runtime_id=self.runtime_id,
            worker_id=worker_id,
        )

    def summary(self) -> RuntimeSummary:
        return parse_summary(self._call(lambda core: core.summary(), route="summary"), runtime_id=self.runtime_id)

    def capabilities(self) -> Capabilities:
        return self.summary().capabilities

    def list_workers(self) -> list[WorkerDetail]:
        bodies = self._call(lambda core: core.list_workers(), route="list_workers")
        return [parse_worker(body, runtime_id=self.runtime_id) for body in bodies]

    def get_worker(self, worker_id: str) -> WorkerDetail:
        body = self._call(lambda core: core.get_worker(worker_id), route="get_worker", worker_id=worker_id)
        return parse_worker(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def create_worker(self, spec: WorkerSpec, *, idempotency_key: str | None = None) -> WorkerDetail:
        request = spec.to_protocol()
        body = self._command(
            "/v1/workers",
            request,
            lambda core: core.create_worker(request),
            route="create_worker",
            envelope=("worker", 201),
            idempotency_key=idempotency_key,
            worker_id=spec.worker_id,
        )
        return parse_worker(body, runtime_id=self.runtime_id, worker_id=spec.worker_id)

    def send_input(
        self, worker_id: str, *, content: str, kind: str = "user", idempotency_key: str | None = None
    ) -> Ack:
        request: dict[str, Any] = {"kind": kind, "content": content}
        body = self._command(
            f"/v1/workers/{worker_id}/input",
            request,
            lambda core: core.send_input(worker_id, request),
            route="send_input",
            idempotency_key=idempotency_key,
            worker_id=worker_id,
        )
        return parse_ack(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def stop_worker(self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None) -> Ack:
        return self._end("stop", worker_id, reason=reason, idempotency_key=idempotency_key)

    def cancel_worker(
        self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Ack:
        return self._end("cancel", worker_id, reason=reason, idempotency_key=idempotency_key)

    def _end(self, action: str, worker_id: str, *, reason: str | None, idempotency_key: str | None) -> Ack:
        def operation(core: WorkerRuntime) -> dict[str, Any]:
            end = core.stop_worker if action == "stop" else core.cancel_worker
            return end(worker_id, reason=reason)

        body = self._command(
            f"/v1/workers/{worker_id}/{action}",
            {} if reason is None else {"reason": reason},
            operation,
            route=f"{action}_worker",
            idempotency_key=idempotency_key,
            worker_id=worker_id,
        )
        return parse_ack(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def _command(
        self,
        path: str,
        request: dict[str, Any],
        operation: Callable[[WorkerRuntime], dict[str, Any]],
        *,
        route: str,
        idempotency_key: str | None,
        worker_id: str | None,
        envelope: tuple[str, int] = ("ack", 200),
    ) -> dict[str, Any]:
        """Run a command, once per Idempotency-Key as the runtime server does: the same key and request
        (path + body, fingerprinted alike) get the first answer again, kept in the store's idempotency log."""
        if idempotency_key is None:
            return self._call(operation, route=route, worker_id=worker_id)
        name, success = envelope
        body = canonical_body(request, b"", parsed_ok=True)
        fingerprint = request_fingerprint(method="POST", path=path, body=body)

        def once(core: WorkerRuntime) -> StoredAnswer:
            key = parse_key(idempotency_key)
            assert key is not None and self._idempotency is not None

            def run() -> tuple[int, dict[str, Any]]:
                try:
                    return success, {name: operation(core)}
                except RuntimeApiError as exc:
                    return exc.status, exc.to_json()

            return self._idempotency.answer_once(key, fingerprint, run)

        answer = self._call(once, route=route, worker_id=worker_id)
        if 200 <= answer.status < 300:
            result: dict[str, Any] = answer.body[name]
            return result
        error = answer.body.get("error") or {}
        replayed = RuntimeApiError(str(error.get("message", "")), code=error.get("code"), status=answer.status)
        raise self._translate(replayed, worker_id)

    def transcript(self, worker_id: str, *, start: int, limit: int) -> TranscriptPage:
        body = self._call(
            lambda core: core.transcript(worker_id, start=start, limit=limit),
            route="transcript",
            worker_id=worker_id,
        )
        return parse_transcript(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def open_events(self, worker_id: str, *, after: int | None) -> EmbeddedEventStream:
        return self._call(
            lambda core: EmbeddedEventStream(core, runtime_id=self.runtime_id, worker_id=worker_id, after=after),
            route="open_events",
            worker_id=worker_id,
        )

    async def watch_events(self, worker_id: str, *, after: int | None, sink: EventSink) -> EmbeddedLiveEvents:
        """The worker's live stream pushed to ``sink`` on the running loop (the core opens on a thread)."""
        live = EmbeddedLiveEvents(runtime_id=self.runtime_id, worker_id=worker_id, sink=sink)
        await asyncio.to_thread(
            self._call, lambda core: live.start(core, after=after), route="open_events", worker_id=worker_id
        )
        return live

    def close(self) -> None:
        """Close the core: subprocess workers end, the store lock is released."""
        with self._lock:
            core, self._core = self._core, None
        if core is not None:
            core.close()
