"""Log lines never carry a runtime URL or a store path, even in the traceback of a chained exception."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from runtimes.errors import RuntimeUnreachable
from yoi_backend.logs import ScrubbingFormatter

URL = "http://runtime.internal.example:38800/v1/workers/w1"
STORE_PATH = "/srv/yoi/embedded/rt/workers/w1/events.jsonl"


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("tests.yoi_backend.logs")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def failing_audit_while_a_typed_error_propagates() -> None:
    try:
        try:
            raise ConnectionError(f"HTTPConnectionPool: Max retries exceeded with url: {URL}")
        except ConnectionError as exc:
            raise RuntimeUnreachable(runtime_id="rt") from exc
    except RuntimeUnreachable:
        raise OSError(28, "No space left on device", STORE_PATH)  # noqa: B904 - a failure while handling one


def test_a_chained_traceback_keeps_its_frames_without_urls_or_paths(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log
    try:
        failing_audit_while_a_typed_error_propagates()
    except OSError:
        logger.exception("workers.services.audit_failed")
    text = stream.getvalue()
    assert "runtime.internal.example" not in text and STORE_PATH not in text
    assert text.count("Traceback (most recent call last):") == 3  # the whole chain, innermost first
    assert "failing_audit_while_a_typed_error_propagates" in text  # frames are kept
    assert "ConnectionError: HTTPConnectionPool: Max retries exceeded with url: <url>" in text
    assert "runtimes.errors.RuntimeUnreachable" in text and "No space left on device" in text


def test_a_message_quoting_its_exception_is_scrubbed(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    try:
        raise ConnectionError(f"cannot reach {URL}")
    except ConnectionError as exc:
        logger.error("Exception inside application: %s", exc, exc_info=exc)
    text = stream.getvalue()
    assert "runtime.internal.example" not in text
    assert text.startswith("ERROR tests.yoi_backend.logs Exception inside application: cannot reach <url>")


def test_the_project_logs_through_it() -> None:
    root_handlers = logging.getLogger().handlers
    assert any(isinstance(handler.formatter, ScrubbingFormatter) for handler in root_handlers)
