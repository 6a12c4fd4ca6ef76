"""TLS of the remote hop: the client ``SSLContext`` of one runtime row (which CA to trust, the mTLS pair).

Built when the row's handle is built; the client uses it for every request, stream and probe. A file that
cannot be used raises ``TlsConfigError`` naming the row key at fault (never the path or the file's text).
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2
# A CA bundle (the whole system store is ~200 KiB) or a certificate chain: anything larger is a mistake.
MAX_PEM_BYTES = 1024 * 1024
_PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


class TlsConfigError(Exception):
    """A TLS setting of a runtime row cannot be used; ``key`` is the row key, ``reason`` a fixed word."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _read_pem(path: str, *, key: str) -> str:
    if not path or not os.path.isabs(path):
        raise TlsConfigError(key, "not_absolute")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise TlsConfigError(key, "missing") from None
    except IsADirectoryError:
        raise TlsConfigError(key, "directory") from None
    except OSError:
        raise TlsConfigError(key, "unreadable") from None
    if len(raw) > MAX_PEM_BYTES:
        raise TlsConfigError(key, "too_large")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise TlsConfigError(key, "not_pem") from None
    if _PEM_CERT_BEGIN not in text:
        raise TlsConfigError(key, "not_pem")
    return text


def _check_certificates(text: str, *, key: str) -> None:
    """The PEM text holds certificates, each of which decodes (the ssl module's own PEM reader)."""
    blocks = _PEM_CERT_RE.findall(text)
    if not blocks:
        raise TlsConfigError(key, "not_pem")
    for block in blocks:
        try:
            ssl.PEM_cert_to_DER_cert(block)
        except ValueError:
            raise TlsConfigError(key, "not_pem") from None


@contextlib.contextmanager
def _key_path(key_pem: str) -> Iterator[str]:
    """A path that reads as the key, for ``load_cert_chain`` (which takes paths): an anonymous memory file
    where the OS has one, else a private temporary file; gone when the block ends."""
    data = key_pem.encode("utf-8")
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("yoi-mtls-key", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="yoi-mtls-") as directory:  # pragma: no cover - non-Linux
        path = Path(directory) / "key.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield str(path)


def client_context(*, ca_file: str = "", cert_file: str = "", key_pem: str | None = None) -> ssl.SSLContext:
    """The context of one runtime: verify the peer (``ca_file`` only, or the system store when empty) and
    its host name, TLS 1.2 at least, and present ``cert_file`` + ``key_pem`` when given (mTLS)."""
    if ca_file:
        ca_text = _read_pem(ca_file, key="tls_ca_file")
        _check_certificates(ca_text, key="tls_ca_file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
        try:
            context.load_verify_locations(cadata=ca_text)
        except (ssl.SSLError, ValueError):
            raise TlsConfigError("tls_ca_file", "not_pem") from None
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = MIN_TLS_VERSION
    if cert_file or key_pem:
        if not cert_file:
            raise TlsConfigError("tls_client_cert_file", "missing")
        if not key_pem:
            raise TlsConfigError("tls_client_key_ref", "missing")
        _check_certificates(_read_pem(cert_file, key="tls_client_cert_file"), key="tls_client_cert_file")
        with _key_path(key_pem) as key_path:
            try:
                context.load_cert_chain(cert_file, key_path)
            except (ssl.SSLError, ValueError, OSError):
                # The certificate was read above: what failed is the key (not PEM, or not this cert's).
                raise TlsConfigError("tls_client_key_ref", "not_pem_or_mismatch") from None
    return context
