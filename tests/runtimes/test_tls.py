"""TLS and mTLS on the remote hop, against real ``yoi-runtime`` processes serving certificates made with trustme.

A certificate that does not verify (another CA, another host name, expired, unknown to the system store)
or a client certificate the runtime requires but does not get fails before any HTTP request: the browser
gets 502 ``runtime_unreachable``, the row says ``tls``, and the runtime's own request log (``--access-log``)
shows that nothing arrived. A TLS setting that cannot be used (a missing or non-PEM CA file, a key that is
not the certificate's) is ``runtime_misconfigured``: nothing is sent, the Backend keeps serving.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import urllib3
from django.contrib.auth.models import User
from django.test import Client
from django.utils.html import escape
from rest_framework.test import APIClient

from runtimes.admin import REASON_MESSAGES
from runtimes.health import probe_runtimes
from runtimes.models import Runtime
from runtimes.registry import registry
from tests.conftest import RuntimeFactory
from tests.runtime_process import DEFAULT_TOKEN, RuntimeProcess, wait_until
from tests.tls_certs import TlsFiles, issue_server_cert, make_tls

pytestmark = pytest.mark.django_db

TOKEN_ENV = "YOI_RUNTIME_TOKEN_TLS_TEST"
KEY_ENV = "YOI_RUNTIME_TOKEN_TLS_TEST_KEY"
RID = "rt-tls"
WORKERS_URL = f"/api/v1/runtimes/{RID}/workers/"


@pytest.fixture(autouse=True)
def _clean(isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, DEFAULT_TOKEN)


@pytest.fixture
def tls(tmp_path: Path, secrets_dir: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls", key_dir=secrets_dir)


@pytest.fixture
def staff_client(db: None) -> APIClient:
    client = APIClient()
    client.force_authenticate(User.objects.create_user("sam", "", "sam-pw-for-tests", is_staff=True))
    return client


StartTls = Callable[..., RuntimeProcess]


@pytest.fixture
def start_tls(runtime_factory: RuntimeFactory) -> StartTls:
    """Start a runtime serving ``files`` (mTLS when asked), with its request log on."""

    def start(files: TlsFiles, *, mtls: bool = False, **kwargs: Any) -> RuntimeProcess:
        args = ("--ping-interval", "0.5", "--access-log", *files.runtime_args(mtls=mtls))
        return runtime_factory(runtime_id=RID, extra_args=args, **kwargs)

    return start


def tls_row(rt: RuntimeProcess, files: TlsFiles | None, *, client_cert: bool = False, **fields: Any) -> Runtime:
    """The runtime's row: its https base_url, the CA of ``files`` (none: the system store), optionally mTLS."""
    assert rt.base_url.startswith("https://127.0.0.1:")
    values: dict[str, Any] = {
        "runtime_id": RID,
        "display_name": "TLS runtime",
        "kind": Runtime.Kind.REMOTE,
        "base_url": rt.base_url,
        "token_ref": f"env:{TOKEN_ENV}",
        "connect_timeout": 2.0,
        "read_timeout": 10.0,
        "tls_ca_file": str(files.ca_file) if files else "",
    }
    if client_cert and files is not None:
        values["tls_client_cert_file"] = str(files.client_cert)
        values["tls_client_key_ref"] = f"file:{files.client_key}"
    values.update(fields)
    return Runtime.objects.create(**values)


