"""RuntimeRegistry: runtime_id -> handle, built from rows; the only place that builds handles.

Rows are read in one query and cached for ``YOI_REGISTRY_REFRESH_SECONDS``, so a change made by the admin
or ``sync_runtimes`` reaches every running process within seconds; a handle is rebuilt when its row's
connection fields change, and a disabled runtime gets no handle at all (no upstream traffic). A row whose
connection settings cannot be used (a refused secret ref, an unusable TLS file, plain http to a remote host)
gets no handle either: ``RuntimeMisconfigured``, nothing sent, tried again at the next call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.db import close_old_connections

from runtimes import metrics
from runtimes.breaker import CircuitBreaker
from runtimes.bulkhead import DEFAULT_MAX_IN_FLIGHT, Bulkhead
from runtimes.client import RemoteRuntimeClient
from runtimes.config import insecure_http
from runtimes.errors import (
    LOCAL_FAILURES,
    TRANSPORT_FAILURES,
    RuntimeDisabled,
    RuntimeMisconfigured,
    RuntimeNotFound,
    RuntimeRejected,
    RuntimeUnsupported,
    WorkerNotFound,
    YoiError,
)
from runtimes.handles.base import RuntimeHandle
from runtimes.handles.embedded import EmbeddedRuntimeHandle
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.models import Runtime
from runtimes.scrub import known_secrets
from runtimes.secrets import SecretPolicy, check_secret_ref, resolve_secret, resolve_token, secret_values_of_refs
from runtimes.status import LAST_SEEN_WRITE_INTERVAL, StatusWrite, record_failure, record_online
from runtimes.tls import TlsConfigError, client_context

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Errors that are the runtime's own answer: it is up, whatever it said.
ANSWERED_ERRORS: tuple[type[YoiError], ...] = (WorkerNotFound, RuntimeRejected, RuntimeUnsupported)


@dataclass(frozen=True)
class RuntimeConnection:
    """The registry's copy of a runtime row: what a handle is built from, plus visibility."""

    runtime_id: str
    display_name: str
    kind: str
    base_url: str
    token_ref: str
    connect_timeout: float
    read_timeout: float
    enabled: bool
    group_ids: frozenset[int]
    updated_at: datetime | None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    tls_ca_file: str = ""
    tls_client_cert_file: str = ""
    tls_client_key_ref: str = ""
    allow_insecure_http: bool = False

    def __repr__(self) -> str:
        return f"RuntimeConnection(runtime_id={self.runtime_id!r}, kind={self.kind!r}, base_url=<backend-private>)"

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """The fields whose change means the handle must be rebuilt."""
        return (
            self.kind,
            self.base_url,
            self.token_ref,
            self.connect_timeout,
            self.read_timeout,
            self.tls_ca_file,
            self.tls_client_cert_file,
            self.tls_client_key_ref,
            self.allow_insecure_http,
        )

    @property
    def secret_refs(self) -> tuple[str, ...]:
        """The refs whose values this runtime's client may send."""
        return tuple(ref for ref in (self.token_ref, self.tls_client_key_ref) if ref)


def load_connections() -> dict[str, RuntimeConnection]:
    """Read every runtime row (one query for rows, one for group memberships)."""
    groups: dict[int, set[int]] = {}
    for runtime_pk, group_id in Runtime.groups.through.objects.values_list("runtime_id", "group_id"):
        groups.setdefault(runtime_pk, set()).add(group_id)
    return {
        row.runtime_id: RuntimeConnection(
            runtime_id=row.runtime_id,
            display_name=row.display_name,
            kind=row.kind,
            base_url=row.base_url,
            token_ref=row.token_ref,
            connect_timeout=row.connect_timeout,
            read_timeout=row.read_timeout,
            enabled=row.enabled,
            group_ids=frozenset(groups.get(row.pk, ())),
            updated_at=row.updated_at,
            max_in_flight=row.max_in_flight,
            tls_ca_file=row.tls_ca_file,
            tls_client_cert_file=row.tls_client_cert_file,
            tls_client_key_ref=row.tls_client_key_ref,
            allow_insecure_http=row.allow_insecure_http,
        )
        for row in Runtime.objects.all()
    }


def _misconfigured(runtime_id: str, key: str, reason: str) -> RuntimeMisconfigured:
    # The key and a fixed reason only: never the URL, path or value.
    logger.warning(
        "runtimes.registry.misconfigured", extra={"runtime_id": runtime_id, "key": key, "reason": reason}
    )
    return RuntimeMisconfigured(runtime_id=runtime_id, reason=key)


