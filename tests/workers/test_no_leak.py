"""No leak (docs/architecture.md §1): a runtime's address and token never reach a browser or a log.

A parametrized matrix over every browser API endpoint and every error path of the §5 table (plus the
successes): the response body, every header, every captured log record (all loggers at DEBUG), every typed
error raised on the way, and the repr/str of every object that held the connection (rows, connections,
registry, handles, clients, breakers, and containers of them) contain neither the runtime's host, its port,
nor its token. The upstream side is mocked with ``responses`` and deliberately hostile: transport
exceptions carry the URL in their text, and error bodies echo the address, the token and server paths.
Then: the Django admin as a superuser never shows the token value, ``file:`` refs behave the same, and
a missing secret is a 502 ``runtime_auth_failed`` that names neither the variable nor the path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
import urllib3
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import NoReverseMatch, reverse
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from runtimes.breaker import FAILURE_THRESHOLD
from runtimes.errors import YoiError
from runtimes.handles.remote import RemoteRuntimeHandle
from runtimes.models import AuditEvent, Runtime
from runtimes.registry import registry
from tests.workers.remote_helpers import (
    ALL_WORKERS_URL,
    BASE_URL,
    HOST,
    MOCK_SECRETS,
    PORT,
    RID,
    ROUTES,
    RUNTIME_URL,
    RUNTIMES_URL,
    TOKEN,
    TOKEN_ENV,
    WID,
    ErrorSpy,
    Secrets,
    canned,
    error_of,
    make_remote_row,
    mock_runtime,
    record_text,
    response_texts,
    upstream,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _static_files_not_scanned(settings: SettingsWrapper) -> None:
    """WhiteNoise scans every static file for each new test client (0.1 s); these requests fetch none."""
    settings.WHITENOISE_USE_FINDERS = False


# An upstream message that names everything it must not pass on: URL, bare host:port, token, server path.
LEAKY_MESSAGE = (
    f"failed at {BASE_URL}/v1/workers/{WID} (peer {HOST}:{PORT}, credential Bearer {TOKEN}) "
    "see /srv/yoi/store/workers/w-0001.json"
)


def leaky_error(code: str) -> bytes:
    """A protocol error body whose message echoes the runtime's secrets."""
    return json.dumps({"error": {"code": code, "message": LEAKY_MESSAGE}}).encode()


# --------------------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """One browser route and method, and the upstream request it ends in (None: it makes none)."""

    name: str
    url_name: str
    method: str
    path: str
    body: dict[str, Any] | None
    target: tuple[str, str] | None


def _worker_endpoint(route_name: str, url_name: str) -> Endpoint:
    route = ROUTES[route_name]
    return Endpoint(
        f"worker_{route_name}",
        url_name,
        route.method,
        route.path,
        route.body,
        (route.upstream_method, route.upstream_path),
    )


ENDPOINTS: list[Endpoint] = [
    Endpoint("runtime_list", "runtime-list", "GET", RUNTIMES_URL, None, None),
    Endpoint("runtime_detail", "runtime-detail", "GET", RUNTIME_URL, None, ("GET", "/v1/runtime")),
    Endpoint("runtime_probe", "runtime-probe", "POST", RUNTIME_URL + "probe/", None, ("GET", "/v1/runtime")),
    _worker_endpoint("list", "runtime-worker-list"),
    _worker_endpoint("create", "runtime-worker-list"),
    _worker_endpoint("detail", "runtime-worker-detail"),
    _worker_endpoint("input", "runtime-worker-input"),
    _worker_endpoint("stop", "runtime-worker-stop"),
    _worker_endpoint("cancel", "runtime-worker-cancel"),
    _worker_endpoint("transcript", "runtime-worker-transcript"),
    Endpoint("all_workers", "worker-list", "GET", ALL_WORKERS_URL, None, ("GET", "/v1/workers")),
]


def test_the_matrix_covers_every_route_and_method() -> None:
    from workers.urls import urlpatterns

    # HEAD is GET without a body (DRF adds it to a viewset's actions on the first request it serves).
    routed = {
        (getattr(pattern, "name", None), method.upper())
        for pattern in urlpatterns
        for method in getattr(pattern.callback, "actions", {})
        if method != "head"
    }
    assert routed == {(endpoint.url_name, endpoint.method) for endpoint in ENDPOINTS}


