"""Browser API viewsets (docs/api.md): parse and validate, call one service, render.

Ids are checked here, before any service call, so that a bad id is a 400 ``invalid_request`` and never
reaches a runtime. Errors are rendered by ``workers.exceptions.api_exception_handler``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from django.urls import reverse
from drf_spectacular.utils import extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import BaseThrottle

from runtimes.errors import InvalidRequest, RateLimited
from runtimes.selectors import runtime_get_visible, runtime_list_visible
from workers.exceptions import error_code
from workers.ids import id_errors, path_id_errors, raw_request_path
from workers.schema import OPERATIONS_RUNTIME, OPERATIONS_RUNTIME_WORKER, OPERATIONS_WORKER
from workers.serializers import (
    AckOutputSerializer,
    RuntimeFailureOutputSerializer,
    RuntimeOutputSerializer,
    TranscriptPageOutputSerializer,
    TranscriptQuerySerializer,
    WorkerCreateInputSerializer,
    WorkerEndInputSerializer,
    WorkerInputInputSerializer,
    WorkerOutputSerializer,
)
from workers.services import (
    worker_cancel,
    worker_command_refused,
    worker_create,
    worker_get,
    worker_list,
    worker_list_all,
    worker_send_input,
    worker_stop,
    worker_transcript,
)
from workers.throttling import CommandRateThrottle

ID_LOOKUP_REGEX = r"[^/]+"  # anything up to the next slash reaches the view, which answers 400 for bad ids
S = TypeVar("S", bound=BaseSerializer[Any])


def require_valid_ids(request: Request, *, runtime_id: str, worker_id: str | None = None) -> None:
    """Raise InvalidRequest (with ``fields``) unless the ids, as routed and as sent, are of the §1 alphabet."""
    fields = id_errors(runtime_id=runtime_id, worker_id=worker_id)
    raw_path = raw_request_path(request._request)
    if raw_path is not None:
        # An encoded slash (a%2Fb) is decoded before routing; only the raw path shows the id was bad.
        for name, messages in path_id_errors(raw_path).items():
            fields.setdefault(name, messages)
    if fields:
        raise InvalidRequest(fields=fields)


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 255
_IDEMPOTENCY_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}")
IDEMPOTENCY_KEY_MESSAGE = f"must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"


def idempotency_key(request: Request) -> str | None:
    """The browser's ``Idempotency-Key`` header, None without one; InvalidRequest when it is malformed."""
    value = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise InvalidRequest(fields={IDEMPOTENCY_KEY_HEADER: [IDEMPOTENCY_KEY_MESSAGE]})
    return value