def build_handle(connection: RuntimeConnection) -> RuntimeHandle:
    """Make the handle for a row: the embedded core in-process, or a remote client.

    A remote row is checked against the connection rules first (the same as where rows are written, since a
    row may have been written around them): RuntimeMisconfigured, with no client made, when they fail.
    """
    if connection.kind == "embedded":
        return EmbeddedRuntimeHandle(connection.runtime_id, data_dir=settings.YOI_DATA_DIR)
    runtime_id, token_ref = connection.runtime_id, connection.token_ref
    policy = SecretPolicy.from_settings()
    if insecure_http(connection.base_url) and not connection.allow_insecure_http:
        raise _misconfigured(runtime_id, "base_url", "insecure_http")
    check_secret_ref(token_ref, runtime_id=runtime_id, key="token_ref", policy=policy)
    ssl_context = None
    if connection.base_url.lower().startswith("https:"):
        key_pem = None
        if connection.tls_client_key_ref:
            key_pem = resolve_secret(
                connection.tls_client_key_ref, runtime_id=runtime_id, key="tls_client_key_ref", policy=policy
            )
        try:
            ssl_context = client_context(
                ca_file=connection.tls_ca_file, cert_file=connection.tls_client_cert_file, key_pem=key_pem
            )
        except TlsConfigError as exc:
            raise _misconfigured(runtime_id, exc.key, exc.reason) from None
    elif connection.tls_ca_file or connection.tls_client_cert_file or connection.tls_client_key_ref:
        raise _misconfigured(runtime_id, "base_url", "tls_without_https")
    client = RemoteRuntimeClient(
        runtime_id=runtime_id,
        base_url=connection.base_url,
        token_provider=lambda: resolve_token(token_ref, runtime_id=runtime_id, policy=policy),
        connect_timeout=connection.connect_timeout,
        read_timeout=connection.read_timeout,
        ssl_context=ssl_context,
    )
    return RemoteRuntimeHandle(runtime_id, client)


