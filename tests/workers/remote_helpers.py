"""Shared pieces of the remote-runtime API tests: a remote row with a distinctive address and token, the
browser routes and the upstream request each one makes, ``responses`` helpers, and leak detectors.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import responses
from rest_framework.test import APIClient

from runtimes.errors import YoiError
from runtimes.models import Runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
RESPONSES_DIR = REPO_ROOT / "fixtures" / "responses"

# The remote row every mocked test uses: an address and a token that must never reach a browser or a log.
HOST = "leaky-runtime.invalid"
PORT = 38999
BASE_URL = f"http://{HOST}:{PORT}"
TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_LEAKY_RUNTIME"
TOKEN = "tok-LEAKCHECK-5d2f9e81a7c4"
RID = "rt-remote"  # the runtime_id the canned bodies of fixtures/responses report
WID = "w-0001"  # the worker the canned bodies describe

RUNTIME_URL = f"/api/v1/runtimes/{RID}/"
WORKERS_URL = f"/api/v1/runtimes/{RID}/workers/"
WORKER_URL = f"{WORKERS_URL}{WID}/"
ALL_WORKERS_URL = "/api/v1/workers/"
RUNTIMES_URL = "/api/v1/runtimes/"


def canned(name: str) -> bytes:
    """A canned runtime body from fixtures/responses."""
    return (RESPONSES_DIR / name).read_bytes()


def upstream(path: str) -> str:
    """The absolute upstream URL of a protocol path on the mocked runtime."""
    return BASE_URL + path


@dataclass(frozen=True)
class Route:
    """A browser route on the remote runtime and the one upstream request it makes after the identity check."""

    name: str
    method: str
    path: str
    upstream_method: str
    upstream_path: str
    body: dict[str, Any] | None
    ok_fixture: str
    ok_status: int


ROUTES: dict[str, Route] = {
    route.name: route
    for route in (
        Route("list", "GET", WORKERS_URL, "GET", "/v1/workers", None, "workers.json", 200),
        Route(
            "create",
            "POST",
            WORKERS_URL,
            "POST",
            "/v1/workers",
            {"profile": "builtin:echo", "initial_input": "hi"},
            "worker_created.json",
            201,
        ),
        Route("detail", "GET", WORKER_URL, "GET", f"/v1/workers/{WID}", None, "worker.json", 200),
        Route(
            "input",
            "POST",
            f"{WORKER_URL}input/",
            "POST",
            f"/v1/workers/{WID}/input",
            {"content": "hello"},
            "ack_input.json",
            202,
        ),
        Route("stop", "POST", f"{WORKER_URL}stop/", "POST", f"/v1/workers/{WID}/stop", None, "ack_stop.json", 200),
        Route(
            "cancel",
            "POST",
            f"{WORKER_URL}cancel/",
            "POST",
            f"/v1/workers/{WID}/cancel",
            {"reason": "user asked"},
            "ack_cancel.json",
            200,
        ),
        Route(
            "transcript",
            "GET",
            f"{WORKER_URL}transcript/?start=0&limit=2",
            "GET",
            f"/v1/workers/{WID}/transcript",
            None,
            "transcript.json",
            200,
        ),
    )
}
COMMAND_ROUTES = ("create", "input", "stop", "cancel")
READ_ROUTES = ("list", "detail", "transcript")
WORKER_ROUTES = ("detail", "input", "stop", "cancel", "transcript")


def call(client: APIClient, route: Route) -> Any:
    """Send the browser request of ``route``."""
    if route.method == "GET":
        return client.get(route.path)
    if route.body is None:
        return client.post(route.path)
    return client.post(route.path, route.body, format="json")


def make_remote_row(
    monkeypatch: pytest.MonkeyPatch,
    *,
    runtime_id: str = RID,
    base_url: str = BASE_URL,
    token: str | None = TOKEN,
    token_env: str = TOKEN_ENV,
    token_ref: str | None = None,
    enabled: bool = True,
    connect_timeout: float = 0.5,
    read_timeout: float = 1.0,
    allow_insecure_http: bool = True,
) -> Runtime:
    """A remote Runtime row; its token (when given) is put in ``token_env`` (the ref is ``env:<token_env>``).

    The mocked runtime's host is not loopback, so its plain http:// needs ``allow_insecure_http``.
    """
    if token is not None:
        monkeypatch.setenv(token_env, token)
    return Runtime.objects.create(
        runtime_id=runtime_id,
        display_name=f"Remote {runtime_id}",
        kind=Runtime.Kind.REMOTE,
        base_url=base_url,
        token_ref=token_ref if token_ref is not None else f"env:{token_env}",
        enabled=enabled,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        allow_insecure_http=allow_insecure_http,
    )


def mock_runtime() -> responses.RequestsMock:
    """A ``responses`` mock for a ``with`` block (an unregistered URL raises ConnectionError)."""
    return responses.RequestsMock(assert_all_requests_are_fired=False)


def mock_summary(rsps: responses.RequestsMock, fixture: str = "runtime_summary.json") -> None:
    """The runtime answers its identity check (GET /v1/runtime) with a canned summary."""
    rsps.add("GET", upstream("/v1/runtime"), body=canned(fixture), content_type="application/json")


def mock_route(
    rsps: responses.RequestsMock,
    route: Route,
    *,
    body: bytes | str | Exception | None = None,
    status: int | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    auto_length: bool = False,
) -> None:
    """The upstream request of ``route`` answers ``body``/``status`` (by default its canned success)."""
    rsps.add(
        route.upstream_method,
        upstream(route.upstream_path),
        body=canned(route.ok_fixture) if body is None else body,
        status=route.ok_status if status is None else status,
        content_type=content_type,
        headers=headers,
        auto_calculate_content_length=auto_length,
    )


def assert_upstream_calls(rsps: responses.RequestsMock, count: int, *, token: str = TOKEN) -> None:
    """Exactly ``count`` upstream calls were made, each with the Backend's bearer token."""
    assert len(rsps.calls) == count, [call.request.url for call in rsps.calls]
    for made in rsps.calls:
        assert made.request.headers["Authorization"] == f"Bearer {token}"


