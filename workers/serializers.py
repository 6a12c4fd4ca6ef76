"""Browser API serializers: explicit input serializers that validate bodies, output serializers over dataclasses.

Input serializers only check shape and bounds; what a runtime accepts (profile names, its own limits) is the
runtime's call and comes back as a typed error.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from django.http import HttpRequest
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from runtimes.types import WorkerDetail, WorkerSpec, is_valid_id

ID_MESSAGE = "must be 1-120 characters of A-Z a-z 0-9 _ : -"

# Bounds checked here so that an oversized body never reaches a runtime (the runtime default is 1 MiB).
MAX_INPUT_BYTES = 1024 * 1024
MAX_PROFILE_CHARS = 200
MAX_REASON_CHARS = 500
TRANSCRIPT_DEFAULT_LIMIT = 50
TRANSCRIPT_MAX_LIMIT = 200
MAX_JSON_SAFE_INT = 2**53 - 1
INTENT_KINDS = ("assistant", "task", "role")
INPUT_KINDS = ("user", "system")


def id_errors(*, runtime_id: str | None = None, worker_id: str | None = None) -> dict[str, list[str]]:
    """``{field: [message]}`` for each given id that is not of the §1 alphabet."""
    given = {"runtime_id": runtime_id, "worker_id": worker_id}
    return {name: [ID_MESSAGE] for name, value in given.items() if value is not None and not is_valid_id(value)}


def raw_request_path(request: HttpRequest) -> str | None:
    """The path as the client sent it (still percent-encoded), when the server tells us (ASGI raw_path)."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("raw_path"), bytes):
        return scope["raw_path"].decode("latin-1")
    for key in ("RAW_URI", "REQUEST_URI"):
        value = request.META.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def path_id_errors(path: str) -> dict[str, list[str]]:
    """Check the id segments of ``/api/v1/runtimes/<runtime_id>/workers/<worker_id>/…`` in a path.

    On a raw path this catches ids that decoding would split (``a%2Fb``), which no route can see whole.
    """
    parts = path.split("?", 1)[0].split("/")
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == ["api", "v1", "runtimes"]:
            ids = parts[index + 3 :]
            break
    else:
        return {}

    def segment(position: int) -> str | None:
        # An empty last segment is the trailing slash of a list route, not an empty id.
        if position >= len(ids) or (position == len(ids) - 1 and ids[position] == ""):
            return None
        return unquote(ids[position], errors="replace")

    runtime_id = segment(0)
    worker_id = segment(2) if len(ids) > 1 and ids[1] == "workers" else None
    return id_errors(runtime_id=runtime_id, worker_id=worker_id)


def _check_input_size(value: str) -> str:
    """Reject text whose UTF-8 form exceeds MAX_INPUT_BYTES."""
    if len(value.encode("utf-8", errors="surrogatepass")) > MAX_INPUT_BYTES:
        raise serializers.ValidationError(f"must be at most {MAX_INPUT_BYTES} bytes (UTF-8).")
    return value


_no_surrogates = ProhibitSurrogateCharactersValidator()


