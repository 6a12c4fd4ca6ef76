"""Rows written around the rules (straight into the database): at use they send nothing at all.

Each row points at a loopback listener that records every connection; probes, commands, queries and the
event stream of a row with a refused secret ref, plain http to a remote host, or TLS settings on http
leave the runtime in ``error`` with ``runtime_misconfigured`` and the key at fault — and zero connections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from runtimes.errors import RuntimeMisconfigured
from runtimes.health import runtime_probe
from runtimes.models import Runtime
from runtimes.registry import registry
from tests.runtimes.conftest import Listener

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("isolated_data_dir")]

TOKEN = "tok-forced-row-value-5e1a"


def _env(name: str) -> Any:
    return lambda secrets_dir, monkeypatch, listener: {"token_ref": f"env:{name}"}


def _symlink_out(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> dict[str, Any]:
    (secrets_dir.parent / "hostname").write_text(TOKEN)
    (secrets_dir / "link").symlink_to(secrets_dir.parent / "hostname")
    return {"token_ref": f"file:{secrets_dir / 'link'}"}


def _outside(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> dict[str, Any]:
    (secrets_dir.parent / "elsewhere").write_text(TOKEN)
    return {"token_ref": f"file:{secrets_dir.parent / 'elsewhere'}"}


def _relative(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> dict[str, Any]:
    return {"token_ref": "file:../x"}


def _insecure_http(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> dict[str, Any]:
    # 0.0.0.0 is not loopback by the rules (only localhost, 127/8 and ::1 are), yet dialling it reaches
    # this host: had the Backend connected, the listener would have seen it.
    return {"base_url": f"http://0.0.0.0:{listener.port}"}


def _tls_on_http(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> dict[str, Any]:
    return {"tls_ca_file": "/etc/ssl/certs/ca-certificates.crt"}


def _refused_key_ref(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> dict[str, Any]:
    return {
        "base_url": f"https://127.0.0.1:{listener.port}",
        "tls_client_cert_file": "/etc/yoi/backend.pem",
        "tls_client_key_ref": "env:DJANGO_SECRET_KEY",
    }


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param(_env("DJANGO_SECRET_KEY"), "token_ref", id="django_secret_key"),
        pytest.param(_env("DATABASE_URL"), "token_ref", id="database_url"),
        pytest.param(_env("YOI_RUNTIME_TOKEN_"), "token_ref", id="bare_prefix"),
        pytest.param(_symlink_out, "token_ref", id="symlink_out"),
        pytest.param(_outside, "token_ref", id="file_outside"),
        pytest.param(_relative, "token_ref", id="relative"),
        pytest.param(_insecure_http, "base_url", id="insecure_http"),
        pytest.param(_tls_on_http, "base_url", id="tls_on_http"),
        pytest.param(_refused_key_ref, "tls_client_key_ref", id="refused_key_ref"),
    ],
)
def test_a_forced_bad_row_sends_nothing_and_is_in_error(
    listener: Listener,
    secrets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: Any,
    reason: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:hunter2@127.0.0.1/x")
    monkeypatch.setenv("YOI_RUNTIME_TOKEN_", TOKEN)
    fields = {
        "runtime_id": "forced",
        "display_name": "Forced",
        "kind": Runtime.Kind.REMOTE,
        "base_url": listener.base_url,
        "token_ref": "env:YOI_RUNTIME_TOKEN_FORCED",
        "connect_timeout": 0.5,
        "read_timeout": 0.5,
    }
    monkeypatch.setenv("YOI_RUNTIME_TOKEN_FORCED", TOKEN)
    fields.update(case(secrets_dir, monkeypatch, listener))
    Runtime.objects.create(**fields)

    result = runtime_probe(runtime_id="forced")
    assert (result.state, result.error_code, result.reason) == ("error", "runtime_misconfigured", reason)
    with pytest.raises(RuntimeMisconfigured):
        registry.call("forced", lambda handle: handle.list_workers())
    with pytest.raises(RuntimeMisconfigured):
        registry.get("forced").open_events("w-1", after=0)
    client = APIClient()
    client.force_authenticate(User.objects.create_user("ann", "", "ann-pw-for-tests"))
    response = client.post("/api/v1/runtimes/forced/workers/", {"profile": "builtin:echo"}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "runtime_misconfigured")
    assert TOKEN not in response.content.decode() and "hunter2" not in response.content.decode()
    row = Runtime.objects.get(runtime_id="forced")
    assert (row.status, row.status_error_code, row.status_reason) == ("error", "runtime_misconfigured", reason)
    assert listener.connections() == 0
