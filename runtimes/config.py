"""Parse and validate the runtimes config file (docs/operations.md, the runtimes config file): TOML, one
``[[runtime]]`` table per runtime.

Everything is validated before anything is applied. Problems raise ``RuntimeConfigError`` naming the entry
(index and runtime_id), the key and the line; messages never echo a URL, a path or a ref's value. The rules
of a remote runtime's connection (``remote_connection_problems``) are shared with the admin form.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from runtimes.bulkhead import DEFAULT_MAX_IN_FLIGHT
from runtimes.secrets import SecretPolicy, validate_secret_ref
from runtimes.types import ID_PATTERN, RuntimeKind, is_valid_id
from worker_runtime.net import is_loopback

RUNTIME_KINDS: tuple[RuntimeKind, ...] = ("embedded", "remote")
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0
MAX_BASE_URL_LENGTH = 500
MAX_DISPLAY_NAME_LENGTH = 200
MAX_MAX_IN_FLIGHT = 10_000
MAX_PATH_LENGTH = 500
TLS_KEYS: tuple[str, ...] = ("tls_ca_file", "tls_client_cert_file", "tls_client_key_ref")
# The keys that say where a remote runtime is and with which credential (the connection permission's).
REMOTE_CONNECTION_KEYS: tuple[str, ...] = ("base_url", "token_ref", *TLS_KEYS, "allow_insecure_http")

_TABLE_HEADER_RE = re.compile(r"^\s*\[")
_RUNTIME_HEADER_RE = re.compile(r"^\s*\[\[\s*(?:runtime|\"runtime\"|'runtime')\s*\]\]")


class RuntimeConfigError(ValueError):
    """The runtimes config file is invalid; the message lists every problem with entry, key and line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class RuntimeEntry:
    """One validated ``[[runtime]]`` entry; its repr never shows the base URL."""

    runtime_id: str
    display_name: str
    kind: RuntimeKind
    base_url: str = ""
    token_ref: str = ""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    enabled: bool = True
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    tls_ca_file: str = ""
    tls_client_cert_file: str = ""
    tls_client_key_ref: str = ""
    allow_insecure_http: bool = False

    def __repr__(self) -> str:
        return (
            f"RuntimeEntry(runtime_id={self.runtime_id!r}, kind={self.kind!r}, "
            f"base_url=<backend-private>, enabled={self.enabled!r})"
        )

    __str__ = __repr__


def validate_runtime_id(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a runtime id slug ``[A-Za-z0-9_:-]{1,120}``."""
    if not is_valid_id(value):
        raise ValueError(f"runtime_id must match {ID_PATTERN}")


def validate_base_url(value: object) -> None:
    """Raise ``ValueError`` (without echoing the URL) unless ``value`` is a plain http(s) URL with a host."""
    if not isinstance(value, str) or not value:
        raise ValueError("base_url must be an http:// or https:// URL")
    if len(value) > MAX_BASE_URL_LENGTH:
        raise ValueError(f"base_url must be at most {MAX_BASE_URL_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("base_url must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("base_url is not a valid URL (bad host or port)") from None
    if parts.scheme not in {"http", "https"}:
        raise ValueError("base_url must use the http or https scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("base_url must not carry credentials; use token_ref for the token")
    if not parts.hostname:
        raise ValueError("base_url must name a host")
    if port == 0:
        raise ValueError("base_url has an invalid port")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("base_url must not have a query string or fragment")


def insecure_http(base_url: str) -> bool:
    """True when ``base_url`` is plain http:// to a host that is not loopback (the token would cross a
    network in cleartext)."""
    try:
        parts = urlsplit(base_url)
    except ValueError:
        return False
    return parts.scheme.lower() == "http" and not is_loopback(parts.hostname or "")


def validate_file_path(value: object, *, key: str) -> None:
    """Raise ``ValueError`` (without echoing it) unless ``value`` is an absolute path."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be an absolute path")
    if len(value) > MAX_PATH_LENGTH:
        raise ValueError(f"{key} must be at most {MAX_PATH_LENGTH} characters")
    if not os.path.isabs(value) or value.strip() != value or any(not ch.isprintable() for ch in value):
        raise ValueError(f"{key} must be an absolute path")