def _check_json_safe(value: Any) -> Any:
    """Refuse free-form JSON a runtime could not store or pass on: lone surrogates, non-finite numbers (1e400).

    Both used to be 500s (UnicodeEncodeError in the store or the client; a 201 whose body could not be rendered).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                _no_surrogates(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            _no_surrogates(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise serializers.ValidationError("numbers must be finite.")
    return value


class StrictCharField(serializers.CharField):
    """A CharField that refuses non-strings instead of coercing numbers and booleans to text."""

    def to_internal_value(self, data: Any) -> str:
        """Accept only JSON strings."""
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def request_example(name: str, value: dict[str, Any]) -> OpenApiExample:
    """A request body example that the API accepts as shipped (Swagger's "Try it out" starts from it)."""
    return OpenApiExample(name, value=value, request_only=True)


# Valid on any runtime: builtin:echo is built into every runtime that speaks the protocol.
CREATE_EXAMPLE = {"profile": "builtin:echo", "intent": {"kind": "assistant"}, "initial_input": "hello"}
INPUT_EXAMPLE = {"content": "how are you?", "kind": "user"}
END_EXAMPLE = {"reason": "done for today"}


@extend_schema_serializer(examples=[request_example("an echo worker", CREATE_EXAMPLE)])
class WorkerCreateInputSerializer(serializers.Serializer[WorkerSpec]):
    """POST /runtimes/{runtime_id}/workers/: ``{profile?, intent?, initial_input?, worker_id?, options?}``."""

    profile = StrictCharField(required=False, allow_null=True, max_length=MAX_PROFILE_CHARS, trim_whitespace=False)
    intent = serializers.DictField(required=False)
    initial_input = StrictCharField(required=False, trim_whitespace=False)
    worker_id = StrictCharField(required=False, trim_whitespace=False)
    options = serializers.DictField(required=False)

    def validate_profile(self, value: str | None) -> str | None:
        """A profile name as the runtime lists it; blank is refused, null means the runtime default."""
        if value is not None and not value.strip():
            raise serializers.ValidationError("must not be blank; omit it for the runtime default.")
        return value

    def validate_intent(self, value: dict[str, Any]) -> dict[str, Any]:
        """An object whose ``kind`` is one of assistant / task / role."""
        kind = value.get("kind")
        if kind not in INTENT_KINDS:
            raise serializers.ValidationError(f"kind must be one of: {', '.join(INTENT_KINDS)}.")
        return _check_json_safe(value)

    def validate_options(self, value: dict[str, Any]) -> dict[str, Any]:
        """Free-form profile options that can travel as JSON."""
        return _check_json_safe(value)

    def validate_initial_input(self, value: str) -> str:
        """Non-blank text within the input size bound."""
        if not value.strip():
            raise serializers.ValidationError("must not be blank.")
        return _check_input_size(value)

    def validate_worker_id(self, value: str) -> str:
        """A worker id of the §1 alphabet."""
        if not is_valid_id(value):
            raise serializers.ValidationError(ID_MESSAGE)
        return value

    def to_spec(self) -> WorkerSpec:
        """The validated body as a WorkerSpec (intent defaults to assistant)."""
        data = self.validated_data
        return WorkerSpec(
            profile=data.get("profile"),
            intent=dict(data.get("intent") or {"kind": "assistant"}),
            initial_input=data.get("initial_input"),
            worker_id=data.get("worker_id"),
            options=data.get("options"),
        )


@extend_schema_serializer(examples=[request_example("a user message", INPUT_EXAMPLE)])
class WorkerInputInputSerializer(serializers.Serializer[dict[str, Any]]):
    """POST …/{worker_id}/input/: ``{content, kind?}``."""

    content = StrictCharField(trim_whitespace=False)
    kind = serializers.ChoiceField(choices=INPUT_KINDS, required=False, default="user")

    def validate_content(self, value: str) -> str:
        """Non-blank text within the input size bound."""
        if not value.strip():
            raise serializers.ValidationError("must not be blank.")
        return _check_input_size(value)


@extend_schema_serializer(examples=[request_example("with a reason", END_EXAMPLE)])
class WorkerEndInputSerializer(serializers.Serializer[dict[str, Any]]):
    """POST …/{worker_id}/stop/ and …/cancel/: an optional ``{reason?}``."""

    reason = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=MAX_REASON_CHARS)


class TranscriptQuerySerializer(serializers.Serializer[dict[str, Any]]):
    """GET …/{worker_id}/transcript/?start=&limit=: a bounded page."""

    start = serializers.IntegerField(required=False, default=0, min_value=0, max_value=MAX_JSON_SAFE_INT)
    limit = serializers.IntegerField(
        required=False, default=TRANSCRIPT_DEFAULT_LIMIT, min_value=1, max_value=TRANSCRIPT_MAX_LIMIT
    )


def iso_from_epoch(value: float | None) -> str | None:
    """A POSIX timestamp (seconds) as ISO 8601 UTC (``…Z``); None when unknown or out of range."""
    if value is None:
        return None
    try:
        moment = datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat().replace("+00:00", "Z")


