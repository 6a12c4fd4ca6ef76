"""The one interface every runtime is reached through, embedded or remote."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

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


class RuntimeHandle(Protocol):
    """Commands and queries against one runtime. Every failure is a ``runtimes.errors.YoiError``.

    Methods are synchronous and may block on I/O: async callers run them in a thread.
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
    def close(self) -> None: ...
