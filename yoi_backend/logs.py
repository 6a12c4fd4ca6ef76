"""The log formats: every line carries its fields, and no exception message reaches a log unscrubbed.

Events are logged as dotted names with their ids, code and reason in ``extra=``. ``FieldsFormatter`` (the
plain format) prints those fields after the event name as ``key=value``; ``JsonFormatter``
(``YOI_LOG_FORMAT=json``, python-json-logger) prints one JSON object per line with the same fields. Both add
the ``request_id`` of the request or socket that caused the line (``RequestIdFilter``).

Typed errors are raised ``from`` the transport or store failure behind them, whose message names the
runtime's URL or a store path. A traceback logged while such an error is being handled (a failing audit
write, a crash in a consumer) would print that whole chain. Both formatters print every exception of the
chain — frames as Python does — with each exception's message passed through ``runtimes.errors.scrub``
(URLs and paths replaced, length bounded), scrub the exception's text where the message quotes it, and
scrub every field value.
"""

from __future__ import annotations

import json
import logging
import traceback
from types import TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from runtimes.errors import scrub
from runtimes.request_context import current_request_id

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during, innermost first (the order Python prints)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain[::-1]


def _message(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {scrub(str(exc))}\n"


# What every LogRecord has of its own: anything else on a record came from ``extra=`` (or a filter).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields (from ``extra=``), request id last; ``None`` values are left out."""
    fields = {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRS and key != "request_id" and value is not None
    }
    request_id = getattr(record, "request_id", None)
    if request_id is not None:
        fields["request_id"] = request_id
    return fields


def _field_text(value: Any) -> str:
    """A field value for the plain format: scrubbed, quoted (JSON) when it has spaces, quotes or ``=``."""
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, str):
        text = scrub(value)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        text = scrub(_json_text(value))
    else:
        text = scrub(str(value))
    if not text or any(ch in text for ch in ' "='):
        return json.dumps(text, ensure_ascii=False)
    return text


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def _scrubbed_value(value: Any) -> Any:
    """A JSON field value with every string in it scrubbed (numbers and booleans as they are)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {str(key): _scrubbed_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


def _scrubbed_message(record: logging.LogRecord, message: str) -> str:
    # A message may quote its exception (daphne: "Exception inside application: %s"): scrubbed too.
    exc = record.exc_info[1] if record.exc_info else None
    raw = str(exc) if exc is not None else ""
    if raw and raw in message:
        return message.replace(raw, scrub(raw))
    return message


def _scrubbed_exception(ei: ExcInfo) -> str | None:
    """Every exception of the chain with frames and a scrubbed message (None: no exception to format)."""
    exc = ei[1]
    if exc is None:
        return None
    parts: list[str] = []
    for position, link in enumerate(_chain(exc)):
        if position:
            parts.append("\nThe exception above led to the one below.\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        parts.append(_message(link))
    return "".join(parts).rstrip("\n")


class RequestIdFilter(logging.Filter):
    """Adds the current request's id (``runtimes.request_context``) to every record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class ScrubbingFormatter(logging.Formatter):
    """``logging.Formatter`` whose tracebacks carry scrubbed exception messages."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _scrubbed_message(record, record.message)
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo) -> str:
        text = _scrubbed_exception(ei)
        return super().formatException(ei) if text is None else text


class FieldsFormatter(ScrubbingFormatter):
    """The plain format: the line, then each field of the record as ``key=value`` (values scrubbed)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = record_fields(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{key}={_field_text(value)}" for key, value in fields.items())


class JsonFormatter(_JsonFormatter):
    """One JSON object per line (python-json-logger): the record's fields as keys, scrubbed like the plain
    format (the message, every string field, the traceback)."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        for key, value in list(log_data.items()):
            if value is None and key not in {"message", "levelname", "name"}:
                del log_data[key]
            elif key == "message" and isinstance(value, str):
                log_data[key] = _scrubbed_message(record, value)
            elif key != "exc_info":
                log_data[key] = _scrubbed_value(value)

    def formatException(self, ei: ExcInfo) -> str:
        text = _scrubbed_exception(ei)
        return str(super().formatException(ei)) if text is None else text