class _OmitUnknownMixin(serializers.Serializer[Any]):
    """Drops the listed optional keys from the output when their value is unknown (None)."""

    omit_when_none: tuple[str, ...] = ()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        """The serialized object without unknown optional keys."""
        data: dict[str, Any] = dict(super().to_representation(instance))
        for key in self.omit_when_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class WorkerOutputSerializer(_OmitUnknownMixin):
    """A worker, always addressed by runtime_id + worker_id; the same for embedded and remote runtimes."""

    omit_when_none = ("created_at", "updated_at", "reason", "exit_code")

    runtime_id = serializers.CharField()
    worker_id = serializers.CharField()
    status = serializers.CharField()
    profile = serializers.CharField(allow_null=True)
    intent = serializers.DictField()
    transcript_len = serializers.IntegerField(allow_null=True)
    last_seq = serializers.IntegerField(allow_null=True)
    created_at = serializers.SerializerMethodField()
    updated_at = serializers.SerializerMethodField()
    reason = serializers.CharField(allow_null=True)
    exit_code = serializers.IntegerField(allow_null=True)
    epoch = serializers.CharField(allow_null=True)

    def get_created_at(self, worker: WorkerDetail) -> str | None:
        """When the runtime created the worker (ISO 8601), if it says."""
        return iso_from_epoch(worker.created_at)

    def get_updated_at(self, worker: WorkerDetail) -> str | None:
        """When the worker last changed (ISO 8601), if the runtime says."""
        return iso_from_epoch(worker.updated_at)


class AckOutputSerializer(_OmitUnknownMixin):
    """A runtime's acknowledgement of a command."""

    omit_when_none = ("transcript_sequence", "event_id")

    runtime_id = serializers.CharField()
    worker_id = serializers.CharField()
    status = serializers.CharField()
    transcript_sequence = serializers.IntegerField(allow_null=True)
    event_id = serializers.JSONField(allow_null=True)


class TranscriptItemOutputSerializer(serializers.Serializer[Any]):
    """One transcript entry."""

    sequence = serializers.IntegerField()
    role = serializers.CharField()
    content = serializers.CharField(trim_whitespace=False)
    event_id = serializers.JSONField(allow_null=True)


class TranscriptPageOutputSerializer(serializers.Serializer[Any]):
    """A bounded page of a worker's transcript."""

    runtime_id = serializers.CharField()
    worker_id = serializers.CharField()
    start = serializers.IntegerField()
    limit = serializers.IntegerField()
    total_items = serializers.IntegerField()
    items = TranscriptItemOutputSerializer(many=True)
    next_start = serializers.IntegerField(allow_null=True)


class RuntimeStatusOutputSerializer(serializers.Serializer[Any]):
    """The cached status of a runtime (read from a RuntimeView)."""

    state = serializers.CharField()
    checked_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    error_code = serializers.SerializerMethodField()
    reason = serializers.SerializerMethodField()

    def get_error_code(self, view: Any) -> str | None:
        """The last failure's code, or null when there is none."""
        return view.error_code or None

    def get_reason(self, view: Any) -> str | None:
        """Why the last failure happened (``tls``, or the setting at fault), or null."""
        return view.error_reason or None


_STATUS_SERIALIZER = RuntimeStatusOutputSerializer()


class RuntimeOutputSerializer(serializers.Serializer[Any]):
    """A runtime as a browser sees it: identity, kind, status, capabilities; never its address or token."""

    runtime_id = serializers.CharField()
    display_name = serializers.CharField()
    kind = serializers.CharField()
    enabled = serializers.BooleanField()
    status = serializers.SerializerMethodField()
    capabilities = serializers.SerializerMethodField()

    def get_status(self, view: Any) -> dict[str, Any]:
        """``{state, checked_at, last_seen_at, error_code, reason}``."""
        # One shared instance: a new nested serializer per row deep-copies its fields (most of a list's time).
        return dict(_STATUS_SERIALIZER.to_representation(view))

    def get_capabilities(self, view: Any) -> dict[str, Any]:
        """The cached capabilities (unknown values are null)."""
        return view.capabilities.to_json()


class RuntimeFailureOutputSerializer(serializers.Serializer[Any]):
    """One runtime that could not be listed in a cross-runtime listing."""

    runtime_id = serializers.CharField()
    code = serializers.CharField()
