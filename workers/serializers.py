"""Browser API serializers: explicit input serializers that validate bodies, output serializers over dataclasses.

Input serializers only check shape and bounds; what a runtime accepts (profile names, its own limits) is the
runtime's call and comes back as a typed error.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from runtimes.types import (
    INPUT_KINDS,
    INTENT_KINDS,
    MAX_JSON_SAFE_INT,
    MAX_REASON_CHARS,
    Capabilities,
    WorkerSpec,
    is_valid_id,
)
from workers.ids import ID_MESSAGE

# Bounds checked here so that an oversized body never reaches a runtime (the runtime default is 1 MiB).
MAX_INPUT_BYTES = 1024 * 1024
MAX_PROFILE_CHARS = 200
TRANSCRIPT_DEFAULT_LIMIT = 50
TRANSCRIPT_MAX_LIMIT = 200
RUNTIME_KINDS = ("embedded", "remote")
# A runtime row's status, or "disabled" for a runtime the registry does not contact.
RUNTIME_STATES = ("configured", "online", "offline", "unauthorized", "error", "disabled")


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
    """Drops the listed optional keys from the output when their value is unknown (None).

    Those fields are declared ``required=False`` and not nullable: the schema says they may be absent.
    """

    omit_when_none: tuple[str, ...] = ()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        """The serialized object without unknown optional keys."""
        data: dict[str, Any] = dict(super().to_representation(instance))
        for key in self.omit_when_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


@extend_schema_field(OpenApiTypes.DATETIME)
class EpochDateTimeField(serializers.Field):
    """A POSIX timestamp (seconds) shown as ISO 8601 UTC (``…Z``); None when unknown or out of range."""

    def to_representation(self, value: float) -> str | None:
        """The ISO 8601 text."""
        return iso_from_epoch(value)


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}]})
class EventIdField(serializers.JSONField):
    """An event id as the runtime gave it: its sequence number, an integer or a string."""


@extend_schema_field({"$ref": "#/components/schemas/ErrorCodeEnum"})
class ErrorCodeField(serializers.CharField):
    """An error code of the closed vocabulary (the ErrorCodeEnum of the error envelope)."""


class BlankAsNullCharField(serializers.CharField):
    """Text whose empty value is shown as null (an error code that is not there)."""

    def to_representation(self, value: Any) -> str | None:  # type: ignore[override]
        """The text, or None for an empty one."""
        return str(value) or None


@extend_schema_serializer(component_name="Worker")
class WorkerOutputSerializer(_OmitUnknownMixin):
    """A worker, always addressed by runtime_id + worker_id; the same for embedded and remote runtimes."""

    omit_when_none = ("created_at", "updated_at", "reason", "exit_code")

    runtime_id = serializers.CharField()
    worker_id = serializers.CharField()
    status = serializers.CharField(help_text="running | stopped | cancelled | failed")
    profile = serializers.CharField(allow_null=True)
    intent = serializers.DictField(help_text='e.g. {"kind": "assistant"}')
    transcript_len = serializers.IntegerField(allow_null=True)
    last_seq = serializers.IntegerField(allow_null=True)
    created_at = EpochDateTimeField(required=False, help_text="When the runtime created the worker, if it says.")
    updated_at = EpochDateTimeField(required=False, help_text="When the worker last changed, if the runtime says.")
    reason = serializers.CharField(required=False, help_text="Why the worker ended, when known.")
    exit_code = serializers.IntegerField(
        required=False, help_text="Exit code of a subprocess profile, when known."
    )
    epoch = serializers.CharField(
        allow_null=True,
        help_text="The epoch of the worker's event stream: a new value under the same ids means a new stream "
        "whose seqs say nothing about the old one's. Null when the runtime has no epochs.",
    )


@extend_schema_serializer(component_name="Ack")
class AckOutputSerializer(_OmitUnknownMixin):
    """A runtime's acknowledgement of a command."""

    omit_when_none = ("transcript_sequence", "event_id")

    runtime_id = serializers.CharField()
    worker_id = serializers.CharField()
    status = serializers.CharField(help_text="The worker's status after the command.")
    transcript_sequence = serializers.IntegerField(required=False)
    event_id = EventIdField(required=False, help_text="The event's sequence number.")


