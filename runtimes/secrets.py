"""Resolve token refs (``env:NAME``, ``file:/path``) to bearer tokens; values are never logged or echoed.

The database and the config file hold only the *ref*. The token value exists in memory only, inside the
client that sends it. Every failure to resolve raises ``RuntimeAuthFailed`` with a fixed message that
names the runtime id alone: no env var name, no path, no OS error text.
"""

from __future__ import annotations

import logging
import os
import re

from runtimes.errors import RuntimeAuthFailed

logger = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TOKEN_REF_LENGTH = 500
# A bearer token is short; a large file behind a ref is a misconfiguration, not a token.
MAX_TOKEN_BYTES = 16 * 1024
REF_FORMS_HELP = "'env:NAME' (NAME matching [A-Za-z_][A-Za-z0-9_]*) or 'file:/absolute/path'"


def validate_token_ref(ref: str) -> None:
    """Check the form of a token ref; raise ``ValueError`` (message without the ref's value) if wrong."""
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"token_ref must be {REF_FORMS_HELP}")
    if len(ref) > MAX_TOKEN_REF_LENGTH:
        raise ValueError(f"token_ref must be at most {MAX_TOKEN_REF_LENGTH} characters")
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in {"env", "file"}:
        raise ValueError(f"token_ref must be {REF_FORMS_HELP}")
    if scheme == "env":
        if not ENV_NAME_RE.fullmatch(rest):
            raise ValueError(f"token_ref 'env:' must name an environment variable: {REF_FORMS_HELP}")
        return
    if not rest.startswith("/") or any(not ch.isprintable() for ch in rest) or rest.strip() != rest:
        raise ValueError(f"token_ref 'file:' must be an absolute path: {REF_FORMS_HELP}")


def _not_configured(runtime_id: str, *, ref_kind: str, reason: str) -> RuntimeAuthFailed:
    # Only the ref's kind and a fixed reason go to the log: never the variable name, path or value.
    logger.warning(
        "runtimes.secret.unresolved",
        extra={"runtime_id": runtime_id, "code": "runtime_auth_failed", "ref_kind": ref_kind, "reason": reason},
    )
    return RuntimeAuthFailed(
        runtime_id=runtime_id, message=f"credential for runtime {runtime_id} is not configured"
    )


def _read_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_TOKEN_BYTES:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _strip_one_newline(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def resolve_token(ref: str, *, runtime_id: str) -> str:
    """The token a ref points at; ``RuntimeAuthFailed`` when it is missing, unreadable, empty or malformed."""
    try:
        validate_token_ref(ref)
    except ValueError:
        raise _not_configured(runtime_id, ref_kind="invalid", reason="invalid_ref") from None
    scheme, _, rest = ref.partition(":")
    value = os.environ.get(rest) if scheme == "env" else _read_file(rest)
    if value is None:
        raise _not_configured(runtime_id, ref_kind=scheme, reason="missing")
    value = _strip_one_newline(value)
    if not value:
        raise _not_configured(runtime_id, ref_kind=scheme, reason="empty")
    # Control characters or surrounding whitespace would be rejected by the HTTP layer with the value
    # quoted in the exception text; refuse them here, where the message stays fixed.
    if value.strip() != value or any(not ch.isprintable() for ch in value):
        raise _not_configured(runtime_id, ref_kind=scheme, reason="malformed")
    return value
