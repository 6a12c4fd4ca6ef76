"""The one interface every runtime is reached through, embedded or remote."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from runtimes.errors import YoiError
from runtimes.types import (
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


class EventStream(Protocol):
    """A blocking iterator over one worker's events; ends when the worker has exited or on ``close()``.

    Iteration raises the typed errors of ``runtimes.errors`` when the upstream fails. ``epoch`` names the
    worker event log the stream comes from (None when the runtime has no epochs): a different epoch under
    the same ids is a new stream, whose seqs say nothing about the old one's.
    """

    epoch: str | None

    def __iter__(self) -> Iterator[WorkerEvent | StreamReset]: ...
    def close(self) -> None: ...


class EventSink(Protocol):
    """Where a live stream delivers, on the event loop that opened it: items in order, then its end once.

    ``event_end(None)`` means the stream ended after the worker's final event; any other end is a typed
    error. Neither is called after ``LiveEvents.close()``.
    """

    def event_item(self, item: WorkerEvent | StreamReset) -> None: ...
    def event_end(self, error: YoiError | None) -> None: ...


class LiveEvents(Protocol):
    """An open live stream (see ``RuntimeHandle.watch_events``): it can hold back, resume, and stop.
    ``epoch`` is that of ``EventStream``."""

    epoch: str | None

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


class RuntimeHandle(Protocol):
    """Commands and queries against one runtime. Every failure is a ``runtimes.errors.YoiError``.

    Methods are synchronous and may block on I/O (async callers run them in a thread), except
    ``watch_events``, which runs on the event loop and pushes a live stream to a sink.
    """

    runtime_id: str
    kind: RuntimeKind

    def summary(self) -> RuntimeSummary: ...
    def capabilities(self) -> Capabilities: ...
    def list_workers(self) -> list[WorkerDetail]: ...
    def get_worker(self, worker_id: str) -> WorkerDetail: ...
    def create_worker(self, spec: WorkerSpec, *, idempotency_key: str | None = None) -> WorkerDetail: ...
    def send_input(
        self, worker_id: str, *, content: str, kind: str = "user", idempotency_key: str | None = None
    ) -> Ack: ...
    def stop_worker(
        self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Ack: ...
    def cancel_worker(
        self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Ack: ...
    def transcript(self, worker_id: str, *, start: int, limit: int) -> TranscriptPage: ...
    def open_events(self, worker_id: str, *, after: int | None) -> EventStream: ...
    async def watch_events(self, worker_id: str, *, after: int | None, sink: EventSink) -> LiveEvents: ...
    def close(self) -> None: ...