@extend_schema_serializer(component_name="TranscriptItem")
class TranscriptItemOutputSerializer(serializers.Serializer[Any]):
    """One transcript entry."""

    sequence = serializers.IntegerField()
    role = serializers.CharField()
    content = serializers.CharField(trim_whitespace=False)
    event_id = EventIdField(allow_null=True, help_text="The event's sequence number.")


@extend_schema_serializer(component_name="TranscriptPage")
class TranscriptPageOutputSerializer(serializers.Serializer[Any]):
    """A bounded page of a worker's transcript."""

    runtime_id = serializers.CharField()
    worker_id = serializers.CharField()
    start = serializers.IntegerField()
    limit = serializers.IntegerField()
    total_items = serializers.IntegerField()
    items = TranscriptItemOutputSerializer(many=True)
    next_start = serializers.IntegerField(allow_null=True, help_text="Null on the last page.")


@extend_schema_serializer(component_name="RuntimeStatus")
class RuntimeStatusOutputSerializer(serializers.Serializer[Any]):
    """The cached status of a runtime (read from a RuntimeView)."""

    state = serializers.ChoiceField(choices=RUNTIME_STATES, help_text="configured = never probed.")
    checked_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    error_code = BlankAsNullCharField(allow_null=True, help_text="The error code of the last failure, or null.")
    reason = BlankAsNullCharField(
        source="error_reason",
        allow_null=True,
        help_text='Why, when known: "tls", or the setting at fault (e.g. "token_ref"); else null.',
    )


@extend_schema_serializer(component_name="ProfileInfo")
class ProfileInfoOutputSerializer(serializers.Serializer[Any]):
    """A profile a runtime offers."""

    name = serializers.CharField(help_text="Pass as `profile` when creating a worker.")
    description = serializers.CharField(allow_blank=True)


@extend_schema_serializer(component_name="Capabilities")
class CapabilitiesOutputSerializer(serializers.Serializer[Any]):
    """What a runtime said it can do at its last probe; null where it did not say (older runtimes)."""

    protocol_version = serializers.CharField(allow_null=True)
    backend = serializers.CharField(allow_null=True, help_text="memory | fs_store")
    profiles = ProfileInfoOutputSerializer(many=True, allow_null=True)
    default_profile = serializers.CharField(allow_null=True)
    max_transcript_items = serializers.IntegerField(allow_null=True)
    max_input_bytes = serializers.IntegerField(allow_null=True)


@extend_schema_field(CapabilitiesOutputSerializer)
class CapabilitiesField(serializers.Field):
    """A ``Capabilities`` in its cached JSON form (the shape of CapabilitiesOutputSerializer)."""

    def to_representation(self, value: Capabilities) -> dict[str, Any]:
        """``Capabilities.to_json()``: one dict per row, no nested serializer pass (the list route's time)."""
        return value.to_json()


@extend_schema_serializer(component_name="Runtime")
class RuntimeOutputSerializer(serializers.Serializer[Any]):
    """A runtime as a browser sees it: identity, kind, status, capabilities; never its address or token."""

    runtime_id = serializers.CharField()
    display_name = serializers.CharField()
    kind = serializers.ChoiceField(choices=RUNTIME_KINDS)
    enabled = serializers.BooleanField()
    status = RuntimeStatusOutputSerializer(source="*")
    capabilities = CapabilitiesField()


@extend_schema_serializer(component_name="RuntimeFailure")
class RuntimeFailureOutputSerializer(serializers.Serializer[Any]):
    """One runtime that could not be listed in a cross-runtime listing."""

    runtime_id = serializers.CharField()
    code = ErrorCodeField()
