"""OpenAPI 3 documentation of the browser API (drf-spectacular): the error envelope, responses per kind of route,
parameters, and precise component shapes for the input/output serializers of ``workers.serializers``.

Nothing here changes behaviour. ``OPERATIONS_*`` are applied with ``extend_schema_view`` in ``workers.views``;
the serializer extensions below refine what drf-spectacular infers (names, enums, keys left out when unknown)
and register themselves when this module is imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    Direction,
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import serializers

from runtimes.errors import YoiError
from runtimes.types import ID_PATTERN, INPUT_KINDS, INTENT_KINDS
from workers.exceptions import INTERNAL_ERROR_MESSAGE
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

# --- the closed error vocabulary (docs/architecture.md §5, docs/api.md) --------------------------------

# code -> (HTTP status, when). Statuses are what workers.exceptions / runtimes.errors answer.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "body, query or id fails validation (`fields` says which); bad JSON"),
    "not_authenticated": (401, "no or bad credentials (`WWW-Authenticate: Token`)"),
    "permission_denied": (403, "authenticated but not allowed; CSRF check failed (session auth)"),
    "not_found": (404, "no such URL under /api/ (or WebSocket path under /ws/)"),
    "runtime_not_found": (404, "unknown runtime_id, or a runtime this user may not see"),
    "worker_not_found": (404, "the runtime has no such worker"),
    "method_not_allowed": (405, "the route does not take this method"),
    "runtime_rejected": (
        409,
        "the runtime refused the command (409 if it answered 409, else 422); `upstream_code`",
    ),
    "idempotency_key_reused": (
        422,
        "an `Idempotency-Key` sent again with a different request (another body, worker or command)",
    ),
    "payload_too_large": (413, "a request body over the cap (YOI_MAX_REQUEST_BYTES), refused before it is read"),
    "unsupported_media_type": (415, "a body that is not application/json"),
    "rate_limited": (429, "a per-user limit (commands: YOI_RATE_COMMANDS; sockets; logins); `Retry-After`"),
    "internal_error": (500, "a bug in the Backend; logged, fixed message"),
    "runtime_unsupported": (501, "the runtime lacks the route or capability"),
    "runtime_unreachable": (502, "connection refused, DNS failure, reset, TLS failure"),
    "runtime_auth_failed": (502, "the runtime rejected the Backend's credential (never a 401)"),
    "runtime_bad_response": (502, "the runtime answered a 5xx, non-JSON, the wrong shape, or an oversized body"),
    "runtime_disabled": (503, "the runtime is disabled in the registry (not contacted)"),
    "runtime_misconfigured": (503, "the Backend's settings for the runtime cannot be used (not contacted)"),
    "runtime_busy": (503, "max_in_flight requests to this runtime are in flight already; `Retry-After`"),
    "runtime_circuit_open": (503, "too many recent failures; fast-fail with `Retry-After`"),
    "runtime_timeout": (504, "connect or read timeout"),
}
# (code, when): the enum's values, and its description in the schema (ENUM_NAME_OVERRIDES names it ErrorCodeEnum).
ERROR_CODE_CHOICES: list[tuple[str, str]] = [(code, when) for code, (_, when) in ERROR_CODES.items()]
# runtime_rejected answers 409 or 422; every other code has one status.
EXTRA_STATUSES: dict[str, tuple[int, ...]] = {"runtime_rejected": (422,)}
# The 5xx that are not Backend bugs: a runtime's failure, mapped (docs/architecture.md §5).
MAPPED_UPSTREAM_CODES: dict[int, frozenset[str]] = {
    502: frozenset({"runtime_unreachable", "runtime_auth_failed", "runtime_bad_response"}),
    503: frozenset({"runtime_disabled", "runtime_misconfigured", "runtime_busy", "runtime_circuit_open"}),
    504: frozenset({"runtime_timeout"}),
}
# Fixed messages of the codes that are not runtimes.errors classes (workers.exceptions), for the examples.
API_MESSAGES: dict[str, str] = {
    "not_authenticated": "authentication credentials were not provided",
    "permission_denied": "you do not have permission to perform this action",
    "not_found": "not found",
    "method_not_allowed": "method not allowed",
    "unsupported_media_type": "unsupported media type; send application/json",
    "internal_error": INTERNAL_ERROR_MESSAGE,
}
EXAMPLE_RUNTIME_ID, EXAMPLE_WORKER_ID = "local", "w-c51dd3582b7743e4"


def yoi_error_classes() -> dict[str, type[YoiError]]:
    """``{code: class}`` of every typed error defined in runtimes.errors."""
    found: dict[str, type[YoiError]] = {}
    pending: list[type[YoiError]] = [YoiError]
    while pending:
        cls = pending.pop(0)
        if cls.__module__ == YoiError.__module__:
            found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def codes_for_status(status: int) -> list[str]:
    """The error codes a response with this HTTP status may carry."""
    return [code for code, (main, _) in ERROR_CODES.items() if status in (main, *EXTRA_STATUSES.get(code, ()))]


class ErrorSerializer(serializers.Serializer[Any]):
    """The ``error`` object of the envelope (documentation only)."""

    code = serializers.ChoiceField(choices=ERROR_CODE_CHOICES, help_text="Switch on this, not on the message.")
    message = serializers.CharField(help_text="A fixed text naming only ids; never a URL, path or token.")
    runtime_id = serializers.CharField(required=False, help_text="Present when the error is about a runtime.")
    worker_id = serializers.CharField(required=False, help_text="Present when the error is about a worker.")
    retryable = serializers.BooleanField(help_text="True when the same request may succeed later unchanged.")
    # The serializer metaclass moves declared fields into _declared_fields, so this does not shadow .fields.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="invalid_request: `{field: [messages]}`; nested keys dotted, body-wide under non_field_errors.",
    )
    upstream_code = serializers.CharField(required=False, help_text="runtime_rejected: the runtime's own code.")
    request_id = serializers.CharField(
        required=False, help_text="The request's id, as in the X-Request-ID response header (quote it in reports)."
    )


class ErrorEnvelopeSerializer(serializers.Serializer[Any]):
    """Every error under /api/: ``{"error": {...}}`` (docs/architecture.md §5)."""

    error = ErrorSerializer()


def example_error(code: str) -> dict[str, Any]:
    """An envelope for ``code`` as the API answers it (message and retryable from the error's own class)."""
    cls = yoi_error_classes().get(code)
    if cls is None:
        error: dict[str, Any] = {"code": code, "message": API_MESSAGES[code], "retryable": False}
    else:
        ids: dict[str, str] = {}
        if code.startswith("runtime_") or code == "worker_not_found":
            ids["runtime_id"] = EXAMPLE_RUNTIME_ID
        if code in {"worker_not_found", "runtime_rejected"}:
            ids["worker_id"] = EXAMPLE_WORKER_ID
        message = cls.template.format(runtime_id=EXAMPLE_RUNTIME_ID, worker_id=EXAMPLE_WORKER_ID)
        error = {"code": code, "message": message, "retryable": cls.retryable, **ids}
    if code == "invalid_request":
        error["fields"] = {"limit": ["Ensure this value is less than or equal to 200."]}
    if code == "runtime_rejected":
        error["message"] += ": worker is not running"
        error["upstream_code"] = "worker_not_running"
    return {"error": error}


def error_response(status: int) -> OpenApiResponse:
    """The envelope response of one HTTP status, listing its codes (with one example each)."""
    codes = codes_for_status(status)
    lines = "; ".join(f"`{code}`: {ERROR_CODES[code][1]}" for code in codes)
    examples = [OpenApiExample(code, value=example_error(code), response_only=True) for code in codes]
    return OpenApiResponse(ErrorEnvelopeSerializer, description=f"Error envelope. {lines}.", examples=examples)


def error_responses(statuses: Iterable[int]) -> dict[int, OpenApiResponse]:
    """``{status: envelope response}`` for each status."""
    return {status: error_response(status) for status in statuses}


# Error statuses per kind of route. Commands also have a body (413 over the cap, 415 not JSON) and a per-user
# rate (429); every route that may call a runtime may find its bulkhead full (503 runtime_busy).
AUTH_ERRORS = (401, 403, 500)
CACHE_READ_ERRORS = (400, 404, *AUTH_ERRORS)  # runtime detail: no upstream call can fail it
UPSTREAM_ERRORS = (404, 409, 422, 501, 502, 503, 504)
READ_ERRORS = tuple(sorted({400, *AUTH_ERRORS, *UPSTREAM_ERRORS}))
COMMAND_ERRORS = tuple(sorted({*READ_ERRORS, 413, 415, 429}))

# --- parameters ------------------------------------------------------------------------------------------------

ID_REGEX = f"^{ID_PATTERN}$"
RUNTIME_ID = OpenApiParameter(
    "runtime_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    required=True,
    pattern=ID_REGEX,
    description="A runtime id: 1-120 characters of A-Z a-z 0-9 _ : - (anything else is 400 invalid_request).",
    # What "Try it out" starts with: a runtime that `make run` registers.
    examples=[OpenApiExample("the local runtime of make run", value=EXAMPLE_RUNTIME_ID)],
)
WORKER_ID = OpenApiParameter(
    "worker_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    required=True,
    pattern=ID_REGEX,
    description="A worker id, unique within its runtime; same alphabet as runtime_id.",
)
HEADER_RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    description="Seconds to wait before retrying (429 rate_limited, 503 runtime_busy / runtime_circuit_open).",
    response=[429, 503],
)
HEADER_WWW_AUTHENTICATE = OpenApiParameter(
    "WWW-Authenticate",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="`Token`: the scheme to authenticate with.",
    response=[401],
)
HEADER_LOCATION = OpenApiParameter(
    "Location",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The new worker's URL (a path under /api/v1/).",
    response=[201],
)
HEADER_IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    pattern=r"^[\x21-\x7e]{1,255}$",
    description="Optional: makes the command safe to retry. The same key with the same body (and route) within "
    "24 h answers the first answer again without a second effect, also when that answer was lost; the same key "
    "with another request is `422 idempotency_key_reused`. Keys are per user: 1-255 visible ASCII characters.",
)
RESPONSE_HEADERS = [HEADER_RETRY_AFTER, HEADER_WWW_AUTHENTICATE]

