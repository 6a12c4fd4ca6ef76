"""Worker commands and queries for browsers: resolve the runtime first (visibility), then the worker.

Every command (create, input, stop, cancel) writes an AuditEvent with its outcome code and latency, a
refused one too: not visible, disabled, rate-limited or invalid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from django.contrib.auth.models import User
from django.utils.crypto import salted_hmac

from runtimes.errors import YoiError
from runtimes.handles.base import RuntimeHandle
from runtimes.models import AuditEvent
from runtimes.registry import registry
from runtimes.selectors import RequestUser, runtime_is_visible, runtime_require_visible
from runtimes.status import DeferredWrites
from runtimes.types import Ack, TranscriptPage, WorkerDetail, WorkerSpec, is_valid_id

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_PARALLEL_LISTS = 16
INVALID_ID = "<invalid>"
IDEMPOTENCY_KEY_SALT = "yoi.workers.idempotency-key"


@dataclass(frozen=True)
class RuntimeFailure:
    """A runtime that could not answer a cross-runtime query."""

    runtime_id: str
    code: str


@dataclass(frozen=True)
class WorkerListing:
    """Workers across runtimes, with the runtimes that failed."""

    items: list[WorkerDetail]
    errors: list[RuntimeFailure]


def _query(runtime_id: str, user: RequestUser, operation: Callable[[RuntimeHandle], T]) -> T:
    runtime_require_visible(runtime_id=runtime_id, user=user)
    return registry.call(runtime_id, operation)


def _command(
    action: str, runtime_id: str, worker_id: str, user: RequestUser, operation: Callable[[RuntimeHandle], T]
) -> T:
    started = time.perf_counter()
    outcome, audited_worker = "ok", worker_id
    try:
        runtime_require_visible(runtime_id=runtime_id, user=user)  # a refusal for visibility is audited too
        result = registry.call(runtime_id, operation)
        audited_worker = getattr(result, "worker_id", worker_id)  # a create learns its id only now
        return result
    except YoiError as error:
        outcome = error.code
        raise
    except Exception:
        outcome = "internal_error"
        raise
    finally:
        _audit(action, runtime_id, audited_worker, user, outcome, (time.perf_counter() - started) * 1000)


def _audit(
    action: str, runtime_id: str, worker_id: str, user: RequestUser, outcome: str, latency_ms: float
) -> None:
    """Record a command; a failing audit write is logged, never allowed to replace the command's own outcome."""
    try:
        AuditEvent.objects.create(
            user=user if isinstance(user, User) else None,
            username=user.get_username() if isinstance(user, User) else "",
            runtime_id=runtime_id,
            worker_id=worker_id,
            action=action,
            outcome=outcome,
            latency_ms=latency_ms,
        )
    except Exception:
        logger.exception("workers.audit.write_failed", extra={"runtime_id": runtime_id, "action": action})


def worker_command_refused(
    *, action: str, runtime_id: str, worker_id: str, user: RequestUser, outcome: str
) -> None:
    """Audit a command refused before it was sent (rate-limited, invalid ids or body), with its error code.

    Ids that are not of the id alphabet are recorded as ``<invalid>``: the audit log never stores what an
    attacker put in a path.
    """
    _audit(
        action,
        runtime_id if is_valid_id(runtime_id) else INVALID_ID,
        worker_id if worker_id == "" or is_valid_id(worker_id) else INVALID_ID,
        user,
        outcome,
        0.0,
    )


def worker_list(*, runtime_id: str, user: RequestUser) -> list[WorkerDetail]:
    """Workers of one runtime."""
    return _query(runtime_id, user, lambda handle: handle.list_workers())


def worker_get(*, runtime_id: str, worker_id: str, user: RequestUser) -> WorkerDetail:
    """One worker, addressed by runtime_id + worker_id."""
    return _query(runtime_id, user, lambda handle: handle.get_worker(worker_id))


def worker_transcript(
    *, runtime_id: str, worker_id: str, start: int, limit: int, user: RequestUser
) -> TranscriptPage:
    """A bounded transcript page."""
    return _query(runtime_id, user, lambda handle: handle.transcript(worker_id, start=start, limit=limit))