# --------------------------------------------------------------------------------------------- scenarios


@dataclass
class Context:
    """What a scenario sets up for one request."""

    client: APIClient
    rsps: responses.RequestsMock
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    endpoint: Endpoint
    secrets: Secrets

    def register(self, body: bytes | str | Exception, status: int = 200, **kwargs: Any) -> None:
        """The endpoint's upstream request answers ``body``/``status``; the identity check succeeds."""
        target = self.endpoint.target
        if target is None:
            return
        if target != ("GET", "/v1/runtime"):
            self.rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary.json"))
        self.rsps.add(target[0], upstream(target[1]), body=body, status=status, **kwargs)

    def ok(self) -> None:
        """The upstream request succeeds with its canned body."""
        target = self.endpoint.target
        if target is None:
            return
        fixture = "runtime_summary.json"
        for route in ROUTES.values():
            if (route.upstream_method, route.upstream_path) == target:
                fixture = route.ok_fixture
        self.register(canned(fixture), status=201 if target == ("POST", "/v1/workers") else 200)


Setup = Callable[[Context], None]


def _pool() -> urllib3.HTTPConnectionPool:
    return urllib3.HTTPConnectionPool(HOST, PORT)


def _conn() -> HTTPConnection:
    return HTTPConnection(HOST, PORT)


def _remote(ctx: Context, **kwargs: Any) -> Runtime:
    return make_remote_row(ctx.monkeypatch, **kwargs)


def _raising(make: Callable[[], Exception]) -> Setup:
    def setup(ctx: Context) -> None:
        _remote(ctx)
        ctx.register(make())

    return setup


def _answering(body: bytes, status: int = 200, **kwargs: Any) -> Setup:
    def setup(ctx: Context) -> None:
        _remote(ctx)
        ctx.register(body, status=status, **kwargs)

    return setup


def _ok(ctx: Context) -> None:
    _remote(ctx)
    ctx.ok()


def _impostor(ctx: Context) -> None:
    _remote(ctx)
    ctx.rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary_other_identity.json"))
    if ctx.endpoint.target not in (None, ("GET", "/v1/runtime")):
        ctx.rsps.add(ctx.endpoint.target[0], upstream(ctx.endpoint.target[1]), body=b"{}")


def _disabled(ctx: Context) -> None:
    _remote(ctx, enabled=False)
    ctx.ok()


def _invisible(ctx: Context) -> None:
    _remote(ctx).groups.add(Group.objects.create(name="ops"))
    ctx.ok()


def _unknown_runtime(ctx: Context) -> None:
    _remote(ctx)
    ctx.ok()
    ctx.endpoint = replace(
        ctx.endpoint, path=ctx.endpoint.path.replace(f"/runtimes/{RID}/", "/runtimes/rt-ghost/")
    )


def _bad_request(ctx: Context) -> None:
    _remote(ctx)
    ctx.ok()
    endpoint = ctx.endpoint
    if f"/{WID}/" in endpoint.path:
        endpoint = replace(endpoint, path=endpoint.path.replace(f"/{WID}/", "/w%2F..%2Fv1/"))
    elif f"/runtimes/{RID}/" in endpoint.path:
        endpoint = replace(endpoint, path=endpoint.path.replace(f"/runtimes/{RID}/", "/runtimes/bad%20id/"))
    elif endpoint.method == "GET":
        endpoint = replace(endpoint, method="PUT", body={"base_url": BASE_URL})  # no such method: 405
    ctx.endpoint = endpoint


def _circuit_open(ctx: Context) -> None:
    _remote(ctx)
    ctx.rsps.add("GET", upstream("/v1/runtime"), body=requests.exceptions.ConnectionError(f"refused {BASE_URL}"))
    for _ in range(FAILURE_THRESHOLD):
        assert ctx.client.get(ROUTES["list"].path).status_code == 502


def _env_secret_missing(ctx: Context) -> None:
    ctx.monkeypatch.delenv(TOKEN_ENV, raising=False)
    _remote(ctx, token=None)
    ctx.ok()
    ctx.secrets = replace(ctx.secrets, extra=(*ctx.secrets.extra, TOKEN_ENV))