class RuntimeRegistry:
    """Process-wide map of runtime_id to handle and circuit breaker. ``reset()`` forgets everything."""

    def __init__(
        self,
        *,
        loader: Callable[[], dict[str, RuntimeConnection]] = load_connections,
        factory: Callable[[RuntimeConnection], RuntimeHandle] = build_handle,
    ) -> None:
        self._loader = loader
        self._factory = factory
        self._lock = threading.RLock()
        self._connections: dict[str, RuntimeConnection] = {}
        self._loaded_at: float | None = None
        self._handles: dict[str, tuple[tuple[object, ...], RuntimeHandle]] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._bulkheads: dict[str, Bulkhead] = {}
        self._online_marked_at: dict[str, float] = {}
        self._seen_refs: set[str] = set()

    def __repr__(self) -> str:
        return f"RuntimeRegistry(runtimes={sorted(self._connections)!r})"

    def connections(self, *, fresh: bool = False) -> dict[str, RuntimeConnection]:
        """Every runtime row, re-read when the cached copy is older than the refresh interval."""
        with self._lock:
            now = time.monotonic()
            interval = float(settings.YOI_REGISTRY_REFRESH_SECONDS)
            if fresh or self._loaded_at is None or now - self._loaded_at >= interval:
                self._connections = self._loader()
                self._loaded_at = now
                self._drop_stale_handles()
                self._learn_secrets()
            return self._connections

    def connection(self, runtime_id: str, *, refresh: bool = True) -> RuntimeConnection:
        """One runtime row, or RuntimeNotFound. ``refresh=False`` never reads the database (pool threads)."""
        connection = (self.connections() if refresh else self._connections).get(runtime_id)
        if connection is None:
            raise RuntimeNotFound(runtime_id=runtime_id)
        return connection

    def get(self, runtime_id: str, *, refresh: bool = True) -> RuntimeHandle:
        """The handle of an enabled runtime (built on first use, rebuilt when its row changed)."""
        connection = self.connection(runtime_id, refresh=refresh)
        if not connection.enabled:
            raise RuntimeDisabled(runtime_id=runtime_id)
        with self._lock:
            cached = self._handles.get(runtime_id)
            if cached is not None and cached[0] == connection.fingerprint:
                return cached[1]
            if cached is not None:
                self._close_handle(runtime_id, cached[1])
            handle = self._factory(connection)
            self._handles[runtime_id] = (connection.fingerprint, handle)
            logger.info("runtimes.registry.handle_built", extra={"runtime_id": runtime_id})
            return handle

    def breaker(self, runtime_id: str) -> CircuitBreaker:
        """The circuit breaker of a runtime (per process)."""
        with self._lock:
            breaker = self._breakers.get(runtime_id)
            if breaker is None:
                breaker = self._breakers[runtime_id] = CircuitBreaker(runtime_id)
            return breaker

    def bulkhead(self, runtime_id: str) -> Bulkhead:
        """The in-flight bulkhead of a runtime (per process), sized by its row's ``max_in_flight``.

        A changed limit makes a new bulkhead; calls still holding a slot of the old one release it there.
        """
        connection = self._connections.get(runtime_id)
        limit = max(1, connection.max_in_flight if connection is not None else DEFAULT_MAX_IN_FLIGHT)
        with self._lock:
            bulkhead = self._bulkheads.get(runtime_id)
            if bulkhead is None or bulkhead.limit != limit:
                bulkhead = self._bulkheads[runtime_id] = Bulkhead(runtime_id, limit=limit)
            return bulkhead

    def breaker_state(self, runtime_id: str) -> str:
        """The state of a runtime's breaker in this process (``closed`` when none was made yet)."""
        with self._lock:
            breaker = self._breakers.get(runtime_id)
        return "closed" if breaker is None else breaker.state

    def call(
        self,
        runtime_id: str,
        operation: Callable[[RuntimeHandle], T],
        *,
        guarded: bool = True,
        refresh: bool = True,
        writes: StatusWriter | None = None,
    ) -> T:
        """THE way to reach a runtime: run ``operation`` on its handle (see ``RuntimeCall``).

        ``guarded=False`` (probes) skips the breaker's fast-fail but still records the outcome.
        ``refresh=False`` uses the rows already loaded and ``writes`` collects the status writes, so that a
        call from a pool thread never touches the database (the caller applies them).
        """
        call = RuntimeCall(self, runtime_id, guarded=guarded, writes=writes)
        handle = call.begin(refresh=refresh)
        try:
            result = operation(handle)
        except BaseException as exc:
            call.end(exc)
            raise
        call.end(None)
        return result

    async def call_async(
        self, runtime_id: str, operation: Callable[[RuntimeHandle], Awaitable[T]], *, guarded: bool = True
    ) -> T:
        """``call`` for an operation that runs on the event loop (a live event stream's open).

        Rows older than the refresh interval are re-read on a thread first; status writes go to a thread.
        """
        if self.rows_stale():
            await asyncio.to_thread(self._refresh_rows)
        loop = asyncio.get_running_loop()
        call = RuntimeCall(self, runtime_id, guarded=guarded, writes=lambda write: _write_off_loop(loop, write))
        handle = call.begin(refresh=False)
        try:
            result = await operation(handle)
        except BaseException as exc:
            call.end(exc)
            raise
        call.end(None)
        return result

    def _refresh_rows(self) -> None:
        try:
            self.connections()
        finally:
            close_old_connections()

    def rows_stale(self) -> bool:
        """True when the next ``connections()`` would re-read the rows."""
        loaded_at = self._loaded_at
        return loaded_at is None or time.monotonic() - loaded_at >= float(settings.YOI_REGISTRY_REFRESH_SECONDS)

    def take_online_mark(self, runtime_id: str, *, interval: float) -> bool:
        """True at most once per ``interval`` per runtime: when a success should be written to its row."""
        now = time.monotonic()
        with self._lock:
            last = self._online_marked_at.get(runtime_id)
            if last is not None and now - last < interval:
                return False
            self._online_marked_at[runtime_id] = now
            return True

    def forget_online_mark(self, runtime_id: str) -> None:
        """After a failure, the next success is written at once."""
        with self._lock:
            self._online_marked_at.pop(runtime_id, None)

    def _learn_secrets(self) -> None:
        """Remember the values behind refs not seen before, so that no runtime's answer shows any of them
        (another runtime's token included); a value resolved later (a rotated file) is added at use."""

        fresh = {ref for connection in self._connections.values() for ref in connection.secret_refs}
        fresh -= self._seen_refs
        if fresh:
            self._seen_refs |= fresh
            known_secrets.add(*secret_values_of_refs(sorted(fresh)))

    def _drop_stale_handles(self) -> None:
        for runtime_id, (fingerprint, handle) in list(self._handles.items()):
            connection = self._connections.get(runtime_id)
            if connection is None or not connection.enabled or connection.fingerprint != fingerprint:
                self._close_handle(runtime_id, handle)

    def _close_handle(self, runtime_id: str, handle: RuntimeHandle) -> None:
        self._handles.pop(runtime_id, None)
        self._breakers.pop(runtime_id, None)
        try:
            handle.close()
        except Exception as exc:
            # No traceback: an embedded handle's store errors name paths.
            logger.warning(
                "runtimes.registry.close_failed",
                extra={"runtime_id": runtime_id, "error_class": type(exc).__name__},
            )
        logger.info("runtimes.registry.handle_closed", extra={"runtime_id": runtime_id})

    def reset(self) -> None:
        """Close every handle and forget every row (tests; settings changes)."""
        with self._lock:
            for runtime_id, (_, handle) in list(self._handles.items()):
                self._close_handle(runtime_id, handle)
            self._handles.clear()
            self._breakers.clear()
            self._bulkheads.clear()
            self._online_marked_at.clear()
            self._seen_refs.clear()
            self._connections = {}
            self._loaded_at = None