def remote_connection_problems(values: Mapping[str, Any], *, policy: SecretPolicy) -> list[tuple[str, str]]:
    """Every ``(key, message)`` wrong with a remote runtime's connection settings; ``[]`` when they may be
    used. ``values`` holds the keys of REMOTE_CONNECTION_KEYS (missing ones are empty)."""
    problems: list[tuple[str, str]] = []
    base_url = values.get("base_url") or ""
    base_url_ok = False
    if not base_url:
        problems.append(("base_url", "base_url is required for a remote runtime"))
    else:
        try:
            validate_base_url(base_url)
            base_url_ok = True
        except ValueError as exc:
            problems.append(("base_url", str(exc)))
    token_ref = values.get("token_ref") or ""
    if not token_ref:
        problems.append(("token_ref", "token_ref is required for a remote runtime"))
    else:
        try:
            validate_secret_ref(token_ref, key="token_ref", policy=policy)
        except ValueError as exc:
            problems.append(("token_ref", str(exc)))
    allow_insecure = values.get("allow_insecure_http", False)
    if not isinstance(allow_insecure, bool):
        problems.append(("allow_insecure_http", "allow_insecure_http must be true or false"))
        allow_insecure = False
    if base_url_ok and insecure_http(base_url) and not allow_insecure:
        problems.append(
            (
                "base_url",
                "http:// to a host that is not loopback sends the token in cleartext: "
                "use https://, or set allow_insecure_http = true",
            )
        )
    for key in ("tls_ca_file", "tls_client_cert_file"):
        if values.get(key):
            try:
                validate_file_path(values[key], key=key)
            except ValueError as exc:
                problems.append((key, str(exc)))
    key_ref = values.get("tls_client_key_ref") or ""
    if key_ref:
        try:
            validate_secret_ref(key_ref, key="tls_client_key_ref", policy=policy)
        except ValueError as exc:
            problems.append(("tls_client_key_ref", str(exc)))
    if bool(values.get("tls_client_cert_file")) != bool(key_ref):
        missing = "tls_client_key_ref" if not key_ref else "tls_client_cert_file"
        problems.append((missing, "tls_client_cert_file and tls_client_key_ref go together (mTLS)"))
    if base_url_ok and any(values.get(key) for key in TLS_KEYS) and not base_url.lower().startswith("https:"):
        key = next(key for key in TLS_KEYS if values.get(key))
        problems.append((key, "TLS settings need an https:// base_url"))
    return problems


def embedded_connection_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What an embedded runtime may not have: any remote connection key set."""
    return [
        (key, f"{key} is not allowed for an embedded runtime")
        for key in REMOTE_CONNECTION_KEYS
        if values.get(key) not in (None, "", False)
    ]


def validate_timeout(value: object, *, key: str) -> float:
    """The timeout as a float; ``ValueError`` unless it is a finite number in (0, MAX_TIMEOUT] seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number of seconds")
    number = float(value)
    if not math.isfinite(number) or number <= 0 or number > MAX_TIMEOUT:
        raise ValueError(f"{key} must be greater than 0 and at most {MAX_TIMEOUT:g} seconds")
    return number


def validate_max_in_flight(value: object) -> int:
    """The bulkhead size as an int; ``ValueError`` unless it is an integer in [1, MAX_MAX_IN_FLIGHT]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_IN_FLIGHT:
        raise ValueError(f"max_in_flight must be an integer from 1 to {MAX_MAX_IN_FLIGHT}")
    return value


def _locate_entries(text: str, count: int) -> list[tuple[int, int]] | None:
    """Line spans (1-based, end exclusive) of each ``[[runtime]]`` table's own keys, if the file uses them."""
    lines = text.splitlines()
    headers = [index for index, line in enumerate(lines) if _RUNTIME_HEADER_RE.match(line)]
    if len(headers) != count:
        return None
    spans: list[tuple[int, int]] = []
    for header in headers:
        end = header + 1
        while end < len(lines) and not _TABLE_HEADER_RE.match(lines[end]):
            end += 1
        spans.append((header + 1, end + 1))
    return spans


