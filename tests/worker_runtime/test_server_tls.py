"""``yoi-runtime serve`` with TLS: HTTPS, mTLS, refusals of unusable TLS files, --insecure-http, --access-log."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.conftest import RuntimeFactory
from tests.runtime_process import DEFAULT_TOKEN, TOKEN_ENV, wait_until
from tests.tls_certs import TlsFiles, make_tls
from tests.worker_runtime.test_server_cli import run_cli, serve_args


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    keys = tmp_path / "keys"
    keys.mkdir()
    return make_tls(tmp_path / "tls", key_dir=keys)


def test_serves_https_and_announces_it(runtime_factory: RuntimeFactory, tls: TlsFiles) -> None:
    rt = runtime_factory(extra_args=tls.runtime_args())
    assert rt.base_url == f"https://127.0.0.1:{rt.port}"
    response = requests.get(rt.url("/v1/runtime"), headers=rt.headers(), verify=str(tls.ca_file), timeout=(5, 10))
    assert response.status_code == 200 and response.json()["runtime"]["runtime_id"] == "rt-test"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(rt.url("/v1/runtime"), headers=rt.headers(), timeout=(5, 10))  # not in the system store
    plain = f"http://127.0.0.1:{rt.port}/v1/runtime"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(plain, headers=rt.headers(), timeout=(5, 10))


def test_mtls_requires_a_client_certificate_of_its_ca(runtime_factory: RuntimeFactory, tls: TlsFiles) -> None:
    rt = runtime_factory(extra_args=(*tls.runtime_args(mtls=True), "--access-log"))
    url, ca = rt.url("/v1/runtime"), str(tls.ca_file)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, headers=rt.headers(), verify=ca, timeout=(5, 10))
    pair = (str(tls.client_cert), str(tls.client_key))
    assert requests.get(url, headers=rt.headers(), verify=ca, cert=pair, timeout=(5, 10)).status_code == 200
    wait_until(rt.requests_logged, timeout=10)
    assert rt.requests_logged() == [("GET", "/v1/runtime", 200)]  # the refused attempt never became a request


def test_the_access_log_has_one_line_per_request_and_no_token(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory(extra_args=("--access-log",))
    requests.get(rt.url("/v1/runtime"), headers=rt.headers(), timeout=(5, 10))
    requests.get(rt.url("/v1/workers"), headers={"Authorization": "Bearer wrong-token-x"}, timeout=(5, 10))
    wait_until(lambda: len(rt.requests_logged()) == 2, timeout=10)
    assert rt.requests_logged() == [("GET", "/v1/runtime", 200), ("GET", "/v1/workers", 401)]
    assert rt.stdout is not None
    text = "\n".join(rt.stdout.lines) + rt.stderr_text()
    assert DEFAULT_TOKEN not in text and "wrong-token-x" not in text and "Authorization" not in text


def test_unusable_tls_files_refuse_to_start(tmp_path: Path, tls: TlsFiles) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (["--tls-cert", str(tls.server_cert)], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", str(tls.ca_file)], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", str(not_pem), "--tls-key", str(tls.server_key)], "not PEM, or they do not match"),
        (["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.client_key)], "not PEM, or they do not match"),
        (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tls.server_key)], "cannot read the TLS"),
        ([*tls.runtime_args(), "--tls-client-ca", str(not_pem)], "--tls-client-ca file holds no PEM"),
    ]
    for args, message in cases:
        result = run_cli(serve_args(tmp_path, "--token-env", TOKEN_ENV, *args), token=DEFAULT_TOKEN)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)


def test_plain_http_on_a_non_loopback_bind_needs_insecure_http(tmp_path: Path, tls: TlsFiles) -> None:
    """The refusal comes before the socket is bound. To see the check pass without listening beyond
    loopback, the accepted variants are given a bad config file, which fails the start right after it."""
    base = ["--token-env", TOKEN_ENV]
    refused = run_cli(serve_args(tmp_path, *base, bind="0.0.0.0:0"), token=DEFAULT_TOKEN)
    assert refused.returncode == 2 and "refusing plain HTTP on a non-loopback address" in refused.stderr
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("display_name = 3\n")
    for extra in (["--insecure-http"], list(tls.runtime_args())):
        args = serve_args(tmp_path, *base, *extra, "--config", str(bad_config), bind="0.0.0.0:0")
        result = run_cli(args, token=DEFAULT_TOKEN)
        assert result.returncode == 2 and "invalid config" in result.stderr, (extra, result.stderr)
