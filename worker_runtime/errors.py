"""Typed errors of the runtime protocol: each carries its wire code and HTTP status."""

from __future__ import annotations


class RuntimeApiError(Exception):
    """An error answered to a runtime client as ``{"error": {"code", "message"}}``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, dict[str, str]]:
        """The protocol's error body."""
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status})"


class InvalidRequest(RuntimeApiError):
    """Missing, blank or malformed fields, bad ids, unknown profile."""

    status = 400
    code = "invalid_request"


class InvalidJson(RuntimeApiError):
    """The body is not JSON (or not a JSON object)."""

    status = 400
    code = "invalid_json"


class InvalidQuery(RuntimeApiError):
    """A query parameter is not of its type."""

    status = 400
    code = "invalid_query"


class LimitTooLarge(RuntimeApiError):
    """A page ``limit`` above the runtime's maximum."""

    status = 400
    code = "limit_too_large"


class PayloadTooLarge(RuntimeApiError):
    """An input or body above the runtime's limits."""

    status = 413
    code = "payload_too_large"


class Unauthorized(RuntimeApiError):
    """Missing or wrong bearer token; says nothing about which."""

    status = 401
    code = "unauthorized"


class WorkerNotFound(RuntimeApiError):
    """No worker with that id in this runtime."""

    status = 404
    code = "worker_not_found"


class WorkerNotRunning(RuntimeApiError):
    """A command that needs a running worker reached a finished one."""

    status = 409
    code = "worker_not_running"


class WorkerExists(RuntimeApiError):
    """A create asked for a worker_id that is taken."""

    status = 409
    code = "worker_exists"


class RuntimeStopped(RuntimeApiError):
    """The runtime is shutting down and takes no new commands."""

    status = 409
    code = "runtime_stopped"


class IdempotencyConflict(RuntimeApiError):
    """An Idempotency-Key reused with a different request."""

    status = 422
    code = "idempotency_key_reused"


class StoreError(Exception):
    """The store cannot be opened: corrupt snapshot, wrong runtime, or locked by another process."""


class StoreLocked(StoreError):
    """The store is locked by another process: it belongs to that process while it runs."""