class _Locator:
    """Best-effort line numbers: tomllib reports none for values, so find keys in the text."""

    def __init__(self, text: str, count: int) -> None:
        self.lines = text.splitlines()
        self.spans = _locate_entries(text, count)

    def line_of(self, index: int, key: str | None, runtime_id: object) -> int | None:
        key_re = None
        if key is not None:
            key_re = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
        if self.spans is not None:
            start, end = self.spans[index]
            if key_re is not None:
                for number in range(start + 1, end):
                    if key_re.match(self.lines[number - 1]):
                        return number
            return start
        if isinstance(runtime_id, str) and runtime_id:
            id_re = re.compile(rf"runtime_id\s*=\s*[\"']{re.escape(runtime_id)}[\"']")
            for number, line in enumerate(self.lines, start=1):
                if id_re.search(line):
                    return number
        return None


def _describe(index: int, runtime_id: object, line: int | None) -> str:
    if isinstance(runtime_id, str):
        shown = repr(runtime_id[:120])
    else:
        shown = "<missing>" if runtime_id is None else "<invalid>"
    where = f", line {line}" if line is not None else ""
    return f"runtime entry {index + 1} (runtime_id {shown}{where})"


class _Problem:
    """Collects problems, each naming entry, runtime_id, line and key."""

    def __init__(self, locator: _Locator, raw_entries: list[Any]) -> None:
        self.locator = locator
        self.raw_entries = raw_entries
        self.problems: list[str] = []

    def __call__(self, index: int, key: str | None, message: str) -> None:
        raw = self.raw_entries[index]
        runtime_id = raw.get("runtime_id") if isinstance(raw, dict) else None
        line = self.locator.line_of(index, key, runtime_id)
        key_part = f"key {key!r}: " if key is not None else ""
        self.problems.append(f"{_describe(index, runtime_id, line)}: {key_part}{message}")


