"""Secret refs (``env:NAME``, ``file:/path``): checked where they are written, confined, and resolved at use.

The database and the config file hold only the *ref*; a value exists in memory only, inside the client that
sends it. A ref may name only what the Backend keeps for runtimes (docs/operations.md, "Secrets"):

- ``env:NAME``: NAME starts with ``YOI_TOKEN_ENV_PREFIX`` (default ``YOI_RUNTIME_TOKEN_``) and has more after
  it, so no ref can aim ``DJANGO_SECRET_KEY`` or ``DATABASE_URL`` at a runtime;
- ``file:PATH``: PATH is absolute and resolves, symlinks followed, to a file inside ``YOI_SECRETS_DIR``.

Where a ref is written (``sync_runtimes``, the admin) a refused ref is a ``ValueError`` naming the key, never
the value. At use, a refused ref is ``RuntimeMisconfigured`` and an unusable value ``RuntimeAuthFailed``;
either way no request is made, and neither message nor log names the variable, the path or the value.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from runtimes.errors import RuntimeAuthFailed, RuntimeMisconfigured
from runtimes.scrub import known_secrets

logger = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_TOKEN_ENV_PREFIX = "YOI_RUNTIME_TOKEN_"  # noqa: S105 - a variable name prefix, not a secret
MAX_TOKEN_REF_LENGTH = 500
# A bearer token or a PEM key is small; a large file behind a ref is a misconfiguration, not a secret.
MAX_SECRET_BYTES = 16 * 1024
MAX_TOKEN_BYTES = MAX_SECRET_BYTES


@dataclass(frozen=True)
class SecretPolicy:
    """Where refs may point: the env prefix and the (resolved) secrets directory."""

    env_prefix: str
    secrets_dir: Path

    @classmethod
    def from_settings(cls) -> SecretPolicy:
        """The policy of the running Backend (``YOI_TOKEN_ENV_PREFIX``, ``YOI_SECRETS_DIR``)."""
        from django.conf import settings

        prefix = str(getattr(settings, "YOI_TOKEN_ENV_PREFIX", DEFAULT_TOKEN_ENV_PREFIX))
        directory = str(getattr(settings, "YOI_SECRETS_DIR", Path(settings.YOI_DATA_DIR) / "secrets"))
        cached = _POLICY_CACHE.get((prefix, directory))
        if cached is None:
            cached = cls(env_prefix=prefix, secrets_dir=Path(os.path.realpath(directory)))
            _POLICY_CACHE.clear()
            _POLICY_CACHE[(prefix, directory)] = cached
        return cached

    def forms_help(self) -> str:
        """The allowed forms, for messages."""
        return f"'env:{self.env_prefix}<NAME>' or 'file:/absolute/path' inside YOI_SECRETS_DIR"


_POLICY_CACHE: dict[tuple[str, str], SecretPolicy] = {}


class SecretRefRefused(ValueError):
    """A ref the rules refuse; ``reason`` is a fixed word for logs, the message names the key only."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _SecretUnavailable(Exception):
    """A ref within the rules whose value cannot be used (missing, empty, unreadable, too large)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_form(ref: object, *, key: str, policy: SecretPolicy) -> tuple[str, str]:
    """``(scheme, rest)`` of a ref within the rules, else SecretRefRefused (messages never echo the ref)."""
    if not isinstance(ref, str) or not ref:
        raise SecretRefRefused(f"{key} must be {policy.forms_help()}", reason="invalid_ref")
    if len(ref) > MAX_TOKEN_REF_LENGTH:
        raise SecretRefRefused(f"{key} must be at most {MAX_TOKEN_REF_LENGTH} characters", reason="invalid_ref")
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in {"env", "file"}:
        raise SecretRefRefused(f"{key} must be {policy.forms_help()}", reason="invalid_ref")
    if scheme == "env":
        if not ENV_NAME_RE.fullmatch(rest):
            raise SecretRefRefused(f"{key} 'env:' must name an environment variable", reason="invalid_ref")
        if not rest.startswith(policy.env_prefix) or len(rest) == len(policy.env_prefix):
            raise SecretRefRefused(
                f"{key} 'env:' may only name a variable {policy.env_prefix}<NAME> (YOI_TOKEN_ENV_PREFIX)",
                reason="env_outside_prefix",
            )
        return scheme, rest
    if not rest.startswith("/") or any(not ch.isprintable() for ch in rest) or rest.strip() != rest:
        raise SecretRefRefused(f"{key} 'file:' must be an absolute path", reason="invalid_ref")
    return scheme, _confined_path(rest, key=key, policy=policy)


def _confined_path(path: str, *, key: str, policy: SecretPolicy) -> str:
    """The real path of ``path`` (symlinks followed), which must lie inside the secrets directory."""
    real = Path(os.path.realpath(path))
    if real == policy.secrets_dir or not real.is_relative_to(policy.secrets_dir):
        raise SecretRefRefused(
            f"{key} 'file:' must name a file inside YOI_SECRETS_DIR (symlinks are followed)",
            reason="file_outside_dir",
        )
    return str(real)


def _read_env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise _SecretUnavailable("missing")
    return value


def _read_file(real_path: str) -> str:
    """The text of a confined file: opened without following a last-moment symlink, a regular file, capped."""
    try:
        fd = os.open(real_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _SecretUnavailable("missing") from None
    except IsADirectoryError:
        raise _SecretUnavailable("directory") from None
    except OSError:
        raise _SecretUnavailable("unreadable") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _SecretUnavailable("directory")
        if not stat.S_ISREG(info.st_mode):
            raise _SecretUnavailable("not_a_file")
        raw = os.read(fd, MAX_SECRET_BYTES + 1)
    except OSError:
        raise _SecretUnavailable("unreadable") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_BYTES:
        raise _SecretUnavailable("too_large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _SecretUnavailable("malformed") from None


def _strip_one_newline(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def _read(ref: str, *, key: str, policy: SecretPolicy) -> tuple[str, str]:
    """``(scheme, value)`` of a ref; SecretRefRefused or _SecretUnavailable."""
    scheme, target = _check_form(ref, key=key, policy=policy)
    value = _read_env(target) if scheme == "env" else _read_file(target)
    if not _strip_one_newline(value).strip():
        raise _SecretUnavailable("empty")
    return scheme, value


_UNAVAILABLE_MESSAGES = {
    "directory": "names a directory, not a file",
    "not_a_file": "does not name a regular file",
    "empty": "names an empty value",
    "too_large": f"names a value larger than {MAX_SECRET_BYTES} bytes",
    "unreadable": "names a file the Backend cannot read",
    "malformed": "names a value that is not UTF-8 text",
}


def validate_secret_ref(ref: object, *, key: str = "token_ref", policy: SecretPolicy | None = None) -> None:
    """Check a ref where it is written: ``ValueError`` naming ``key`` (never the value) when it is refused.

    Beyond the rules, a value that is there but cannot work (an empty file or variable, a directory, an
    unreadable or oversized file) is refused too; one that is not there yet (a variable set only for the
    server, a file provisioned later) is accepted and fails at use.
    """
    policy = policy or SecretPolicy.from_settings()
    try:
        _read(ref, key=key, policy=policy)  # type: ignore[arg-type]
    except _SecretUnavailable as exc:
        if exc.reason != "missing":
            raise ValueError(f"{key} {_UNAVAILABLE_MESSAGES[exc.reason]}") from None


def validate_token_ref(ref: object, *, policy: SecretPolicy | None = None) -> None:
    """``validate_secret_ref`` for a ``token_ref``."""
    validate_secret_ref(ref, key="token_ref", policy=policy)


def _refused(runtime_id: str, key: str, reason: str) -> RuntimeMisconfigured:
    # Only the key and a fixed reason go to the log: never the variable name, path or value.
    logger.warning(
        "runtimes.secret.refused",
        extra={"runtime_id": runtime_id, "code": RuntimeMisconfigured.code, "key": key, "reason": reason},
    )
    return RuntimeMisconfigured(runtime_id=runtime_id, reason=key)


def check_secret_ref(ref: str, *, runtime_id: str, key: str, policy: SecretPolicy | None = None) -> None:
    """At use: RuntimeMisconfigured (reason = ``key``) for a ref the rules refuse; nothing is read."""
    try:
        _check_form(ref, key=key, policy=policy or SecretPolicy.from_settings())
    except SecretRefRefused as exc:
        raise _refused(runtime_id, key, exc.reason) from None


def resolve_secret(ref: str, *, runtime_id: str, key: str, policy: SecretPolicy | None = None) -> str:
    """A secret (the mTLS key) at use: RuntimeMisconfigured (reason = ``key``) whenever it cannot be used."""
    policy = policy or SecretPolicy.from_settings()
    try:
        _, value = _read(ref, key=key, policy=policy)
    except SecretRefRefused as exc:
        raise _refused(runtime_id, key, exc.reason) from None
    except _SecretUnavailable as exc:
        raise _refused(runtime_id, key, exc.reason) from None
    known_secrets.add(value)
    return value


def resolve_token(ref: str, *, runtime_id: str, policy: SecretPolicy | None = None) -> str:
    """The bearer token a ref points at.

    A ref the rules refuse is RuntimeMisconfigured; a value that is missing, unreadable, empty or malformed
    is RuntimeAuthFailed ("credential ... is not configured"). Either way the caller sends nothing.
    """
    policy = policy or SecretPolicy.from_settings()
    scheme = ref.partition(":")[0] if isinstance(ref, str) else "invalid"
    try:
        scheme, raw = _read(ref, key="token_ref", policy=policy)
    except SecretRefRefused as exc:
        raise _refused(runtime_id, "token_ref", exc.reason) from None
    except _SecretUnavailable as exc:
        raise _not_configured(runtime_id, ref_kind=scheme, reason=exc.reason) from None
    value = _strip_one_newline(raw)
    # Control characters or surrounding whitespace would be rejected by the HTTP layer with the value
    # quoted in the exception text; refuse them here, where the message stays fixed.
    if value.strip() != value or any(not ch.isprintable() for ch in value):
        raise _not_configured(runtime_id, ref_kind=scheme, reason="malformed")
    known_secrets.add(value)
    return value


def _not_configured(runtime_id: str, *, ref_kind: str, reason: str) -> RuntimeAuthFailed:
    logger.warning(
        "runtimes.secret.unresolved",
        extra={"runtime_id": runtime_id, "code": RuntimeAuthFailed.code, "ref_kind": ref_kind, "reason": reason},
    )
    return RuntimeAuthFailed(
        runtime_id=runtime_id, message=f"credential for runtime {runtime_id} is not configured"
    )


def secret_values_of_refs(refs: list[str], *, policy: SecretPolicy | None = None) -> list[str]:
    """The values behind refs that resolve (for redaction); refused or missing ones are skipped, silently."""
    policy = policy or SecretPolicy.from_settings()
    values: list[str] = []
    for ref in refs:
        if not ref:
            continue
        try:
            values.append(_read(ref, key="ref", policy=policy)[1])
        except (SecretRefRefused, _SecretUnavailable):
            continue
    return values
