"""How workers run: the builtin ``echo`` and ``burst`` executors and the subprocess executor.

An executor never touches the store: it reports through a WorkerSink, and calls ``sink.exited`` exactly once
when it has finished (on its own, or because of ``stop`` / ``cancel``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from typing import IO, Any, Protocol

from worker_runtime.config import ProfileSpec
from worker_runtime.model import EVENT_KINDS, FINAL_EVENT

logger = logging.getLogger(__name__)

# Kinds only the runtime itself may write into a worker's log.
RESERVED_KINDS = frozenset({"status", "user_message", FINAL_EVENT})
MAX_AGENT_LINE_BYTES = 1024 * 1024
BURST_BATCH = 256
FINISH_TIMEOUT = 10.0


class WorkerSink(Protocol):
    """What an executor may do to its worker."""

    def emit(self, kind: str, data: dict[str, Any]) -> None: ...
    def emit_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None: ...
    def reply(self, text: str) -> None: ...
    def exited(self, exit_code: int | None) -> None: ...


class Executor(Protocol):
    """One worker's execution."""

    def start(self) -> None: ...
    def submit(self, kind: str, content: str) -> None: ...
    def stop(self, grace: float) -> None: ...
    def cancel(self) -> None: ...


class _MailboxExecutor:
    """Runs inputs one at a time on a thread that exists only while there is work."""

    def __init__(self, sink: WorkerSink, options: dict[str, Any]) -> None:
        self._sink = sink
        self._options = options
        self._queue: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()
        self._busy = False
        self._cancelled = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        pass

    def submit(self, kind: str, content: str) -> None:
        with self._lock:
            self._queue.append((kind, content))
            if self._busy:
                return
            self._busy = True
            self._idle.clear()
        threading.Thread(target=self._drain, name="worker-run", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._cancelled.is_set():
                    self._queue.clear()
                    self._busy = False
                    self._idle.set()
                    return
                kind, content = self._queue.popleft()
            try:
                self.run(kind, content)
            except Exception:
                logger.exception("worker_runtime.run_failed")
                self._sink.emit("error", {"message": "the run failed"})

    def run(self, kind: str, content: str) -> None:
        raise NotImplementedError

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True when cancelled meanwhile."""
        if seconds <= 0:
            return self._cancelled.is_set()
        return self._cancelled.wait(seconds)

    def stop(self, grace: float) -> None:
        if not self._idle.wait(grace):
            self._cancelled.set()
            self._idle.wait(FINISH_TIMEOUT)
        self._sink.exited(None)

    def cancel(self) -> None:
        self._cancelled.set()
        self._idle.wait(FINISH_TIMEOUT)
        self._sink.exited(None)


def _chunks(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class EchoExecutor(_MailboxExecutor):
    """Answers each input with ``echo: <content>`` as several text_delta events, then text_done."""

    def run(self, kind: str, content: str) -> None:
        text = f"echo: {content}"
        delay = float(self._options.get("delay_ms", 0)) / 1000.0
        for chunk in _chunks(text, 4):
            if self._pause(delay):
                return
            self._sink.emit("text_delta", {"text": chunk})
        self._sink.reply(text)


class BurstExecutor(_MailboxExecutor):
    """Emits ``count`` text_delta events per input, as fast as it can or at ``rate`` per second."""

    def run(self, kind: str, content: str) -> None:
        count = int(self._options.get("count", 100))
        rate = float(self._options.get("rate", 0))
        if rate <= 0:
            for start in range(0, count, BURST_BATCH):
                if self._cancelled.is_set():
                    return
                stop = min(count, start + BURST_BATCH)
                self._sink.emit_batch([("text_delta", {"i": i, "text": "."}) for i in range(start, stop)])
        else:
            interval, due = 1.0 / rate, time.monotonic()
            for i in range(count):
                if self._pause(due - time.monotonic()):
                    return
                self._sink.emit("text_delta", {"i": i, "text": "."})
                due += interval
        self._sink.reply(f"burst: {count} events")
        self._sink.emit("run_end", {"count": count})


class SubprocessExecutor:
    """Runs a profile's command: JSON input lines on stdin, one event per stdout line, exit = worker_exited."""

    def __init__(self, sink: WorkerSink, spec: ProfileSpec, worker_id: str) -> None:
        self._sink = sink
        self._spec = spec
        self._worker_id = worker_id
        self._proc: subprocess.Popen[bytes] | None = None
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._done = threading.Event()

    def start(self) -> None:
        env = {**os.environ, **self._spec.env, "YOI_WORKER_ID": self._worker_id}
        self._proc = subprocess.Popen(
            list(self._spec.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self._spec.cwd,
            env=env,
            start_new_session=True,
        )
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        threading.Thread(target=self._write, args=(self._proc.stdin,), name="agent-stdin", daemon=True).start()
        threading.Thread(target=self._drain_stderr, args=(self._proc.stderr,), daemon=True).start()
        threading.Thread(target=self._read, args=(self._proc.stdout,), name="agent-stdout", daemon=True).start()

    def submit(self, kind: str, content: str) -> None:
        line = json.dumps({"kind": kind, "content": content}, ensure_ascii=False) + "\n"
        self._inbox.put(line.encode("utf-8"))

    def _write(self, stdin: IO[bytes]) -> None:
        while (line := self._inbox.get()) is not None:
            try:
                stdin.write(line)
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                break
        with contextlib.suppress(OSError):
            stdin.close()

    def _drain_stderr(self, stderr: IO[bytes]) -> None:
        for raw in stderr:
            logger.debug("worker_runtime.agent_stderr", extra={"worker_id": self._worker_id, "bytes": len(raw)})

    def _read(self, stdout: IO[bytes]) -> None:
        assert self._proc is not None
        while raw := stdout.readline(MAX_AGENT_LINE_BYTES):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                self._forward(line)
        code = self._proc.wait()
        self._inbox.put(None)
        self._sink.exited(code)
        self._done.set()

    def _forward(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            self._sink.emit("text_delta", {"text": line})
            return
        kind, data = message["event"], message.get("data", {})
        if not isinstance(data, dict):
            data = {"value": data}
        if kind == "text_done" and isinstance(data.get("text"), str):
            self._sink.reply(data["text"])
        elif kind in EVENT_KINDS and kind not in RESERVED_KINDS:
            self._sink.emit(kind, data)
        else:
            self._sink.emit("error", {"message": "the agent sent an event kind it may not send"})

    def _signal(self, sig: signal.Signals) -> None:
        # The whole process group: an agent that exited may leave children holding its stdout open.
        if self._proc is None or self._done.is_set():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def stop(self, grace: float) -> None:
        self._signal(signal.SIGTERM)
        if not self._done.wait(grace):
            self._signal(signal.SIGKILL)
            self._done.wait(FINISH_TIMEOUT)

    def cancel(self) -> None:
        self._signal(signal.SIGKILL)
        self._done.wait(FINISH_TIMEOUT)


def make_executor(sink: WorkerSink, spec: ProfileSpec, worker_id: str, options: dict[str, Any]) -> Executor:
    """The executor for a profile."""
    if spec.builtin == "echo":
        return EchoExecutor(sink, options)
    if spec.builtin == "burst":
        return BurstExecutor(sink, options)
    return SubprocessExecutor(sink, spec, worker_id)
