"""TLS material made at test time with ``trustme``: a CA, a runtime's server certificate, a client pair.

Nothing here is committed or reused between tests: every test that needs certificates makes its own.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one runtime: what it serves with, what the Backend trusts and presents."""

    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def runtime_args(self, *, mtls: bool = False) -> tuple[str, ...]:
        """``yoi-runtime serve`` arguments that serve HTTPS (and require a client certificate with ``mtls``)."""
        args = ("--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key))
        return (*args, "--tls-client-ca", str(self.ca_file)) if mtls else args


def issue_server_cert(
    ca: trustme.CA,
    directory: Path,
    *,
    names: tuple[str, ...] = SERVER_NAMES,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    stem: str = "server",
) -> tuple[Path, Path]:
    """A server certificate (chain) and key issued by ``ca`` for ``names``, written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(cert_path, append=index > 0)
    cert.private_key_pem.write_to_path(key_path)
    return cert_path, key_path


def make_tls(
    directory: Path,
    *,
    key_dir: Path,
    ca: trustme.CA | None = None,
    server_names: tuple[str, ...] = SERVER_NAMES,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> TlsFiles:
    """A CA (new unless given), a server certificate for ``server_names`` and a client pair whose key is in
    ``key_dir`` (the Backend's secrets dir: the key is referenced by a ``file:`` ref)."""
    ca = ca or trustme.CA()
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    server_cert, server_key = issue_server_cert(
        ca, directory, names=server_names, not_before=not_before, not_after=not_after
    )
    client = ca.issue_cert("yoi-backend")
    client_cert, client_key = directory / "backend.pem", key_dir / "backend.key"
    client.cert_chain_pems[0].write_to_path(client_cert)
    client.private_key_pem.write_to_path(client_key)
    return TlsFiles(ca, ca_file, server_cert, server_key, client_cert, client_key)