StatusWriter = Callable[[StatusWrite], None]


def _write_now(write: StatusWrite) -> None:
    write()


def _write_off_loop(loop: asyncio.AbstractEventLoop, write: StatusWrite) -> None:
    def run() -> None:
        try:
            write()
        except Exception:
            logger.exception("runtimes.registry.status_write_failed")
        finally:
            close_old_connections()

    loop.run_in_executor(None, run)


class RuntimeCall:
    """One call to one runtime, from its start to its outcome: the only owner of its bulkhead slot, the
    breaker and the row's status marks (upstream request metrics are taken at the HTTP boundary itself).

    A full bulkhead refuses at once (``RuntimeBusy``) before the breaker is asked, so a refusal never takes a
    half-open breaker's one trial. A transport-class failure counts against the runtime and marks its row at
    once; any answer from it (a result, or a refusal such as worker_not_found) counts for it and marks it
    online, at most once per interval per process. Settings of ours that cannot be used
    (``RuntimeMisconfigured``) mark the row but not the breaker: nothing was sent. A failure of this
    process's own setup (``LOCAL_FAILURES``) marks nothing. Errors raised before the runtime was reached
    (unknown, disabled, circuit open, busy, invalid ids) record nothing either.
    """

    def __init__(
        self, registry: RuntimeRegistry, runtime_id: str, *, guarded: bool, writes: StatusWriter | None
    ) -> None:
        self.registry = registry
        self.runtime_id = runtime_id
        self.guarded = guarded
        self._writes = writes or _write_now
        self._breaker: CircuitBreaker | None = None
        self._slot: Bulkhead | None = None

    def __repr__(self) -> str:
        return f"RuntimeCall(runtime_id={self.runtime_id!r})"

    def begin(self, *, refresh: bool) -> RuntimeHandle:
        """The runtime's handle, once its bulkhead has a slot and the breaker lets the call through."""
        runtime_id = self.runtime_id
        try:
            handle = self.registry.get(runtime_id, refresh=refresh)
        except RuntimeMisconfigured as exc:
            error = exc  # bound for the deferred write: ``exc`` is gone once this block ends
            self._writes(lambda: record_failure(runtime_id, error))
            raise
        bulkhead = self.registry.bulkhead(runtime_id)
        bulkhead.acquire()
        self._slot = bulkhead
        try:
            breaker = self.registry.breaker(runtime_id)
            if self.guarded:
                breaker.before_call()
        except BaseException:
            self._release()
            raise
        self._breaker = breaker
        return handle

    def _release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    def end(self, exc: BaseException | None) -> None:
        """Record the outcome: ``None`` for a result, else what the operation raised."""
        self._release()
        breaker, runtime_id = self._breaker, self.runtime_id
        assert breaker is not None
        if isinstance(exc, LOCAL_FAILURES):
            breaker.record_inconclusive()  # this process's own setup failed: nothing learnt about the runtime
            return
        if isinstance(exc, RuntimeMisconfigured):
            self._writes(lambda: record_failure(runtime_id, exc))
            return
        if isinstance(exc, TRANSPORT_FAILURES):
            breaker.record_failure()
            self.registry.forget_online_mark(runtime_id)
            self._writes(lambda: record_failure(runtime_id, exc))
            return
        if exc is not None and not isinstance(exc, Exception):
            return  # cancelled or interrupted: nothing is known about the runtime
        if exc is not None and not isinstance(exc, ANSWERED_ERRORS):
            breaker.record_success()  # not a transport failure: the runtime is not the problem
            return
        breaker.record_success()
        if self.registry.take_online_mark(runtime_id, interval=LAST_SEEN_WRITE_INTERVAL.total_seconds()):
            self._writes(lambda: record_online(runtime_id))


registry = RuntimeRegistry()
metrics.watch_breakers(registry.breaker_state)
