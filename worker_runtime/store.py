"""Where a runtime keeps its state: in memory, or durably in a directory (the FS store).

FS layout (documented in docs/runtime-protocol.md)::

    <store>/LOCK                         exclusive flock held by the one process that owns the store
    <store>/runtime.json                 {"format": 1, "runtime_id", "created_at"}
    <store>/idempotency.jsonl            answered POSTs, one JSON object a line
    <store>/workers/<w + hex(id)>/worker.json        the worker snapshot (temp + fsync + rename)
    <store>/workers/<w + hex(id)>/events.jsonl       the event log, one event a line, fsync'd appends
    <store>/workers/<w + hex(id)>/transcript.jsonl   the transcript, one item a line, fsync'd appends

A torn last line (a crash mid-append) is cut off and logged; anything else unreadable is a StoreError.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from worker_runtime.errors import StoreError, StoreLocked
from worker_runtime.ids import path_component
from worker_runtime.model import Event, TranscriptItem, WorkerRecord, compact_json

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
T = TypeVar("T")


@dataclass
class WorkerLog:
    """Everything stored about one worker."""

    record: WorkerRecord
    events: list[Event] = field(default_factory=list)
    transcript: list[TranscriptItem] = field(default_factory=list)


@dataclass
class StoreContents:
    """What a store holds when it is opened."""

    workers: dict[str, WorkerLog] = field(default_factory=dict)
    idempotency: list[dict[str, Any]] = field(default_factory=list)


class Store(Protocol):
    """Persistence used by the core; every write returns only once it is durable."""

    backend: str

    def open(self, runtime_id: str) -> StoreContents: ...
    def save_worker(self, record: WorkerRecord) -> None: ...
    def append_events(self, worker_id: str, events: Sequence[Event]) -> None: ...
    def rewrite_events(self, worker_id: str, events: Sequence[Event]) -> None: ...
    def append_transcript(self, worker_id: str, items: Sequence[TranscriptItem]) -> None: ...
    def append_idempotency(self, entry: dict[str, Any]) -> None: ...
    def rewrite_idempotency(self, entries: Sequence[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A store that keeps nothing: state lives only in the core's memory."""

    backend = "memory"

    def open(self, runtime_id: str) -> StoreContents:
        return StoreContents()

    def save_worker(self, record: WorkerRecord) -> None:
        pass

    def append_events(self, worker_id: str, events: Sequence[Event]) -> None:
        pass

    def rewrite_events(self, worker_id: str, events: Sequence[Event]) -> None:
        pass

    def append_transcript(self, worker_id: str, items: Sequence[TranscriptItem]) -> None:
        pass

    def append_idempotency(self, entry: dict[str, Any]) -> None:
        pass

    def rewrite_idempotency(self, entries: Sequence[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "MemoryStore()"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _append_lines(path: Path, lines: Iterable[str]) -> None:
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    if not payload:
        return
    with open(path, "ab") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _read_lines(path: Path, parse: Callable[[str], T]) -> list[T]:
    """Read a JSON-lines file; cut a torn last line, refuse a corrupt complete one."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete, _, torn = raw.rpartition(b"\n")
    if torn:
        logger.warning("store.torn_line_truncated", extra={"file": path.name, "bytes": len(torn)})
        with open(path, "r+b") as fh:
            fh.truncate(len(complete) + 1 if complete else 0)
            fh.flush()
            os.fsync(fh.fileno())
    items: list[T] = []
    for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        try:
            items.append(parse(line.decode("utf-8")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: line {number} is corrupt ({type(exc).__name__})") from exc
    return items


class FsStore:
    """The durable store: one directory, owned by one process at a time."""

    backend = "fs_store"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock_fh: Any = None

    def __repr__(self) -> str:
        return "FsStore(<store>)"

    def _worker_dir(self, worker_id: str) -> Path:
        return self.root / "workers" / path_component(worker_id)

    def _lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / "LOCK", "a+")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            raise StoreLocked(f"store {self.root} is locked by another process") from exc
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    def open(self, runtime_id: str) -> StoreContents:
        """Lock the store, check it belongs to ``runtime_id``, and load everything in it."""
        self._lock()
        try:
            return self._load(runtime_id)
        except BaseException:
            self.close()
            raise

    def _load(self, runtime_id: str) -> StoreContents:
        meta_path = self.root / "runtime.json"
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text("utf-8"))
                stored_id, fmt = meta["runtime_id"], meta["format"]
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{meta_path} is corrupt") from exc
            if fmt != STORE_FORMAT:
                raise StoreError(f"{meta_path}: unsupported store format {fmt!r}")
            if stored_id != runtime_id:
                raise StoreError(f"store {self.root} belongs to runtime {stored_id!r}, not {runtime_id!r}")
        else:
            body = {"format": STORE_FORMAT, "runtime_id": runtime_id, "created_at": time.time()}
            _write_atomic(meta_path, compact_json(body).encode("utf-8"))
        (self.root / "workers").mkdir(exist_ok=True)
        contents = StoreContents(idempotency=_read_lines(self.root / "idempotency.jsonl", json.loads))
        for worker_dir in sorted((self.root / "workers").iterdir()):
            log = self._load_worker(worker_dir)
            if log is not None:
                contents.workers[log.record.worker_id] = log
        return contents

    def _load_worker(self, worker_dir: Path) -> WorkerLog | None:
        snapshot = worker_dir / "worker.json"
        if not snapshot.exists():
            # A crash between mkdir and the first snapshot: the create was never acknowledged.
            logger.warning("store.incomplete_worker_skipped", extra={"dir": worker_dir.name})
            return None
        try:
            record = WorkerRecord.from_json(json.loads(snapshot.read_text("utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{snapshot} is corrupt ({type(exc).__name__})") from exc
        if path_component(record.worker_id) != worker_dir.name:
            raise StoreError(f"{snapshot} names a worker that does not belong in {worker_dir.name}")
        events = _read_lines(worker_dir / "events.jsonl", Event.from_json)
        for before, after in itertools.pairwise(events):
            if after.seq != before.seq + 1:
                raise StoreError(f"{worker_dir / 'events.jsonl'}: seq jumps from {before.seq} to {after.seq}")
        transcript = _read_lines(
            worker_dir / "transcript.jsonl", lambda line: TranscriptItem.from_json(json.loads(line))
        )
        return WorkerLog(record=record, events=events, transcript=transcript)

    def save_worker(self, record: WorkerRecord) -> None:
        worker_dir = self._worker_dir(record.worker_id)
        if not worker_dir.exists():
            worker_dir.mkdir(parents=True)
            _fsync_dir(worker_dir.parent)
        _write_atomic(worker_dir / "worker.json", compact_json(record.to_json()).encode("utf-8"))

    def append_events(self, worker_id: str, events: Sequence[Event]) -> None:
        _append_lines(self._worker_dir(worker_id) / "events.jsonl", (event.text for event in events))

    def rewrite_events(self, worker_id: str, events: Sequence[Event]) -> None:
        payload = "".join(event.text + "\n" for event in events).encode("utf-8")
        _write_atomic(self._worker_dir(worker_id) / "events.jsonl", payload)

    def append_transcript(self, worker_id: str, items: Sequence[TranscriptItem]) -> None:
        lines = (compact_json(item.to_json()) for item in items)
        _append_lines(self._worker_dir(worker_id) / "transcript.jsonl", lines)

    def append_idempotency(self, entry: dict[str, Any]) -> None:
        _append_lines(self.root / "idempotency.jsonl", [compact_json(entry)])

    def rewrite_idempotency(self, entries: Sequence[dict[str, Any]]) -> None:
        payload = "".join(compact_json(entry) + "\n" for entry in entries).encode("utf-8")
        _write_atomic(self.root / "idempotency.jsonl", payload)

    def close(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