# --- documentation-only shapes of the list routes and of cached runtime data ------------------------------------


# many=False: drf-spectacular would otherwise document a ViewSet ``list`` action as a bare JSON array.
@extend_schema_serializer(many=False)
class RuntimeListSerializer(serializers.Serializer[Any]):
    """``GET /runtimes/``."""

    items = RuntimeOutputSerializer(many=True)


@extend_schema_serializer(many=False)
class WorkerListSerializer(serializers.Serializer[Any]):
    """``GET /runtimes/{runtime_id}/workers/``."""

    items = WorkerOutputSerializer(many=True)


@extend_schema_serializer(many=False)
class WorkerListAllSerializer(serializers.Serializer[Any]):
    """``GET /workers/``: workers of every visible enabled runtime; runtimes that failed are in ``errors``."""

    items = WorkerOutputSerializer(many=True)
    errors = RuntimeFailureOutputSerializer(many=True)  # type: ignore[assignment]  # as ``fields`` above


# --- refinements of the API's own serializers -------------------------------------------------------------------


class _RefinedSerializer(OpenApiSerializerExtension):
    """Names an input serializer's component and adds what its validation says that drf-spectacular cannot
    read from the fields (patterns of the custom text checks, the keys of ``intent``).

    ``properties`` replace the inferred property schemas. The output serializers describe themselves
    (typed fields, ``extend_schema_field``, ``extend_schema_serializer``) in ``workers.serializers``.
    """

    component: str = ""
    properties: dict[str, Any] = {}

    def get_name(self, auto_schema: AutoSchema, direction: Direction) -> str | None:
        """The component name (drf-spectacular adds ``Request`` for request bodies)."""
        return self.component or None

    def map_serializer(self, auto_schema: AutoSchema, direction: Direction) -> dict[str, Any]:
        """drf-spectacular's own schema of the serializer, with ``properties`` laid over it."""
        schema: dict[str, Any] = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema.setdefault("properties", {}).update({name: dict(value) for name, value in self.properties.items()})
        return schema


