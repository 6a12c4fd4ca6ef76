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

from runtimes.errors import InvalidRequest, RuntimeRejected, RuntimeUnreachable, WorkerNotFound, YoiError
from runtimes.handles.base import EventSink
from runtimes.handles.parse import parse_ack, parse_event, parse_summary, parse_transcript, parse_worker
from runtimes.types import (
    FINAL_EVENT,
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
from worker_runtime.errors import RuntimeApiError, StoreError
from worker_runtime.ids import ID_PATTERN, is_valid_id, path_component
from worker_runtime.model import Event
from worker_runtime.store import FsStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


class EmbeddedEventStream:
    """A worker's events from the in-process core: backlog first, then live batches from its listener."""

    def __init__(self, core: WorkerRuntime, *, runtime_id: str, worker_id: str, after: int | None) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self._queue: queue.SimpleQueue[Sequence[Event] | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._subscription: Subscription = core.subscribe(worker_id, after=after, listener=self._queue.put)

    def __repr__(self) -> str:
        return f"EmbeddedEventStream(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    def __iter__(self) -> Iterator[WorkerEvent | StreamReset]:
        subscription = self._subscription
        try:
            if subscription.reset_earliest_seq is not None:
                yield StreamReset(reason="history_expired", earliest_seq=subscription.reset_earliest_seq)
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

    def __repr__(self) -> str:
        return f"EmbeddedLiveEvents(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    def start(self, core: WorkerRuntime, *, after: int | None) -> None:
        """Subscribe to the core (any thread); the backlog and every later batch go to the loop."""
        subscription = core.subscribe(self.worker_id, after=after, listener=self._hand_over)
        self._subscription = subscription
        if subscription.reset_earliest_seq is not None:
            reset = StreamReset(reason="history_expired", earliest_seq=subscription.reset_earliest_seq)
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

    def __repr__(self) -> str:
        return f"EmbeddedRuntimeHandle(runtime_id={self.runtime_id!r})"

    def _runtime(self) -> WorkerRuntime:
        with self._lock:
            if self._core is None:
                core = WorkerRuntime(
                    runtime_id=self.runtime_id, store=FsStore(self._store_dir), config=self._config
                )
                try:
                    core.open()
                except (StoreError, OSError) as exc:
                    # A failure after the lock was taken must not leave the store locked by a core nobody holds.
                    core.close()
                    raise self._store_unavailable() from exc
                self._core = core
            return self._core

    def _store_unavailable(self) -> RuntimeUnreachable:
        """The typed error of a store that cannot be used. The message of a StoreError or OSError names
        paths: it stays out of logs and answers."""
        logger.warning("runtimes.embedded.store_unavailable", extra={"runtime_id": self.runtime_id})
        return RuntimeUnreachable(
            runtime_id=self.runtime_id,
            message=f"embedded runtime {self.runtime_id} is unavailable: its store is in use or unreadable",
        )

    def _call(self, operation: Callable[[WorkerRuntime], T], *, worker_id: str | None = None) -> T:
        if worker_id is not None and not is_valid_id(worker_id):
            raise InvalidRequest(runtime_id=self.runtime_id, fields={"worker_id": [f"must match {ID_PATTERN}"]})
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
        return RuntimeRejected(
            upstream_code=exc.code,
            upstream_status=exc.status,
            detail=exc.message,
            runtime_id=self.runtime_id,
            worker_id=worker_id,
        )

    def summary(self) -> RuntimeSummary:
        return parse_summary(self._call(lambda core: core.summary()), runtime_id=self.runtime_id)

    def capabilities(self) -> Capabilities:
        return self.summary().capabilities

    def list_workers(self) -> list[WorkerDetail]:
        bodies = self._call(lambda core: core.list_workers())
        return [parse_worker(body, runtime_id=self.runtime_id) for body in bodies]

    def get_worker(self, worker_id: str) -> WorkerDetail:
        body = self._call(lambda core: core.get_worker(worker_id), worker_id=worker_id)
        return parse_worker(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def create_worker(self, spec: WorkerSpec, *, idempotency_key: str | None = None) -> WorkerDetail:
        body = self._call(lambda core: core.create_worker(spec.to_protocol()), worker_id=spec.worker_id)
        return parse_worker(body, runtime_id=self.runtime_id, worker_id=spec.worker_id)

    def send_input(
        self, worker_id: str, *, content: str, kind: str = "user", idempotency_key: str | None = None
    ) -> Ack:
        request: dict[str, Any] = {"kind": kind, "content": content}
        body = self._call(lambda core: core.send_input(worker_id, request), worker_id=worker_id)
        return parse_ack(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def stop_worker(self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None) -> Ack:
        body = self._call(lambda core: core.stop_worker(worker_id, reason=reason), worker_id=worker_id)
        return parse_ack(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def cancel_worker(
        self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Ack:
        body = self._call(lambda core: core.cancel_worker(worker_id, reason=reason), worker_id=worker_id)
        return parse_ack(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def transcript(self, worker_id: str, *, start: int, limit: int) -> TranscriptPage:
        body = self._call(lambda core: core.transcript(worker_id, start=start, limit=limit), worker_id=worker_id)
        return parse_transcript(body, runtime_id=self.runtime_id, worker_id=worker_id)

    def open_events(self, worker_id: str, *, after: int | None) -> EmbeddedEventStream:
        return self._call(
            lambda core: EmbeddedEventStream(core, runtime_id=self.runtime_id, worker_id=worker_id, after=after),
            worker_id=worker_id,
        )

    async def watch_events(self, worker_id: str, *, after: int | None, sink: EventSink) -> EmbeddedLiveEvents:
        """The worker's live stream pushed to ``sink`` on the running loop (the core opens on a thread)."""
        live = EmbeddedLiveEvents(runtime_id=self.runtime_id, worker_id=worker_id, sink=sink)
        await asyncio.to_thread(self._call, lambda core: live.start(core, after=after), worker_id=worker_id)
        return live

    def close(self) -> None:
        """Close the core: subprocess workers end, the store lock is released."""
        with self._lock:
            core, self._core = self._core, None
        if core is not None:
            core.close()