def _file_secret(content: bytes | None, *, answer: tuple[bytes, int] | None = None) -> Setup:
    def setup(ctx: Context) -> None:
        path = ctx.tmp_path.resolve() / "secrets" / "leaky-runtime-token"
        path.parent.mkdir(parents=True, exist_ok=True)
        ctx.monkeypatch.setattr(settings, "YOI_SECRETS_DIR", path.parent)
        if content is not None:
            path.write_bytes(content)
        _remote(ctx, token=None, token_ref=f"file:{path}")
        if answer is None:
            ctx.ok()
        else:
            ctx.register(answer[0], status=answer[1])
        ctx.secrets = replace(ctx.secrets, extra=(*ctx.secrets.extra, str(path), str(path.parent)))

    return setup


SCENARIOS: dict[str, Setup] = {
    "ok": _ok,
    "connection_refused": _raising(
        lambda: requests.exceptions.ConnectionError(
            MaxRetryError(_pool(), "/v1/workers", NewConnectionError(_conn(), "[Errno 111] Connection refused"))
        )
    ),
    "dns_failure": _raising(
        lambda: requests.exceptions.ConnectionError(
            MaxRetryError(
                _pool(), "/v1/workers", NameResolutionError(HOST, _conn(), socket.gaierror(-2, "Name unknown"))
            )
        )
    ),
    "connection_reset": _raising(
        lambda: requests.exceptions.ConnectionError(
            ProtocolError("Connection aborted.", ConnectionResetError(104, f"reset by {HOST}:{PORT}"))
        )
    ),
    "reset_mid_body": _raising(
        lambda: requests.exceptions.ChunkedEncodingError(ProtocolError(f"IncompleteRead from {BASE_URL}"))
    ),
    "tls_failure": _raising(lambda: requests.exceptions.SSLError(f"certificate verify failed for {HOST}:{PORT}")),
    "connect_timeout": _raising(
        lambda: requests.exceptions.ConnectTimeout(
            MaxRetryError(_pool(), "/v1/workers", ConnectTimeoutError(_conn(), f"Connection to {HOST} timed out"))
        )
    ),
    "read_timeout": _raising(
        lambda: requests.exceptions.ReadTimeout(ReadTimeoutError(_pool(), "/v1/workers", "Read timed out."))
    ),
    "unexpected_transport_error": _raising(
        lambda: requests.exceptions.InvalidHeader(f"bad header from {BASE_URL}")
    ),
    "remote_401": _answering(leaky_error("unauthorized"), 401),
    "remote_403": _answering(leaky_error("forbidden"), 403),
    "remote_404_worker": _answering(leaky_error("worker_not_found"), 404),
    "remote_404_route": _answering(leaky_error("not_found"), 404),
    "remote_405": _answering(leaky_error("method_not_allowed"), 405),
    "remote_501": _answering(leaky_error("not_implemented"), 501),
    "remote_400": _answering(leaky_error("invalid_request"), 400),
    "remote_409": _answering(leaky_error("worker_not_running"), 409),
    "remote_413": _answering(leaky_error("payload_too_large"), 413),
    "remote_422": _answering(leaky_error("idempotency_key_reused"), 422),
    "remote_409_code_echoes_secrets": _answering(
        json.dumps({"error": {"code": f"{HOST}:{PORT}/{TOKEN}", "message": "x"}}).encode(), 409
    ),
    "remote_500": _answering(leaky_error("internal_error"), 500),
    "remote_503": _answering(leaky_error("unavailable"), 503),
    "remote_502_html": _answering(f"<html>{LEAKY_MESSAGE}</html>".encode(), 502, content_type="text/html"),
    "non_json": _answering(f"<html>{LEAKY_MESSAGE}</html>".encode(), content_type="text/html"),
    "wrong_shape": _answering(
        json.dumps(
            {"runtime": {"runtime_id": 5, "url": BASE_URL}, "workers": TOKEN, "worker": [BASE_URL]}
        ).encode()
    ),
    "oversized": _answering(
        json.dumps({"padding": f"{BASE_URL} {TOKEN} " * (8 * 1024 * 1024 // 50)}).encode(),
        auto_calculate_content_length=True,
    ),
    "redirect": _answering(b"", 302, headers={"Location": f"{BASE_URL}/elsewhere?token={TOKEN}"}),
    "identity_mismatch": _impostor,
    "disabled": _disabled,
    "unknown_runtime": _unknown_runtime,
    "invisible_runtime": _invisible,
    "bad_request": _bad_request,
    "circuit_open": _circuit_open,
    "env_secret_missing": _env_secret_missing,
    "file_secret_ok": _file_secret(f"{TOKEN}\n".encode()),
    "file_secret_rejected": _file_secret(TOKEN.encode(), answer=(leaky_error("unauthorized"), 401)),
    "file_secret_missing": _file_secret(None),
    "file_secret_empty": _file_secret(b"\n"),
}


# --------------------------------------------------------------------------------------------- the checks


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with mock_runtime() as mock:
        yield mock


def capture_every_logger(caplog: pytest.LogCaptureFixture) -> None:
    """Root and every known logger at DEBUG (restored by caplog after the test).

    urllib3 is left at the level the project's LOGGING pins it to: its DEBUG lines name the host by design
    (``Starting new HTTP connection (1): host:port``), which is why the settings keep it at ERROR;
    ``test_urllib3_stays_pinned_above_its_host_naming_levels`` guards that pin.
    """
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not name.startswith("urllib3"):
            caplog.set_level(logging.DEBUG, logger=name)


def held_objects() -> list[object]:
    """Everything that held the remote runtime's connection, and containers of them."""
    with contextlib.suppress(YoiError):
        registry.get(RID)  # builds the handle if the row allows one (no upstream call)
    connections = registry.connections()
    handles = [handle for _, handle in registry._handles.values()]
    clients = [handle._client for handle in handles if isinstance(handle, RemoteRuntimeHandle)]
    breakers = list(registry._breakers.values())
    rows = list(Runtime.objects.all())
    audit = list(AuditEvent.objects.all())
    return [
        registry,
        connections,
        *connections.values(),
        list(connections.values()),
        {runtime_id: handle for runtime_id, (_, handle) in registry._handles.items()},
        *handles,
        *clients,
        [*handles, *clients],
        {"handles": handles, "clients": clients},
        tuple(breakers),
        *breakers,
        *rows,
        rows,
        *audit,
        audit,
    ]


def object_texts(objects: list[object]) -> list[str]:
    return [text for obj in objects for text in (repr(obj), str(obj))]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_nothing_names_the_runtime_address_or_token(
    api_client: APIClient,
    rsps: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    endpoint: Endpoint,
    scenario: str,
) -> None:
    capture_every_logger(caplog)
    spy = ErrorSpy(monkeypatch)
    ctx = Context(api_client, rsps, monkeypatch, tmp_path, endpoint, MOCK_SECRETS)
    SCENARIOS[scenario](ctx)
    endpoint, secrets = ctx.endpoint, ctx.secrets

    kwargs: dict[str, Any] = {"REQUEST_URI": endpoint.path}
    if endpoint.body is not None:
        kwargs.update(data=endpoint.body, format="json")
    response = getattr(api_client, endpoint.method.lower())(endpoint.path, **kwargs)
    after = api_client.get(RUNTIMES_URL)  # the status cache, as left by whatever just happened

    assert response["Content-Type"].startswith("application/json")
    if response.status_code >= 400:
        error_of(response)  # the envelope, whatever went wrong
    secrets.check("response", response_texts(response) + response_texts(after))
    secrets.check("log record", [record_text(record) for record in caplog.records])
    secrets.check("typed error", spy.texts())
    secrets.check("repr/str", object_texts(held_objects()))
    # The token was really in play: every upstream call carried it.
    for made in rsps.calls:
        assert made.request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_detector_sees_secrets_in_messages_extras_and_tracebacks() -> None:
    """The checks above would fail if a secret were there (guards against a blind detector)."""
    assert MOCK_SECRETS.leaks(f"GET {BASE_URL}/v1/runtime") == ["host", "port"]
    assert MOCK_SECRETS.leaks(f"Bearer {TOKEN}") == ["token"]
    assert MOCK_SECRETS.leaks(f"latency 1.{PORT}7 at 2025-01-01T00:00:00.1{PORT}Z") == []
    record = logging.LogRecord("runtimes.x", logging.INFO, __file__, 1, "event", (), None)
    record.url = BASE_URL
    assert "host" in MOCK_SECRETS.leaks(record_text(record))
    try:
        raise requests.exceptions.ConnectionError(f"refused {HOST}")
    except requests.exceptions.ConnectionError:
        failing = logging.LogRecord("runtimes.x", logging.ERROR, __file__, 1, "event", (), sys.exc_info())
    assert "host" in MOCK_SECRETS.leaks(record_text(failing))


def test_urllib3_stays_pinned_above_its_host_naming_levels() -> None:
    """urllib3 names hosts in its DEBUG/WARNING lines; the project's LOGGING keeps it at ERROR."""
    assert logging.getLogger("urllib3").getEffectiveLevel() >= logging.ERROR
    assert logging.getLogger("urllib3.connectionpool").getEffectiveLevel() >= logging.ERROR


@pytest.mark.parametrize("url_name", ["console", "schema", "swagger-ui"])
def test_browser_pages_outside_the_api_name_no_runtime_secret(
    user: User, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch, url_name: str
) -> None:
    """The console page, the OpenAPI schema and its UI, after the runtime was used and failed."""
    try:
        path = reverse(url_name)
    except NoReverseMatch:
        pytest.skip(f"no {url_name} route in this build")
    make_remote_row(monkeypatch)
    browser = Client()
    browser.force_login(user)
    rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary.json"))
    rsps.add("GET", upstream("/v1/workers"), body=leaky_error("worker_not_running"), status=409)
    assert browser.get(RUNTIME_URL).status_code == 200
    assert browser.get(ROUTES["list"].path).status_code == 409
    page = browser.get(path)
    assert page.status_code == 200
    MOCK_SECRETS.check(url_name, response_texts(page))


# --------------------------------------------------------------------------------------------- repr of errors


def test_typed_errors_raised_on_every_path_and_their_containers_name_ids_only(
    api_client: APIClient, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ErrorSpy(monkeypatch)
    make_remote_row(monkeypatch)
    rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary.json"))
    rsps.add("GET", upstream("/v1/workers"), body=requests.exceptions.ConnectionError(f"refused {BASE_URL}"))
    rsps.add("POST", upstream("/v1/workers"), body=leaky_error("invalid_request"), status=400)
    rsps.add("GET", upstream(f"/v1/workers/{WID}"), body=leaky_error("worker_not_found"), status=404)
    api_client.get(ROUTES["list"].path)
    api_client.post(ROUTES["create"].path, {"profile": "x"}, format="json")
    api_client.get(ROUTES["detail"].path)
    assert {error.code for error in spy.errors} >= {"runtime_unreachable", "runtime_rejected", "worker_not_found"}
    MOCK_SECRETS.check("errors", object_texts([spy.errors, tuple(spy.errors), {"e": spy.errors}, *spy.errors]))
    MOCK_SECRETS.check("error json", [json.dumps([error.to_json() for error in spy.errors])])


# --------------------------------------------------------------------------------------------- admin


@pytest.fixture
def admin_client(db: None) -> Client:
    superuser = User.objects.create_superuser("root", "root@example.invalid", "root-pw-for-tests")
    client = Client()
    client.force_login(superuser)
    return client


@pytest.mark.parametrize("ref", ["env", "file"])
def test_admin_pages_never_show_the_token_value(
    api_client: APIClient,
    admin_client: Client,
    rsps: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    secrets_dir: Path,
    caplog: pytest.LogCaptureFixture,
    ref: str,
) -> None:
    capture_every_logger(caplog)
    if ref == "env":
        row = make_remote_row(monkeypatch)
    else:
        token_file = secrets_dir / "token"
        token_file.write_text(TOKEN + "\n")
        row = make_remote_row(monkeypatch, token=None, token_ref=f"file:{token_file}")
    rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary.json"))
    rsps.add("POST", upstream("/v1/workers"), body=canned("worker_created.json"), status=201)
    rsps.add("POST", upstream(f"/v1/workers/{WID}/input"), body=leaky_error("worker_not_running"), status=409)
    assert api_client.post(ROUTES["create"].path, {"profile": "builtin:echo"}, format="json").status_code == 201
    assert api_client.post(ROUTES["input"].path, {"content": "hi"}, format="json").status_code == 409
    audit = AuditEvent.objects.first()
    assert audit is not None

    pages = {
        "changelist": "/admin/runtimes/runtime/",
        "change_form": f"/admin/runtimes/runtime/{row.pk}/change/",
        "add_form": "/admin/runtimes/runtime/add/",
        "history": f"/admin/runtimes/runtime/{row.pk}/history/",
        "audit_list": "/admin/runtimes/auditevent/",
        "audit_detail": f"/admin/runtimes/auditevent/{audit.pk}/change/",
    }
    for name, path in pages.items():
        page = admin_client.get(path)
        assert page.status_code == 200, (name, page.status_code)
        text = page.content.decode()
        assert TOKEN not in text, name
        for header, value in page.headers.items():
            assert TOKEN not in value, (name, header)
    change_form = admin_client.get(pages["change_form"]).content.decode()
    assert row.token_ref in change_form and BASE_URL in change_form  # operators do see the ref and the URL

    probed = admin_client.post(
        pages["changelist"], {"action": "probe_now", "_selected_action": [row.pk]}, follow=True
    )
    assert probed.status_code == 200
    [message] = [str(m) for m in probed.context["messages"]]
    assert re.fullmatch(rf"{RID}: online in \d+\.\d ms", message), message
    assert TOKEN not in probed.content.decode()
    for record in caplog.records:
        assert TOKEN not in record_text(record)


# --------------------------------------------------------------------------------------------- secrets


def test_file_ref_sends_the_file_token_and_never_shows_it(
    api_client: APIClient, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch, secrets_dir: Path
) -> None:
    token_file = secrets_dir / "runtime-token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    make_remote_row(monkeypatch, token=None, token_ref=f"file:{token_file}")
    rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary.json"))
    rsps.add("GET", upstream("/v1/workers"), body=canned("workers.json"))
    response = api_client.get(ROUTES["list"].path)
    assert response.status_code == 200
    assert [made.request.headers["Authorization"] for made in rsps.calls] == [f"Bearer {TOKEN}"] * 2
    secrets = replace(MOCK_SECRETS, extra=(str(token_file),))
    secrets.check("response", response_texts(response))
    secrets.check("repr/str", object_texts(held_objects()))


@pytest.mark.parametrize(
    ("ref_kind", "prepare"),
    [
        pytest.param("env", None, id="env_var_unset"),
        pytest.param("env", "", id="env_var_empty"),
        pytest.param("file", None, id="file_missing"),
        pytest.param("file", "", id="file_empty"),
        pytest.param("file", "dir", id="file_is_a_directory"),
        pytest.param("file", "binary", id="file_not_utf8"),
    ],
)
def test_missing_secret_is_runtime_auth_failed_naming_neither_variable_nor_path(
    api_client: APIClient,
    rsps: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    secrets_dir: Path,
    caplog: pytest.LogCaptureFixture,
    ref_kind: str,
    prepare: str | None,
) -> None:
    capture_every_logger(caplog)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token_file = secrets_dir / "secret-store" / "leaky-runtime-token"
    token_file.parent.mkdir()
    if ref_kind == "env":
        if prepare is not None:
            monkeypatch.setenv(TOKEN_ENV, prepare)
        make_remote_row(monkeypatch, token=None)
    else:
        if prepare == "dir":
            token_file.mkdir()
        elif prepare == "binary":
            token_file.write_bytes(b"\xff\xfe\x00tok")
        elif prepare is not None:
            token_file.write_text(prepare)
        make_remote_row(monkeypatch, token=None, token_ref=f"file:{token_file}")
    rsps.add("GET", upstream("/v1/runtime"), body=canned("runtime_summary.json"))
    rsps.add("POST", upstream(f"/v1/workers/{WID}/input"), body=canned("ack_input.json"))

    response = api_client.post(ROUTES["input"].path, {"content": "hi"}, format="json")
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "runtime_auth_failed"
    assert error["message"] == f"credential for runtime {RID} is not configured"
    assert "WWW-Authenticate" not in response
    assert len(rsps.calls) == 0  # nothing is sent without a credential
    assert AuditEvent.objects.get().outcome == "runtime_auth_failed"
    secrets = replace(MOCK_SECRETS, extra=(TOKEN_ENV, str(token_file), str(token_file.parent)))
    secrets.check("response", response_texts(response))
    secrets.check("log record", [record_text(record) for record in caplog.records])
    # A credential this process cannot resolve says nothing about the runtime: its status stays as it was.
    detail = api_client.get(RUNTIME_URL).json()
    assert (detail["status"]["state"], detail["status"]["error_code"]) == ("configured", None)