def assert_nothing_arrived(rt: RuntimeProcess, files: TlsFiles) -> None:
    """The runtime's log shows no request of the Backend's: a control request of our own is the only line.

    The control request proves that the log works and comes after any earlier request would have been
    logged. It does not verify the runtime (some cases serve a certificate that does not verify on purpose)
    and presents the client certificate (some cases require one).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        control = requests.get(
            rt.url("/v1/runtime"),
            headers=rt.headers(),
            verify=False,  # noqa: S501 - a test's own control request, see above
            cert=(str(files.client_cert), str(files.client_key)),
            timeout=(5, 10),
        )
    assert control.status_code == 200
    wait_until(rt.requests_logged, timeout=10, message="the control request in the runtime's log")
    assert rt.requests_logged() == [("GET", "/v1/runtime", 200)]


def tls_failure_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        record.getMessage() == "runtimes.client.transport_error" and getattr(record, "reason", None) == "tls"
        for record in caplog.records
    )


def assert_runtime_unreachable_for_tls(staff_client: APIClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    response = staff_client.get(WORKERS_URL)
    assert response.status_code == 502, response.content
    assert response.json()["error"]["code"] == "runtime_unreachable"
    row = Runtime.objects.get(runtime_id=RID)
    assert (row.status, row.status_error_code, row.status_reason) == ("error", "runtime_unreachable", "tls")
    assert tls_failure_logged(caplog)
    status = staff_client.get("/api/v1/runtimes/").json()["items"][0]["status"]
    assert (status["error_code"], status["reason"]) == ("runtime_unreachable", "tls")


# --------------------------------------------------------------------------------------------- it works


def test_https_runtime_with_its_ca_serves_commands_and_probes(
    start_tls: StartTls, tls: TlsFiles, staff_client: APIClient
) -> None:
    rt = start_tls(tls)
    tls_row(rt, tls)
    created = staff_client.post(WORKERS_URL, {"profile": "builtin:echo", "initial_input": "hi"}, format="json")
    assert created.status_code == 201, created.content
    assert staff_client.get(WORKERS_URL).status_code == 200
    assert [(r.state, r.error_code) for r in probe_runtimes(runtime_ids=[RID])] == [("online", "")]
    wait_until(lambda: len(rt.requests_logged()) >= 4)
    assert ("POST", "/v1/workers", 201) in rt.requests_logged()


@pytest.mark.parametrize("key_in", ["file", "env"])
def test_mtls_with_the_client_certificate_works(
    start_tls: StartTls, tls: TlsFiles, staff_client: APIClient, monkeypatch: pytest.MonkeyPatch, key_in: str
) -> None:
    rt = start_tls(tls, mtls=True)
    key_ref = f"file:{tls.client_key}"
    if key_in == "env":
        monkeypatch.setenv(KEY_ENV, tls.client_key.read_text())
        key_ref = f"env:{KEY_ENV}"
    tls_row(rt, tls, client_cert=True, tls_client_key_ref=key_ref)
    response = staff_client.get(WORKERS_URL)
    assert response.status_code == 200, response.content
    assert response.json() == {"items": []}
    # The mTLS key is a known secret: were a runtime to echo it, it would be redacted.
    from runtimes.scrub import known_secrets

    key_line = tls.client_key.read_text().splitlines()[1]
    assert known_secrets.redact(f"echo {key_line}") == "echo <redacted>"


def test_a_restart_with_a_new_certificate_from_the_same_ca_needs_no_backend_restart(
    start_tls: StartTls, tls: TlsFiles, staff_client: APIClient, tmp_path: Path
) -> None:
    rt = start_tls(tls)
    tls_row(rt, tls)
    assert staff_client.get(WORKERS_URL).status_code == 200
    handle = registry.get(RID)
    assert rt.stop() == 0
    cert, key = issue_server_cert(tls.ca, tmp_path / "renewed", stem="server-2")
    renewed = TlsFiles(tls.ca, tls.ca_file, cert, key, tls.client_cert, tls.client_key)
    start_tls(renewed, port=rt.port, tmp_dir=rt.store.parent)
    assert staff_client.get(WORKERS_URL).status_code == 200
    assert registry.get(RID) is handle  # the same handle, the same SSLContext


# --------------------------------------------------------------------------------------------- refused peers


def _other_ca(tmp_path: Path, secrets_dir: Path) -> tuple[TlsFiles, TlsFiles | None]:
    served = make_tls(tmp_path / "served", key_dir=secrets_dir)
    trusted = make_tls(tmp_path / "trusted", key_dir=secrets_dir / "other")
    return served, trusted


def _wrong_host_name(tmp_path: Path, secrets_dir: Path) -> tuple[TlsFiles, TlsFiles | None]:
    # The certificate names localhost only; the row dials 127.0.0.1.
    files = make_tls(tmp_path / "tls", key_dir=secrets_dir, server_names=("localhost",))
    return files, files


def _expired(tmp_path: Path, secrets_dir: Path) -> tuple[TlsFiles, TlsFiles | None]:
    now = datetime.datetime.now(datetime.UTC)
    files = make_tls(
        tmp_path / "tls",
        key_dir=secrets_dir,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    return files, files


def _system_store(tmp_path: Path, secrets_dir: Path) -> tuple[TlsFiles, TlsFiles | None]:
    return make_tls(tmp_path / "tls", key_dir=secrets_dir), None


@pytest.mark.parametrize("case", [_other_ca, _wrong_host_name, _expired, _system_store])
def test_a_certificate_that_does_not_verify_sends_nothing(
    start_tls: StartTls,
    staff_client: APIClient,
    tmp_path: Path,
    secrets_dir: Path,
    caplog: pytest.LogCaptureFixture,
    case: Callable[[Path, Path], tuple[TlsFiles, TlsFiles | None]],
) -> None:
    (secrets_dir / "other").mkdir()
    served, trusted = case(tmp_path, secrets_dir)
    rt = start_tls(served)
    tls_row(rt, trusted)
    assert_runtime_unreachable_for_tls(staff_client, caplog)
    assert [r.reason for r in probe_runtimes(runtime_ids=[RID])] == ["tls"]
    assert_nothing_arrived(rt, served)


def test_mtls_without_the_client_certificate_fails_the_same_way(
    start_tls: StartTls, tls: TlsFiles, staff_client: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    rt = start_tls(tls, mtls=True)
    tls_row(rt, tls, client_cert=False)
    caplog.set_level(logging.INFO)
    response = staff_client.get(WORKERS_URL)
    assert response.status_code == 502, response.content
    assert response.json()["error"]["code"] == "runtime_unreachable"
    row = Runtime.objects.get(runtime_id=RID)
    assert (row.status_error_code, row.status_reason) == ("runtime_unreachable", "tls")
    assert tls_failure_logged(caplog)
    assert_nothing_arrived(rt, tls)


def test_a_client_certificate_from_another_ca_is_refused(
    start_tls: StartTls, tls: TlsFiles, staff_client: APIClient, tmp_path: Path, secrets_dir: Path
) -> None:
    rt = start_tls(tls, mtls=True)
    (secrets_dir / "stranger").mkdir()
    stranger = make_tls(tmp_path / "stranger", key_dir=secrets_dir / "stranger")
    tls_row(
        rt,
        tls,
        tls_client_cert_file=str(stranger.client_cert),
        tls_client_key_ref=f"file:{stranger.client_key}",
    )
    response = staff_client.get(WORKERS_URL)
    assert (response.status_code, response.json()["error"]["code"]) == (502, "runtime_unreachable")
    assert Runtime.objects.get(runtime_id=RID).status_reason == "tls"
    assert_nothing_arrived(rt, tls)


# --------------------------------------------------------------------------------------------- unusable settings


def _missing_ca(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    return {"tls_ca_file": str(tmp_path / "no-such-ca.pem")}


def _not_pem_ca(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "not-a-ca.pem"
    path.write_text("this is not a certificate\n")
    return {"tls_ca_file": str(path)}


def _key_as_ca(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    return {"tls_ca_file": str(tls.server_key)}


def _garbled_ca(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "garbled.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return {"tls_ca_file": str(path)}


def _key_of_another_cert(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    other = trustme.CA().issue_cert("x")
    path = tls.client_key.parent / "other.key"
    other.private_key_pem.write_to_path(path)
    return {"tls_client_cert_file": str(tls.client_cert), "tls_client_key_ref": f"file:{path}"}


def _missing_client_cert(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    return {"tls_client_cert_file": str(tmp_path / "nope.pem"), "tls_client_key_ref": f"file:{tls.client_key}"}


def _refused_key_ref(tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    return {"tls_client_cert_file": str(tls.client_cert), "tls_client_key_ref": "env:DJANGO_SECRET_KEY"}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (_missing_ca, "tls_ca_file"),
        (_not_pem_ca, "tls_ca_file"),
        (_key_as_ca, "tls_ca_file"),
        (_garbled_ca, "tls_ca_file"),
        (_key_of_another_cert, "tls_client_key_ref"),
        (_missing_client_cert, "tls_client_cert_file"),
        (_refused_key_ref, "tls_client_key_ref"),
    ],
)
def test_an_unusable_tls_setting_is_misconfigured_and_the_backend_keeps_serving(
    start_tls: StartTls,
    tls: TlsFiles,
    staff_client: APIClient,
    tmp_path: Path,
    case: Callable[[TlsFiles, Path], dict[str, Any]],
    reason: str,
) -> None:
    rt = start_tls(tls)
    tls_row(rt, tls, **case(tls, tmp_path))
    Runtime.objects.create(runtime_id="local", display_name="Local", kind=Runtime.Kind.EMBEDDED)
    response = staff_client.get(WORKERS_URL)
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == ("runtime_misconfigured", False)
    assert str(tmp_path) not in response.content.decode()
    row = Runtime.objects.get(runtime_id=RID)
    assert (row.status, row.status_error_code, row.status_reason) == ("error", "runtime_misconfigured", reason)
    # Still serving: the list, another runtime.
    assert staff_client.get("/api/v1/runtimes/").status_code == 200
    assert staff_client.get("/api/v1/runtimes/local/workers/").status_code == 200
    # The operator reads what is wrong in the admin.
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "", "root-pw-for-tests"))
    page = admin.get(f"/admin/runtimes/runtime/{row.pk}/change/").content.decode()
    assert f"runtime_misconfigured: {reason}" in page
    assert escape(REASON_MESSAGES[reason]) in page
    assert_nothing_arrived(rt, tls)
