"""The log format: tracebacks keep their frames, but no exception message reaches a log unscrubbed.

Typed errors are raised ``from`` the transport or store failure behind them, whose message names the
runtime's URL or a store path. A traceback logged while such an error is being handled (a failing audit
write, a crash in a consumer) would print that whole chain. This formatter prints every exception of the
chain — frames as Python does — with each exception's message passed through ``runtimes.errors.scrub``
(URLs and paths replaced, length bounded), and scrubs the exception's text where the message quotes it.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType

from runtimes.errors import scrub

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


class ScrubbingFormatter(logging.Formatter):
    """``logging.Formatter`` whose tracebacks carry scrubbed exception messages."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A message may quote its exception (daphne: "Exception inside application: %s"): scrubbed too.
        exc = record.exc_info[1] if record.exc_info else None
        raw = str(exc) if exc is not None else ""
        if raw and raw in record.message:
            record.message = record.message.replace(raw, scrub(raw))
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo) -> str:
        exc = ei[1]
        if exc is None:
            return super().formatException(ei)
        parts: list[str] = []
        for position, link in enumerate(_chain(exc)):
            if position:
                parts.append("\nThe exception above led to the one below.\n\n")
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(link.__traceback__))
            parts.append(_message(link))
        return "".join(parts).rstrip("\n")