# Text the input serializers accept: no NUL character (DRF refuses it), and not blank where they say so.
NO_NUL_TEXT = r"^[^\x00]*$"
NON_BLANK_TEXT = r"^[^\x00]*[^\s\x00][^\x00]*$"


class WorkerCreateSchema(_RefinedSerializer):
    """WorkerCreateRequest."""

    target_class = WorkerCreateInputSerializer
    component = "WorkerCreate"
    properties = {
        "profile": {
            "type": "string",
            "nullable": True,
            "minLength": 1,
            "maxLength": 200,
            "pattern": NON_BLANK_TEXT,
            "description": "A profile name as the runtime lists it (builtin:echo, or a named profile); "
            "absent or null: the runtime's default.",
        },
        "intent": {
            "type": "object",
            "properties": {"kind": {"type": "string", "enum": list(INTENT_KINDS)}},
            "required": ["kind"],
            "additionalProperties": {},
            "description": 'Default {"kind": "assistant"}; other keys pass through to the runtime.',
        },
        "initial_input": {
            "type": "string",
            "minLength": 1,
            "pattern": NON_BLANK_TEXT,
            "description": "First input, sent as the worker starts (non-blank, at most 1 MiB UTF-8).",
        },
        "worker_id": {"type": "string", "pattern": ID_REGEX, "description": "Ask for this id."},
        "options": {"type": "object", "additionalProperties": {}, "description": "Profile options."},
    }


class WorkerInputSchema(_RefinedSerializer):
    """WorkerInputRequest."""

    target_class = WorkerInputInputSerializer
    component = "WorkerInput"
    properties = {
        "content": {
            "type": "string",
            "minLength": 1,
            "pattern": NON_BLANK_TEXT,
            "description": "Non-blank text, at most 1 MiB (UTF-8).",
        },
        "kind": {"type": "string", "enum": list(INPUT_KINDS), "default": "user"},
    }