def error_of(response: Any) -> dict[str, Any]:
    """The ``error`` object of an envelope response."""
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    # The request id is the one the response header carries (checked, then left out of comparisons).
    request_id = error.pop("request_id", None)
    if request_id is not None:
        assert response["X-Request-ID"] == request_id
    return error


# --------------------------------------------------------------------------------------------- leak detection


@dataclass(frozen=True)
class Secrets:
    """What must never leave the Backend: the runtime's host and port, its token, and any extra strings."""

    host: str
    port: int
    token: str
    extra: tuple[str, ...] = field(default=())

    def leaks(self, text: str) -> list[str]:
        """The secrets ``text`` contains (the port only as a whole number, not inside a longer digit run)."""
        found = [name for name, value in (("host", self.host), ("token", self.token)) if value in text]
        if re.search(rf"(?<![0-9]){self.port}(?![0-9])", text):
            found.append("port")
        found += [f"extra:{value}" for value in self.extra if value in text]
        return found

    def check(self, label: str, texts: Iterable[str]) -> None:
        """Fail naming the first text that contains a secret."""
        for text in texts:
            found = self.leaks(text)
            assert not found, f"{label} leaks {found}: {text[:2000]}"


MOCK_SECRETS = Secrets(host=HOST, port=PORT, token=TOKEN)

_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("x", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}
_FORMATTER = logging.Formatter()


def record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write for ``record``: message, extras, exception and stack text."""
    parts = [record.getMessage()]
    parts += [f"{key}={value!r}" for key, value in record.__dict__.items() if key not in _STANDARD_RECORD_KEYS]
    if record.exc_text:
        parts.append(record.exc_text)
    if record.exc_info:
        parts.append(_FORMATTER.formatException(record.exc_info))
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def response_texts(response: Any) -> list[str]:
    """The body, every header and every cookie of a Django test response."""
    texts = [response.content.decode("utf-8", errors="replace")]
    texts += [f"{name}: {value}" for name, value in response.headers.items()]
    texts += [morsel.OutputString() for morsel in response.cookies.values()]
    return texts


def error_texts(error: YoiError) -> list[str]:
    """repr, str, message and JSON of a typed error."""
    return [repr(error), str(error), error.message, json.dumps(error.to_json())]


class ErrorSpy:
    """Records every YoiError constructed while installed (on any thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.errors: list[YoiError] = []
        original = YoiError.__init__
        spy = self

        def init(self: YoiError, **kwargs: Any) -> None:
            original(self, **kwargs)
            spy.errors.append(self)

        monkeypatch.setattr(YoiError, "__init__", init)

    def texts(self) -> list[str]:
        """The texts of every recorded error."""
        return [text for error in self.errors for text in error_texts(error)]
