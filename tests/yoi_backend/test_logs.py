"""Log lines carry their fields (plain key=value and JSON) and never a runtime URL, token or store path, even
in the traceback of a chained exception."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from runtimes.client import RemoteRuntimeClient
from runtimes.errors import RuntimeUnreachable, YoiError
from runtimes.handles.embedded import EmbeddedRuntimeHandle
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.request_context import bind_request_id, unbind_request_id
from runtimes.secrets import resolve_token
from yoi_backend.logs import FieldsFormatter, JsonFormatter, RequestIdFilter, ScrubbingFormatter

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


# --------------------------------------------------------------------------------------------- fields


RID = "rt-remote"  # the runtime_id of the canned summary
WID = "w-0001"
HOST_MARK = "runtime-host-of-logs"
BASE_URL = f"http://{HOST_MARK}.invalid:38998"
TOKEN = "tok-LOGS-never-in-a-line-51f0"
SUMMARY = (Path(__file__).resolve().parents[2] / "fixtures" / "responses" / "runtime_summary.json").read_text()


def formatted(records: list[logging.LogRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """Each record through the plain format and through the JSON format."""
    fields_format = "%(levelname)s %(name)s %(message)s"
    plain = FieldsFormatter(fields_format)
    as_json = JsonFormatter(fields_format)
    request_ids = RequestIdFilter()
    for record in records:
        request_ids.filter(record)
    return [plain.format(r) for r in records], [json.loads(as_json.format(r)) for r in records]


@pytest.fixture
def runtime_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("runtimes")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(previous)


def remote_client() -> RemoteRuntimeClient:
    return RemoteRuntimeClient(
        runtime_id=RID, base_url=BASE_URL, token_provider=lambda: TOKEN, connect_timeout=0.5, read_timeout=0.5
    )


FAILURES: dict[str, tuple[Callable[[responses.RequestsMock], None], str, str, str]] = {
    # name: (how the runtime fails, the event, its code, its reason)
    "refused": (
        lambda rsps: rsps.add(
            "GET", BASE_URL + "/v1/workers", body=requests.ConnectionError(f"refused {BASE_URL}")
        ),
        "runtimes.client.transport_error",
        "runtime_unreachable",
        "ConnectionError",
    ),
    "timeout": (
        lambda rsps: rsps.add("GET", BASE_URL + "/v1/workers", body=requests.ReadTimeout(f"read {BASE_URL}")),
        "runtimes.client.transport_error",
        "runtime_timeout",
        "ReadTimeout",
    ),
    "refused_credential": (
        lambda rsps: rsps.add(
            "GET",
            BASE_URL + "/v1/workers",
            status=401,
            json={"error": {"code": "unauthorized", "message": f"bad token {TOKEN} at {BASE_URL}"}},
        ),
        "runtimes.client.upstream_status",
        "runtime_auth_failed",
        "http_401",
    ),
    "not_json": (
        lambda rsps: rsps.add("GET", BASE_URL + "/v1/workers", body=f"<html>{BASE_URL}</html>"),
        "runtimes.client.bad_response",
        "runtime_bad_response",
        "not_json",
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_each_failure_kind_logs_runtime_code_and_reason_in_both_formats(
    failure: str, runtime_records: list[logging.LogRecord]
) -> None:
    arrange, event, code, reason = FAILURES[failure]
    client = remote_client()
    handle = RemoteRuntimeHandle(RID, client)
    token = bind_request_id("req-logs-1")
    try:
        with responses.RequestsMock() as rsps:
            rsps.add("GET", BASE_URL + "/v1/runtime", body=SUMMARY)
            arrange(rsps)
            with pytest.raises(YoiError):
                handle.list_workers()
    finally:
        unbind_request_id(token)
        client.close()
    plain, as_json = formatted([r for r in runtime_records if r.getMessage() == event])
    assert plain and as_json, [r.getMessage() for r in runtime_records]
    assert f"{event} runtime_id={RID} " in plain[0]
    assert f" code={code} " in plain[0] and f" reason={reason}" in plain[0]
    assert plain[0].endswith(" request_id=req-logs-1")
    line = as_json[0]
    assert (line["message"], line["runtime_id"], line["code"], line["reason"]) == (event, RID, code, reason)
    assert line["request_id"] == "req-logs-1"
    text = "\n".join(plain) + json.dumps(as_json)
    assert HOST_MARK not in text and TOKEN not in text


def test_an_unresolvable_secret_logs_code_and_reason_but_no_name(
    runtime_records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("YOI_RUNTIME_TOKEN_LOGS_UNSET", raising=False)
    with pytest.raises(YoiError):
        resolve_token("env:YOI_RUNTIME_TOKEN_LOGS_UNSET", runtime_id=RID)
    plain, as_json = formatted([r for r in runtime_records if r.getMessage() == "runtimes.secret.unresolved"])
    assert "runtime_id=rt-remote code=runtime_auth_failed ref_kind=env reason=missing" in plain[0]
    assert as_json[0]["reason"] == "missing" and "YOI_RUNTIME_TOKEN_LOGS_UNSET" not in plain[0] + str(as_json)


def test_an_unusable_embedded_store_logs_code_and_reason_but_no_path(
    runtime_records: list[logging.LogRecord], tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("file")
    handle = EmbeddedRuntimeHandle(RID, data_dir=blocked)
    with pytest.raises(YoiError):
        handle.summary()
    plain, as_json = formatted(
        [r for r in runtime_records if r.getMessage() == "runtimes.embedded.store_unavailable"]
    )
    assert "code=runtime_unreachable reason=store_unusable" in plain[0]
    assert str(tmp_path) not in "\n".join(plain) + json.dumps(as_json)


def test_field_values_are_scrubbed_and_quoted() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "x.event", (), None)
    record.detail = f"failed at {BASE_URL}/v1 now"
    record.fields = ["a b"]
    record.count = 3
    record.nothing = None
    [plain], [as_json] = formatted([record])
    assert plain == 'WARNING x x.event detail="failed at <url> now" fields="[\\"a b\\"]" count=3'
    assert as_json["detail"] == "failed at <url> now" and as_json["fields"] == ["a b"] and as_json["count"] == 3
    assert "nothing" not in as_json and "request_id" not in as_json


def test_json_lines_keep_scrubbed_tracebacks() -> None:
    try:
        failing_audit_while_a_typed_error_propagates()
    except OSError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "x.failed", (), sys.exc_info())
    [line] = [json.loads(JsonFormatter("%(levelname)s %(name)s %(message)s").format(record))]
    assert line["message"] == "x.failed" and line["levelname"] == "ERROR"
    assert "Traceback (most recent call last)" in line["exc_info"]
    assert "runtime.internal.example" not in json.dumps(line) and STORE_PATH not in json.dumps(line)


def test_the_project_logs_json_when_asked(tmp_path: Path) -> None:
    env = {**os.environ, "YOI_LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "yoi_backend.settings_test"}
    env["YOI_DATA_DIR"] = str(tmp_path)
    script = (
        "import django, logging; django.setup(); "
        "logging.getLogger('runtimes.x').warning('runtimes.x.event', extra={'runtime_id': 'rt-1', 'code': 'c'})"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["logger"], line["level"], line["message"]) == ("runtimes.x", "WARNING", "runtimes.x.event")
    assert (line["runtime_id"], line["code"]) == ("rt-1", "c") and "time" in line