class WorkerEndSchema(_RefinedSerializer):
    """WorkerEndRequest (stop / cancel)."""

    target_class = WorkerEndInputSerializer
    component = "WorkerEnd"
    properties = {
        "reason": {"type": "string", "nullable": True, "maxLength": 500, "pattern": NO_NUL_TEXT},
    }


# --- operations -------------------------------------------------------------------------------------------------


def _operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    success: dict[int, Any],
    errors: Iterable[int],
    parameters: list[Any] | None = None,
    request: Any = None,
) -> Any:
    """One documented operation: success response(s) plus the envelope for each error status."""
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        tags=[tag],
        parameters=[*(parameters or []), *RESPONSE_HEADERS],
        request=request,
        responses={**success, **error_responses(errors)},
    )


OPERATIONS_RUNTIME: dict[str, Any] = {
    "list": _operation(
        "runtimes_list",
        "Runtimes this user may see (from the status cache; no runtime is contacted)",
        tag="runtimes",
        success={200: RuntimeListSerializer},
        errors=AUTH_ERRORS,
    ),
    "retrieve": _operation(
        "runtimes_retrieve",
        "One runtime (its cached status is refreshed first when stale)",
        tag="runtimes",
        parameters=[RUNTIME_ID],
        success={200: RuntimeOutputSerializer},
        errors=CACHE_READ_ERRORS,
    ),
    "probe": _operation(
        "runtimes_probe",
        "Probe one runtime now and answer its fresh status (a failed probe is a status, not an error)",
        tag="runtimes",
        parameters=[RUNTIME_ID],
        success={200: RuntimeOutputSerializer},
        errors=CACHE_READ_ERRORS,
    ),
}

OPERATIONS_RUNTIME_WORKER: dict[str, Any] = {
    "list": _operation(
        "runtime_workers_list",
        "Workers of one runtime",
        tag="workers",
        parameters=[RUNTIME_ID],
        success={200: WorkerListSerializer},
        errors=READ_ERRORS,
    ),
    "create": _operation(
        "runtime_workers_create",
        "Create a worker",
        tag="workers",
        parameters=[RUNTIME_ID, HEADER_LOCATION, HEADER_IDEMPOTENCY_KEY],
        request=WorkerCreateInputSerializer,
        success={201: OpenApiResponse(WorkerOutputSerializer, description="The new worker.")},
        errors=COMMAND_ERRORS,
    ),
    "retrieve": _operation(
        "runtime_workers_retrieve",
        "One worker",
        tag="workers",
        parameters=[RUNTIME_ID, WORKER_ID],
        success={200: WorkerOutputSerializer},
        errors=READ_ERRORS,
    ),
    "send_input": _operation(
        "runtime_workers_input",
        "Send input to a worker",
        tag="workers",
        parameters=[RUNTIME_ID, WORKER_ID, HEADER_IDEMPOTENCY_KEY],
        request=WorkerInputInputSerializer,
        success={202: OpenApiResponse(AckOutputSerializer, description="The runtime accepted the input.")},
        errors=COMMAND_ERRORS,
    ),
    "stop": _operation(
        "runtime_workers_stop",
        "Stop a worker gracefully (a no-op on a finished worker)",
        tag="workers",
        parameters=[RUNTIME_ID, WORKER_ID, HEADER_IDEMPOTENCY_KEY],
        request=WorkerEndInputSerializer,
        success={200: OpenApiResponse(AckOutputSerializer, description="Ack with the final status.")},
        errors=COMMAND_ERRORS,
    ),
    "cancel": _operation(
        "runtime_workers_cancel",
        "Cancel a worker at once (a no-op on a finished worker)",
        tag="workers",
        parameters=[RUNTIME_ID, WORKER_ID, HEADER_IDEMPOTENCY_KEY],
        request=WorkerEndInputSerializer,
        success={200: OpenApiResponse(AckOutputSerializer, description="Ack with the final status.")},
        errors=COMMAND_ERRORS,
    ),
    "transcript": _operation(
        "runtime_workers_transcript",
        "A bounded page of a worker's transcript",
        tag="workers",
        parameters=[RUNTIME_ID, WORKER_ID, TranscriptQuerySerializer],
        success={200: TranscriptPageOutputSerializer},
        errors=READ_ERRORS,
    ),
}

OPERATIONS_WORKER: dict[str, Any] = {
    "list": _operation(
        "workers_list",
        "Every visible worker across runtimes, with per-runtime failures",
        tag="workers",
        success={200: WorkerListAllSerializer},
        errors=AUTH_ERRORS,
    ),
}