def validated(serializer_class: type[S], data: Any) -> S:
    """An input serializer bound to ``data`` and validated (ValidationError -> 400 with fields)."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer


MAX_BODY_DEPTH = 100  # far below the ~950 levels at which json.loads / json.dumps hit Python's recursion limit


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value has more than ``limit`` levels of arrays/objects (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class ApiJSONParser(JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than MAX_BODY_DEPTH with a 400 (they used to be 500s:
    a RecursionError while parsing, or later while a runtime stored or the client encoded them)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            data = None
        else:
            if not _nested_deeper_than(data, MAX_BODY_DEPTH):
                return data
        raise ParseError(f"JSON parse error - the body is nested more than {MAX_BODY_DEPTH} levels deep")


class ApiViewSet(viewsets.ViewSet):
    """Base of the browser API viewsets: JSON bodies only (DRF reads them through Django's size cap)."""

    parser_classes = [ApiJSONParser]


@extend_schema_view(**OPERATIONS_RUNTIME)
class RuntimeViewSet(ApiViewSet):
    """``/runtimes/``: the runtimes this user may see, with cached status and capabilities."""

    lookup_field = "runtime_id"
    lookup_value_regex = ID_LOOKUP_REGEX

    def list(self, request: Request) -> Response:
        """Every visible runtime, from the cache (no upstream call)."""
        views = runtime_list_visible(user=request.user)
        return Response({"items": RuntimeOutputSerializer(views, many=True).data})

    def retrieve(self, request: Request, runtime_id: str) -> Response:
        """One runtime; its status is refreshed first when stale."""
        require_valid_ids(request, runtime_id=runtime_id)
        view = runtime_get_visible(runtime_id=runtime_id, user=request.user)
        return Response(RuntimeOutputSerializer(view).data)

    @action(detail=True, methods=["post"])
    def probe(self, request: Request, runtime_id: str) -> Response:
        """Probe the runtime now (whatever its breaker says) and answer its fresh status."""
        require_valid_ids(request, runtime_id=runtime_id)
        view = runtime_get_visible(runtime_id=runtime_id, user=request.user, probe=True)
        return Response(RuntimeOutputSerializer(view).data)


# The viewset actions that are commands, and the AuditEvent action each records.
COMMAND_ACTIONS = {"create": "create", "send_input": "input", "stop": "stop", "cancel": "cancel"}


@extend_schema_view(**OPERATIONS_RUNTIME_WORKER)
class RuntimeWorkerViewSet(ApiViewSet):
    """``/runtimes/{runtime_id}/workers/``: workers of one runtime and the commands on them.

    Commands are rate-limited per user (CommandRateThrottle), and one refused before its service runs —
    over the rate, bad ids, a bad body — is audited with the code it is answered with.
    """

    lookup_field = "worker_id"
    lookup_value_regex = ID_LOOKUP_REGEX

    def get_throttles(self) -> list[BaseThrottle]:
        """The command rate on commands only; reads are not limited."""
        return [CommandRateThrottle()] if self.action in COMMAND_ACTIONS else []

    def throttled(self, request: Request, wait: float | None) -> NoReturn:
        """Over the command rate: 429 ``rate_limited`` with Retry-After, audited."""
        error = RateLimited(retry_after=wait or 1.0)
        self._audit_refusal(error.code)
        raise error

    @contextmanager
    def refusals_audited(self) -> Iterator[None]:
        """Audit a command refused inside the block (ids, body) with its envelope code, and re-raise."""
        try:
            yield
        except Exception as exc:
            self._audit_refusal(error_code(exc))
            raise

    def _audit_refusal(self, outcome: str) -> None:
        worker_command_refused(
            action=COMMAND_ACTIONS[str(self.action)],
            runtime_id=str(self.kwargs.get("runtime_id", "")),
            worker_id=str(self.kwargs.get("worker_id", "")),
            user=self.request.user,
            outcome=outcome,
        )

    def list(self, request: Request, runtime_id: str) -> Response:
        """Workers of the runtime."""
        require_valid_ids(request, runtime_id=runtime_id)
        workers = worker_list(runtime_id=runtime_id, user=request.user)
        return Response({"items": WorkerOutputSerializer(workers, many=True).data})

    def create(self, request: Request, runtime_id: str) -> Response:
        """Create a worker: ``{profile?, intent?, initial_input?, worker_id?, options?}`` -> 201 worker."""
        with self.refusals_audited():
            require_valid_ids(request, runtime_id=runtime_id)
            spec = validated(WorkerCreateInputSerializer, request.data).to_spec()
            key = idempotency_key(request)
        worker = worker_create(runtime_id=runtime_id, spec=spec, user=request.user, idempotency_key=key)
        location = reverse(
            "workers:runtime-worker-detail",
            kwargs={"runtime_id": worker.runtime_id, "worker_id": worker.worker_id},
        )
        return Response(
            WorkerOutputSerializer(worker).data, status=status.HTTP_201_CREATED, headers={"Location": location}
        )

    def retrieve(self, request: Request, runtime_id: str, worker_id: str) -> Response:
        """One worker."""
        require_valid_ids(request, runtime_id=runtime_id, worker_id=worker_id)
        worker = worker_get(runtime_id=runtime_id, worker_id=worker_id, user=request.user)
        return Response(WorkerOutputSerializer(worker).data)

    @action(detail=True, methods=["post"], url_path="input", url_name="input")
    def send_input(self, request: Request, runtime_id: str, worker_id: str) -> Response:
        """Send ``{content, kind?}`` to the worker -> 202 ack."""
        with self.refusals_audited():
            require_valid_ids(request, runtime_id=runtime_id, worker_id=worker_id)
            body = validated(WorkerInputInputSerializer, request.data).validated_data
            key = idempotency_key(request)
        ack = worker_send_input(
            runtime_id=runtime_id,
            worker_id=worker_id,
            content=body["content"],
            kind=body["kind"],
            user=request.user,
            idempotency_key=key,
        )
        return Response(AckOutputSerializer(ack).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"])
    def stop(self, request: Request, runtime_id: str, worker_id: str) -> Response:
        """Graceful end (body optional: ``{reason?}``) -> 200 ack with the final status."""
        with self.refusals_audited():
            require_valid_ids(request, runtime_id=runtime_id, worker_id=worker_id)
            reason = validated(WorkerEndInputSerializer, request.data).validated_data.get("reason")
            key = idempotency_key(request)
        ack = worker_stop(
            runtime_id=runtime_id, worker_id=worker_id, reason=reason, user=request.user, idempotency_key=key
        )
        return Response(AckOutputSerializer(ack).data)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, runtime_id: str, worker_id: str) -> Response:
        """Immediate end (body optional: ``{reason?}``) -> 200 ack with the final status."""
        with self.refusals_audited():
            require_valid_ids(request, runtime_id=runtime_id, worker_id=worker_id)
            reason = validated(WorkerEndInputSerializer, request.data).validated_data.get("reason")
            key = idempotency_key(request)
        ack = worker_cancel(
            runtime_id=runtime_id, worker_id=worker_id, reason=reason, user=request.user, idempotency_key=key
        )
        return Response(AckOutputSerializer(ack).data)

    @action(detail=True, methods=["get"])
    def transcript(self, request: Request, runtime_id: str, worker_id: str) -> Response:
        """A bounded transcript page: ``?start=`` (≥ 0, default 0), ``?limit=`` (1-200, default 50)."""
        require_valid_ids(request, runtime_id=runtime_id, worker_id=worker_id)
        query = validated(TranscriptQuerySerializer, request.query_params).validated_data
        page = worker_transcript(
            runtime_id=runtime_id,
            worker_id=worker_id,
            start=query["start"],
            limit=query["limit"],
            user=request.user,
        )
        return Response(TranscriptPageOutputSerializer(page).data)


@extend_schema_view(**OPERATIONS_WORKER)
class WorkerViewSet(ApiViewSet):
    """``/workers/``: every visible worker across runtimes, with partial results."""

    def list(self, request: Request) -> Response:
        """``{"items": [...], "errors": [{"runtime_id", "code"}]}``; one failing runtime does not fail all."""
        listing = worker_list_all(user=request.user)
        return Response(
            {
                "items": WorkerOutputSerializer(listing.items, many=True).data,
                "errors": RuntimeFailureOutputSerializer(listing.errors, many=True).data,
            }
        )
