"""The closed error vocabulary of the Backend (docs/architecture.md §5).

Every failure that reaches a browser is one of these. Messages are fixed texts naming only ids; an
upstream message passes only through ``scrub`` (runtimes/scrub.py: no URLs, hosts, paths, tracebacks or
secrets, bounded length). A ``reason`` (``tls``, or the row key at fault) is for logs and the runtime's
status, never part of the browser envelope.
"""

from __future__ import annotations

from typing import Any, ClassVar

from runtimes.scrub import MAX_UPSTREAM_MESSAGE as MAX_UPSTREAM_MESSAGE
from runtimes.scrub import scrub as scrub


class YoiError(Exception):
    """Base of every typed Backend error: a code, an HTTP status and a fixed message."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    template: ClassVar[str] = "internal error"

    def __init__(
        self,
        *,
        runtime_id: str | None = None,
        worker_id: str | None = None,
        message: str | None = None,
        fields: dict[str, list[str]] | None = None,
        reason: str | None = None,
    ) -> None:
        self.runtime_id = runtime_id
        self.worker_id = worker_id
        self.fields = fields
        self.reason = reason
        self.message = message or self.template.format(runtime_id=runtime_id, worker_id=worker_id)
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        """The status a browser gets."""
        return self.status

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After for the circuit breaker)."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The ``error`` object of the envelope."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.runtime_id is not None:
            body["runtime_id"] = self.runtime_id
        if self.worker_id is not None:
            body["worker_id"] = self.worker_id
        if self.fields:
            body["fields"] = self.fields
        return body

    def __repr__(self) -> str:
        ids = f"runtime_id={self.runtime_id!r}, worker_id={self.worker_id!r}"
        return f"{type(self).__name__}(code={self.code!r}, {ids})"

    def __str__(self) -> str:
        return self.message


class InvalidRequest(YoiError):
    """Browser input failed validation; ``fields`` says which."""

    code, status, template = "invalid_request", 400, "the request is invalid"


class NotAuthenticated(YoiError):
    """The browser's session or user is no longer valid (an event socket outliving its login)."""

    code, status, template = "not_authenticated", 401, "authentication credentials are no longer valid"


class NotFound(YoiError):
    """No such route (an event socket opened on an unknown path)."""

    code, status, template = "not_found", 404, "not found"


class RuntimeNotFound(YoiError):
    """Unknown runtime_id, or one this user may not see."""

    code, status, template = "runtime_not_found", 404, "runtime {runtime_id} not found"


class WorkerNotFound(YoiError):
    """The runtime answered that it has no such worker."""

    code, status, template = "worker_not_found", 404, "worker {worker_id} not found on runtime {runtime_id}"


class RuntimeRejected(YoiError):
    """The runtime refused the command; carries the runtime's own code."""

    code, template = "runtime_rejected", "runtime {runtime_id} rejected the command"

    def __init__(self, *, upstream_code: str, upstream_status: int = 409, detail: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream_code = scrub(upstream_code)[:64] or "unknown"
        self.rejected_status = 409 if upstream_status == 409 else 422
        detail = scrub(detail)
        if detail:
            self.message = f"{self.message}: {detail}"

    @property
    def http_status(self) -> int:
        return self.rejected_status

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "upstream_code": self.upstream_code}


class IdempotencyKeyReused(YoiError):
    """An ``Idempotency-Key`` sent again with a different request (another body, worker or command)."""

    code, status = "idempotency_key_reused", 422
    template = "this Idempotency-Key was already used for a different request"


class RuntimeUnsupported(YoiError):
    """The runtime lacks the capability or route."""

    code, status, template = "runtime_unsupported", 501, "runtime {runtime_id} does not support this operation"


class RuntimeUnreachable(YoiError):
    """Connection refused, DNS failure, reset, TLS failure; or an embedded store held elsewhere."""

    code, status, retryable, template = "runtime_unreachable", 502, True, "runtime {runtime_id} is unreachable"


class RuntimeAuthFailed(YoiError):
    """The runtime rejected the Backend's credential, or the credential could not be resolved."""

    code, status = "runtime_auth_failed", 502
    template = "the Backend could not authenticate to runtime {runtime_id}"


class CredentialUnavailable(RuntimeAuthFailed):
    """This process cannot resolve or use the runtime's credential: no request was made. A browser sees
    ``runtime_auth_failed``; health code treats it as a fact about this process, not about the runtime."""

    template = "credential for runtime {runtime_id} is not configured"


class RuntimeBadResponse(YoiError):
    """Non-JSON, wrong shape, oversized body, unexpected 5xx, or a runtime reporting another identity."""

    code, status, retryable = "runtime_bad_response", 502, True
    template = "runtime {runtime_id} sent an invalid response"


class StoreNotOwned(RuntimeUnreachable):
    """An embedded runtime's store is held by another process (the one that serves it): unreachable from
    here, which says nothing about the runtime."""


class RuntimeMisconfigured(YoiError):
    """The Backend's own settings for the runtime cannot be used (a refused secret ref, an unusable CA,
    certificate or key file, plain http to a remote host): nothing is sent. ``reason`` names the key."""

    code, status = "runtime_misconfigured", 503
    template = "runtime {runtime_id} is misconfigured in the Backend; an operator must fix its settings"


class RuntimeDisabled(YoiError):
    """The runtime is disabled in the registry."""

    code, status, template = "runtime_disabled", 503, "runtime {runtime_id} is disabled"


class _RetryAfter(YoiError):
    """An error that tells the client when to try again (``Retry-After``, whole seconds, at least 1)."""

    def __init__(self, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry_after = max(1, int(retry_after + 0.999))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RuntimeCircuitOpen(_RetryAfter):
    """Too many recent failures: fast-fail until the breaker half-opens."""

    code, status, retryable = "runtime_circuit_open", 503, True
    template = "runtime {runtime_id} is failing; retry later"


class RuntimeBusy(_RetryAfter):
    """The runtime's in-flight bulkhead is full: refused at once, before any request is sent."""

    code, status, retryable = "runtime_busy", 503, True
    template = "runtime {runtime_id} is busy; retry later"


class RateLimited(_RetryAfter):
    """A per-user limit (commands, sockets, logins) was reached."""

    code, status, retryable, template = "rate_limited", 429, True, "too many requests; retry later"


class PayloadTooLarge(YoiError):
    """A request body over the cap, refused before it is read."""

    code, status, template = "payload_too_large", 413, "the request body is too large"


class RuntimeTimeout(YoiError):
    """Connect or read timeout."""

    code, status, retryable, template = "runtime_timeout", 504, True, "runtime {runtime_id} timed out"


# Failures that count against a runtime's health (the circuit breaker and probe status).
TRANSPORT_FAILURES: tuple[type[YoiError], ...] = (
    RuntimeUnreachable,
    RuntimeTimeout,
    RuntimeBadResponse,
    RuntimeAuthFailed,
)
# Failures of this process's own setup (its environment, its files) rather than of the runtime: they are
# reported where they happen and never written to the runtime's shared row nor counted by its breaker.
LOCAL_FAILURES: tuple[type[YoiError], ...] = (CredentialUnavailable, StoreNotOwned)