def forwarded_idempotency_key(*, user: RequestUser, key: str | None) -> str | None:
    """The Idempotency-Key the Backend sends a runtime for a browser's ``key``: an HMAC of the user and the key
    under the Backend's secret, so two users' keys never meet at a runtime and the browser's own key never
    leaves the Backend. Stable across processes and restarts (same SECRET_KEY); None without a browser key."""
    if key is None:
        return None
    digest = salted_hmac(IDEMPOTENCY_KEY_SALT, f"{user.pk}\x00{key}", algorithm="sha256").hexdigest()
    return f"yoi-{digest}"


def worker_create(
    *, runtime_id: str, spec: WorkerSpec, user: RequestUser, idempotency_key: str | None = None
) -> WorkerDetail:
    """Create a worker on a runtime (once per browser ``idempotency_key``)."""
    key = forwarded_idempotency_key(user=user, key=idempotency_key)
    return _command(
        "create",
        runtime_id,
        spec.worker_id or "",
        user,
        lambda handle: handle.create_worker(spec, idempotency_key=key),
    )


def worker_send_input(
    *,
    runtime_id: str,
    worker_id: str,
    content: str,
    kind: str,
    user: RequestUser,
    idempotency_key: str | None = None,
) -> Ack:
    """Send an input to a worker (once per browser ``idempotency_key``)."""
    key = forwarded_idempotency_key(user=user, key=idempotency_key)
    return _command(
        "input",
        runtime_id,
        worker_id,
        user,
        lambda handle: handle.send_input(worker_id, content=content, kind=kind, idempotency_key=key),
    )


def _end(
    action: str,
    *,
    runtime_id: str,
    worker_id: str,
    reason: str | None,
    user: RequestUser,
    idempotency_key: str | None,
) -> Ack:
    key = forwarded_idempotency_key(user=user, key=idempotency_key)

    def operation(handle: RuntimeHandle) -> Ack:
        end = handle.stop_worker if action == "stop" else handle.cancel_worker
        return end(worker_id, reason=reason, idempotency_key=key)

    return _command(action, runtime_id, worker_id, user, operation)


def worker_stop(
    *, runtime_id: str, worker_id: str, reason: str | None, user: RequestUser, idempotency_key: str | None = None
) -> Ack:
    """Graceful end of a worker (a no-op answer when it already ended)."""
    return _end(
        "stop",
        runtime_id=runtime_id,
        worker_id=worker_id,
        reason=reason,
        user=user,
        idempotency_key=idempotency_key,
    )


def worker_cancel(
    *, runtime_id: str, worker_id: str, reason: str | None, user: RequestUser, idempotency_key: str | None = None
) -> Ack:
    """Immediate end of a worker (a no-op answer when it already ended)."""
    return _end(
        "cancel",
        runtime_id=runtime_id,
        worker_id=worker_id,
        reason=reason,
        user=user,
        idempotency_key=idempotency_key,
    )


def worker_list_all(*, user: RequestUser) -> WorkerListing:
    """Workers of every visible enabled runtime, listed in parallel; failing runtimes go to ``errors``."""
    runtime_ids = sorted(
        rid
        for rid, conn in registry.connections().items()
        if conn.enabled and runtime_is_visible(connection=conn, user=user)
    )

    writes = DeferredWrites()

    def one(runtime_id: str) -> list[WorkerDetail] | RuntimeFailure:
        # No database access in pool threads: only the upstream call runs here; its status writes wait.
        try:
            return registry.call(runtime_id, lambda handle: handle.list_workers(), refresh=False, writes=writes)
        except YoiError as error:
            return RuntimeFailure(runtime_id=runtime_id, code=error.code)

    items: list[WorkerDetail] = []
    errors: list[RuntimeFailure] = []
    if runtime_ids:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_LISTS, len(runtime_ids))) as pool:
            for result in pool.map(one, runtime_ids):
                if isinstance(result, RuntimeFailure):
                    errors.append(result)
                else:
                    items.extend(result)
    writes.apply()
    return WorkerListing(items=items, errors=errors)
