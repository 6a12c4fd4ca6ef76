"""The RuntimeHandle of a remote runtime: protocol v1 over ``RemoteRuntimeClient``, parsed at the edge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from runtimes.client import (
    PATH_RUNTIME,
    PATH_WORKER,
    PATH_WORKER_CANCEL,
    PATH_WORKER_INPUT,
    PATH_WORKER_STOP,
    PATH_WORKER_TRANSCRIPT,
    PATH_WORKERS,
    ClientEventStream,
    LiveEventStream,
    RemoteRuntimeClient,
)
from runtimes.errors import TRANSPORT_FAILURES, RuntimeUnreachable, YoiError
from runtimes.handles.base import EventSink
from runtimes.handles.parse import (
    parse_ack,
    parse_event,
    parse_stream_epoch,
    parse_summary,
    parse_transcript,
    parse_worker,
    parse_workers,
    unwrap,
)
from runtimes.scrub import Scrubber
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

logger = logging.getLogger(__name__)


class RemoteEventStream:
    """A worker's events from a remote runtime's SSE stream, parsed; ``close()`` is safe from any thread."""

    def __init__(self, stream: ClientEventStream, *, runtime_id: str, worker_id: str, scrubber: Scrubber) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self._stream = stream
        self.epoch = parse_stream_epoch(stream.epoch_header, runtime_id=runtime_id, worker_id=worker_id)
        self._scrubber = scrubber

    def __repr__(self) -> str:
        return f"RemoteEventStream(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    __str__ = __repr__

    def __iter__(self) -> Iterator[WorkerEvent | StreamReset]:
        try:
            for message in self._stream:
                item = parse_event(
                    message.event,
                    message.data,
                    runtime_id=self.runtime_id,
                    worker_id=self.worker_id,
                    scrubber=self._scrubber,
                )
                yield item
                if isinstance(item, WorkerEvent) and item.event == FINAL_EVENT:
                    return
            if not self._stream.closed:
                # The runtime ended the stream of a live worker (restart, slow reader): resume, don't stop.
                logger.info(
                    "runtimes.remote.stream_ended_early",
                    extra={"runtime_id": self.runtime_id, "worker_id": self.worker_id},
                )
                raise RuntimeUnreachable(runtime_id=self.runtime_id, worker_id=self.worker_id)
        finally:
            self._stream.close()

    def close(self) -> None:
        """Stop the stream; a reader blocked in another thread returns."""
        self._stream.close()


class RemoteLiveEvents:
    """A live stream's messages parsed for a sink; the worker's final event ends it (see EventSink)."""

    def __init__(self, handle: RemoteRuntimeHandle, worker_id: str, sink: EventSink) -> None:
        self.runtime_id = handle.runtime_id
        self.worker_id = worker_id
        self._handle = handle
        self._sink = sink
        self.stream: LiveEventStream = handle._client.live_event_stream(
            worker_id, on_message=self._message, on_end=self._end
        )
        self.epoch: str | None = None  # the stream's Yoi-Stream-Epoch, once open

    def __repr__(self) -> str:
        return f"RemoteLiveEvents(runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r})"

    def _message(self, name: str, data: dict[str, Any]) -> None:
        try:
            item = parse_event(
                name, data, runtime_id=self.runtime_id, worker_id=self.worker_id, scrubber=self._handle._scrubber
            )
        except YoiError as error:
            self.stream.fail(error)
            return
        self._sink.event_item(item)
        if isinstance(item, WorkerEvent) and item.event == FINAL_EVENT and not self.stream.closed:
            self.stream.close()
            self._sink.event_end(None)

    def _end(self, error: YoiError | None) -> None:
        if error is None:
            # The runtime ended the stream of a live worker (restart, slow reader): resume, don't stop.
            logger.info("runtimes.remote.stream_ended_early", extra=self.stream.ids())
            error = RuntimeUnreachable(runtime_id=self.runtime_id, worker_id=self.worker_id)
        if isinstance(error, TRANSPORT_FAILURES):
            self._handle._identity_verified = False
        self._sink.event_end(error)

    def pause_reading(self) -> None:
        """Hold the socket back."""
        self.stream.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        self.stream.resume_reading()

    def close(self) -> None:
        """Stop the stream (no ``event_end``)."""
        self.stream.close()


class RemoteRuntimeHandle:
    """A runtime reached over HTTP; every answer is parsed into ``runtimes.types``, every failure typed."""

    kind: RuntimeKind = "remote"

    def __init__(self, runtime_id: str, client: RemoteRuntimeClient) -> None:
        self.runtime_id = runtime_id
        self._client = client
        self._scrubber = client.scrubber
        # Commands go only to a runtime that has proved it is the configured one; re-checked after any
        # transport failure, since whatever answers at that address after a restart may be another runtime.
        self._identity_verified = False

    def __repr__(self) -> str:
        return f"RemoteRuntimeHandle(runtime_id={self.runtime_id!r})"

    __str__ = __repr__

    def summary(self) -> RuntimeSummary:
        """GET /v1/runtime; the runtime must report the configured runtime_id."""
        self._identity_verified = False
        _, body = self._client.request_json("GET", PATH_RUNTIME)
        summary = parse_summary(
            unwrap(body, "runtime", runtime_id=self.runtime_id),
            runtime_id=self.runtime_id,
            scrubber=self._scrubber,
        )
        self._identity_verified = True
        return summary

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A worker-route request, sent only once the runtime's identity is verified."""
        if not self._identity_verified:
            self.summary()
        try:
            _, body = self._client.request_json(method, path, **kwargs)
        except TRANSPORT_FAILURES:
            self._identity_verified = False
            raise
        return body

    def capabilities(self) -> Capabilities:
        """What the runtime's summary says it can do."""
        return self.summary().capabilities

    def list_workers(self) -> list[WorkerDetail]:
        """Every worker of the runtime."""
        body = self._request("GET", PATH_WORKERS)
        workers = unwrap(body, "workers", runtime_id=self.runtime_id)
        return parse_workers(workers, runtime_id=self.runtime_id, scrubber=self._scrubber)

    def get_worker(self, worker_id: str) -> WorkerDetail:
        """One worker's detail."""
        body = self._request("GET", PATH_WORKER, worker_id=worker_id)
        return self._worker(body, worker_id)

    def create_worker(self, spec: WorkerSpec, *, idempotency_key: str | None = None) -> WorkerDetail:
        """Create a worker (the runtime may answer 200 or 201)."""
        body = self._request("POST", PATH_WORKERS, body=spec.to_protocol(), idempotency_key=idempotency_key)
        return self._worker(body, spec.worker_id)

    def send_input(
        self, worker_id: str, *, content: str, kind: str = "user", idempotency_key: str | None = None
    ) -> Ack:
        """Send one input to a running worker."""
        return self._command(
            PATH_WORKER_INPUT, worker_id, {"kind": kind, "content": content}, idempotency_key=idempotency_key
        )

    def stop_worker(self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None) -> Ack:
        """Graceful end (a no-op on a finished worker)."""
        return self._command(PATH_WORKER_STOP, worker_id, _reason_body(reason), idempotency_key=idempotency_key)

    def cancel_worker(
        self, worker_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Ack:
        """Immediate end (a no-op on a finished worker)."""
        return self._command(PATH_WORKER_CANCEL, worker_id, _reason_body(reason), idempotency_key=idempotency_key)

    def transcript(self, worker_id: str, *, start: int, limit: int) -> TranscriptPage:
        """A bounded page of a worker's transcript."""
        body = self._request(
            "GET", PATH_WORKER_TRANSCRIPT, worker_id=worker_id, params={"start": start, "limit": limit}
        )
        page = unwrap(body, "transcript", runtime_id=self.runtime_id, worker_id=worker_id)
        return parse_transcript(page, runtime_id=self.runtime_id, worker_id=worker_id, scrubber=self._scrubber)

    def open_events(self, worker_id: str, *, after: int | None) -> RemoteEventStream:
        """The worker's event stream after seq ``after`` (``None`` = live only, ``0`` = from the first)."""
        if not self._identity_verified:
            self.summary()
        stream = self._client.open_event_stream(worker_id, after=after)
        return RemoteEventStream(stream, runtime_id=self.runtime_id, worker_id=worker_id, scrubber=self._scrubber)

    async def watch_events(self, worker_id: str, *, after: int | None, sink: EventSink) -> RemoteLiveEvents:
        """The worker's live stream on the running event loop, pushed to ``sink`` (see EventSink)."""
        if not self._identity_verified:
            await asyncio.to_thread(self.summary)  # once, and again after a transport failure
        live = RemoteLiveEvents(self, worker_id, sink)
        try:
            await live.stream.open(after=after)
        except TRANSPORT_FAILURES:
            self._identity_verified = False
            raise
        live.epoch = parse_stream_epoch(live.stream.epoch_header, runtime_id=self.runtime_id, worker_id=worker_id)
        return live

    def close(self) -> None:
        """Release the client's pooled connections."""
        self._client.close()

    def _worker(self, body: dict[str, Any], worker_id: str | None) -> WorkerDetail:
        worker = unwrap(body, "worker", runtime_id=self.runtime_id, worker_id=worker_id)
        return parse_worker(worker, runtime_id=self.runtime_id, worker_id=worker_id, scrubber=self._scrubber)

    def _command(self, path: str, worker_id: str, body: dict[str, Any], *, idempotency_key: str | None) -> Ack:
        answer = self._request("POST", path, body=body, worker_id=worker_id, idempotency_key=idempotency_key)
        ack = unwrap(answer, "ack", runtime_id=self.runtime_id, worker_id=worker_id)
        return parse_ack(ack, runtime_id=self.runtime_id, worker_id=worker_id, scrubber=self._scrubber)


def _reason_body(reason: str | None) -> dict[str, Any]:
    return {} if reason is None else {"reason": reason}