def _validate_entry(
    index: int, raw: Mapping[str, Any], problem: _Problem, policy: SecretPolicy
) -> RuntimeEntry | None:
    """Validate one entry, reporting each bad key through ``problem``; None when anything is wrong."""
    ok = True

    def fail(key: str, message: str) -> None:
        nonlocal ok
        ok = False
        problem(index, key, message)

    def required(key: str, validate: Callable[[Any], object], missing: str) -> None:
        """A key that must be present and pass ``validate`` (its ValueError is the message)."""
        if key not in raw:
            fail(key, missing)
            return
        try:
            validate(raw[key])
        except ValueError as exc:
            fail(key, str(exc))

    runtime_id = raw.get("runtime_id")
    required("runtime_id", validate_runtime_id, "runtime_id is required")

    display_name = raw.get("display_name")
    if "display_name" not in raw:
        fail("display_name", "display_name is required")
    elif not isinstance(display_name, str) or not display_name.strip():
        fail("display_name", "display_name must be a non-empty string")
    elif len(display_name) > MAX_DISPLAY_NAME_LENGTH:
        fail("display_name", f"display_name must be at most {MAX_DISPLAY_NAME_LENGTH} characters")

    kind = raw.get("kind")
    if "kind" not in raw:
        fail("kind", "kind is required ('embedded' or 'remote')")
    elif kind not in RUNTIME_KINDS:
        fail("kind", "kind must be 'embedded' or 'remote'")

    connection = {key: raw[key] for key in REMOTE_CONNECTION_KEYS if key in raw}
    text_keys = ("base_url", "token_ref", *TLS_KEYS)
    mistyped = {key for key in text_keys if not isinstance(connection.get(key, ""), str)}
    for key in sorted(mistyped):
        fail(key, f"{key} must be a string")
    if kind == "remote":
        problems = remote_connection_problems(connection, policy=policy)
    elif kind == "embedded":
        # An empty string (or false) is tolerated (templated files); anything else would be silently ignored.
        problems = embedded_connection_problems(connection)
    else:
        problems = []
    for key, message in problems:
        if key not in mistyped:
            fail(key, message)

    timeouts: dict[str, float] = {}
    for key, default in (("connect_timeout", DEFAULT_CONNECT_TIMEOUT), ("read_timeout", DEFAULT_READ_TIMEOUT)):
        try:
            timeouts[key] = validate_timeout(raw.get(key, default), key=key)
        except ValueError as exc:
            fail(key, str(exc))

    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        fail("enabled", "enabled must be true or false")

    max_in_flight = raw.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT)
    try:
        validate_max_in_flight(max_in_flight)
    except ValueError as exc:
        fail("max_in_flight", str(exc))

    if not ok:
        return None
    remote = kind == "remote"
    return RuntimeEntry(
        runtime_id=cast(str, runtime_id),
        display_name=cast(str, display_name).strip(),
        kind=cast(RuntimeKind, kind),
        base_url=connection.get("base_url", "") if remote else "",
        token_ref=connection.get("token_ref", "") if remote else "",
        connect_timeout=timeouts["connect_timeout"],
        read_timeout=timeouts["read_timeout"],
        enabled=cast(bool, enabled),
        max_in_flight=cast(int, max_in_flight),
        tls_ca_file=connection.get("tls_ca_file", "") if remote else "",
        tls_client_cert_file=connection.get("tls_client_cert_file", "") if remote else "",
        tls_client_key_ref=connection.get("tls_client_key_ref", "") if remote else "",
        allow_insecure_http=bool(connection.get("allow_insecure_http", False)) if remote else False,
    )


def parse_runtime_config(text: str, *, policy: SecretPolicy | None = None) -> list[RuntimeEntry]:
    """Validate a runtimes config document and return its entries in file order.

    ``policy`` says where secret refs may point (default: the running Backend's settings).
    """
    policy = policy or SecretPolicy.from_settings()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message carries "(at line L, column C)" and no values.
        raise RuntimeConfigError([f"invalid TOML: {exc}"]) from None

    if "runtime" not in document:
        raise RuntimeConfigError(["key 'runtime': no [[runtime]] entries in the file"])
    raw_entries = document["runtime"]
    if not isinstance(raw_entries, list) or not raw_entries:
        raise RuntimeConfigError(["key 'runtime': must be a non-empty array of [[runtime]] tables"])

    problem = _Problem(_Locator(text, len(raw_entries)), raw_entries)
    entries: list[RuntimeEntry | None] = []
    for index, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            problem(index, None, "each runtime entry must be a table")
            entries.append(None)
            continue
        entries.append(_validate_entry(index, raw, problem, policy))

    first_seen: dict[str, int] = {}
    for index, raw in enumerate(raw_entries):
        runtime_id = raw.get("runtime_id") if isinstance(raw, dict) else None
        if not isinstance(runtime_id, str) or not is_valid_id(runtime_id):
            continue
        if runtime_id in first_seen:
            problem(
                index, "runtime_id", f"duplicate runtime_id: already used by entry {first_seen[runtime_id] + 1}"
            )
        else:
            first_seen[runtime_id] = index

    if problem.problems:
        raise RuntimeConfigError(problem.problems)
    return [entry for entry in entries if entry is not None]


def load_runtime_config(path: Path, *, policy: SecretPolicy | None = None) -> list[RuntimeEntry]:
    """Read and validate the runtimes config file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuntimeConfigError([f"cannot read the runtimes config file: {exc.strerror or 'error'}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RuntimeConfigError(["the runtimes config file is not valid UTF-8"]) from None
    return parse_runtime_config(text, policy=policy)
