"""The one scrub for what a runtime supplies, and the Backend's known secret values.

Two strengths, one place (see docs/operations.md, "What the Backend scrubs"):

- *metadata* (display names, profile names and descriptions, worker status/profile/intent, capabilities,
  status texts, error codes and messages): URLs, the runtime's own host and host:port in any form (alone,
  IPv6 brackets, percent-encoded), any other host:port, filesystem paths, traceback text and every known
  secret value are replaced;
- *agent content* (transcript item content, event payloads): known secret values only, because agents
  legitimately print URLs and paths.

Known secret values (every runtime token and mTLS key the Backend can resolve, ``DJANGO_SECRET_KEY``, the
passwords in ``DATABASE_URL`` / ``REDIS_URL``, the metrics token) are collected once and kept in
``known_secrets`` with an Aho-Corasick automaton over them (``ahocorasick_rs``): the hot path (an event
payload) is one scan of its text, whatever the number of secrets; only a payload that holds a secret is
walked and rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import ahocorasick_rs

REDACTED = "<redacted>"
# Shorter values are not redacted: a secret that short would also match ordinary words, and is no secret.
MIN_SECRET_LENGTH = 8
# A PEM body line is 64 characters; a line of a key quoted alone must not survive either.
MIN_PEM_LINE_LENGTH = 16
MAX_UPSTREAM_MESSAGE = 200
# Percent-decoding rounds: "%252F" is "/" encoded twice.
MAX_DECODE_ROUNDS = 3
_SCALARS = (int, float, bool, type(None))
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.~-]+){2,}[\\/]?|~[\\/]\S*")
# Everything from the header on is the traceback: its frames name files, its last line an exception text.
_TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\).*", re.DOTALL)
_FRAME_RE = re.compile(r'File "[^"\n]*", line \d+(?:, in \S+)?')
# host:port where the host is a bracketed IPv6 address, localhost, an IPv4 address or a dotted name.
_HOST_PORT_RE = re.compile(
    r"(?<![\w.-])(?:\[[0-9A-Fa-f:.%]+\]|localhost|(?:\d{1,3}\.){3}\d{1,3}|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    r":\d{1,5}(?!\d)",
    re.IGNORECASE,
)


class KnownSecrets:
    """Every secret value the Backend holds, for redaction; values longest first, never logged or shown."""

    def __init__(self, *, static_source: Callable[[], Iterable[str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._static_source = static_source or backend_secret_values
        self._static_loaded = False
        self._set: frozenset[str] = frozenset()
        self._values: tuple[str, ...] = ()
        self._matcher: ahocorasick_rs.AhoCorasick | None = None
        # The values as they appear inside a JSON string (quotes and backslashes escaped), for redact_tree.
        self._json_matcher: ahocorasick_rs.AhoCorasick | None = None

    def __repr__(self) -> str:
        return f"KnownSecrets(count={len(self._values)})"

    def add(self, *values: object) -> None:
        """Remember more secret values (strings shorter than MIN_SECRET_LENGTH are ignored)."""
        new = {value for value in _secret_forms(values) if value not in self._set}
        if new:
            with self._lock:
                self._rebuild(self._set | new)

    def values(self) -> tuple[str, ...]:
        """The values, longest first (so a secret containing another is replaced whole)."""
        if not self._static_loaded:
            self._load_static()
        return self._values

    def reset(self) -> None:
        """Forget every value; the Backend's own are collected again on next use (tests, settings changes)."""
        with self._lock:
            self._static_loaded = False
            self._rebuild(frozenset())

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced (the longest match wins)."""
        if not self._static_loaded:
            self._load_static()
        matcher = self._matcher
        if matcher is None:
            return text
        spans = matcher.find_matches_as_indexes(text)
        if not spans:
            return text
        parts: list[str] = []
        last = 0
        for _, start, end in spans:
            parts += (text[last:start], REDACTED)
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def redact_tree(self, value: Any) -> Any:
        """A JSON value with known secrets replaced in every string (keys too); unchanged parts are shared.

        The common case — nothing to redact — costs one automaton scan of each string of a flat object, or
        of the JSON encoding of a deeper one (a secret inside a string is, escaped, inside its encoding).
        """
        if not self._static_loaded:
            self._load_static()
        matcher, json_matcher = self._matcher, self._json_matcher
        if matcher is None or json_matcher is None or not _holds(value, matcher, json_matcher):
            return value
        return _walk(value, self.redact)

    def _load_static(self) -> None:
        values = _secret_forms(self._static_source())
        with self._lock:
            if not self._static_loaded:
                self._static_loaded = True
                self._rebuild(self._set | values)

    def _rebuild(self, values: frozenset[str]) -> None:
        ordered = sorted(values, key=lambda value: (-len(value), value))
        longest = ahocorasick_rs.MatchKind.LeftmostLongest
        self._matcher = ahocorasick_rs.AhoCorasick(ordered, matchkind=longest) if ordered else None
        escaped = sorted({json.dumps(value, ensure_ascii=False)[1:-1] for value in ordered})
        self._json_matcher = ahocorasick_rs.AhoCorasick(escaped) if escaped else None
        self._set = values
        self._values = tuple(ordered)


def _secret_forms(values: Iterable[object]) -> frozenset[str]:
    """The strings to redact for some secret values: each value, and each line of a multi-line one (PEM)."""
    forms: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            continue
        value = value.strip()
        if len(value) >= MIN_SECRET_LENGTH:
            forms.add(value)
        if "\n" in value:
            forms.update(
                line.strip()
                for line in value.splitlines()
                if len(line.strip()) >= MIN_PEM_LINE_LENGTH and not line.startswith("-----")
            )
    return frozenset(forms)


def _holds(value: Any, matcher: ahocorasick_rs.AhoCorasick, json_matcher: ahocorasick_rs.AhoCorasick) -> bool:
    """Whether any string of a JSON value (keys too) may hold a known secret (a rare false positive only
    costs a walk)."""
    if type(value) is str:
        return bool(matcher.find_matches_as_indexes(value))
    if type(value) is dict:
        # Most payloads are one flat object ({"text": "..."}): scan its strings as they are.
        for key, item in value.items():
            kind = type(item)
            if kind is str:
                if matcher.find_matches_as_indexes(item):
                    return True
            elif kind not in _SCALARS:
                break
            if type(key) is str and matcher.find_matches_as_indexes(key):
                return True
        else:
            return False
    try:
        encoded = _ENCODER.encode(value)
    except (TypeError, ValueError):
        return True  # not plain JSON: walk it
    return bool(json_matcher.find_matches_as_indexes(encoded))


def _walk(value: Any, fix: Callable[[str], str]) -> Any:
    """Apply ``fix`` to every string of a JSON value (dict keys included); returns ``value`` itself when
    nothing changed, so the common case allocates nothing."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for position, (key, item) in enumerate(value.items()):
            new_key = fix(key) if isinstance(key, str) else key
            new_item = _walk(item, fix)
            if changed is None and (new_key is not key or new_item is not item):
                changed = dict(list(value.items())[:position])
            if changed is not None:
                changed[new_key] = new_item
        return value if changed is None else changed
    if isinstance(value, list):
        items = [_walk(item, fix) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    return value


def backend_secret_values() -> list[str]:
    """The Backend's own secrets: Django's secret key(s), database and Redis passwords, the metrics token,
    and every variable of this process that holds a runtime token (``YOI_TOKEN_ENV_PREFIX``)."""
    from django.conf import settings

    values: list[str] = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    for database in settings.DATABASES.values():
        values.append(str(database.get("PASSWORD") or ""))
    for url in (getattr(settings, "REDIS_URL", ""), os.environ.get("DATABASE_URL", "")):
        try:
            values.append(urlsplit(url).password or "")
        except ValueError:
            continue
    values.append(str(getattr(settings, "YOI_METRICS_TOKEN", "") or ""))
    prefix = getattr(settings, "YOI_TOKEN_ENV_PREFIX", "")
    if prefix:
        values += [value for name, value in os.environ.items() if name.startswith(prefix)]
    return values


known_secrets = KnownSecrets()


def _decoded(text: str) -> str:
    """``text`` percent-decoded until it stops changing (bounded): encoded paths and hosts are found too."""
    for _ in range(MAX_DECODE_ROUNDS):
        if "%" not in text:
            break
        decoded = unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def _host_forms(base_url: str) -> list[str]:
    """Every way a runtime's address may be written: netloc, host:port, [v6]:port, the host alone, and each
    of those percent-encoded."""
    if not base_url:
        return []
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return []
    host = (parts.hostname or "").lower()
    if not host:
        return []
    port = port or (443 if parts.scheme == "https" else 80)
    bracketed = f"[{host}]" if ":" in host else host
    forms = {parts.netloc.lower(), f"{bracketed}:{port}", f"{host}:{port}", bracketed, host}
    forms |= {quote(form, safe="") for form in forms}
    return sorted((form for form in forms if len(form) >= 3), key=lambda form: (-len(form), form))


class Scrubber:
    """The scrub of one runtime's data: its own address (from its base URL) plus the generic rules."""

    def __init__(self, *, base_url: str = "", secrets: KnownSecrets | None = None) -> None:
        self.secrets = secrets or known_secrets
        forms = _host_forms(base_url)
        self._host_re = re.compile("|".join(re.escape(form) for form in forms), re.IGNORECASE) if forms else None

    def __repr__(self) -> str:
        return "Scrubber(base_url=<backend-private>)"

    def text(self, value: str, *, limit: int | None = None) -> str:
        """Runtime-supplied metadata text made safe to show (see the module docstring), on one line."""
        text = self._replace(value)
        text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
        return text if limit is None else text[:limit]

    def _replace(self, value: str) -> str:
        """The replacements of the metadata scrub, characters otherwise kept."""
        secrets = self.secrets
        text = secrets.redact(value)
        text = secrets.redact(_decoded(text))
        text = _TRACEBACK_RE.sub("<traceback>", text)
        text = _FRAME_RE.sub("<traceback>", text)
        text = _URL_RE.sub("<url>", text)
        if self._host_re is not None:
            text = self._host_re.sub("<host>", text)
        text = _HOST_PORT_RE.sub("<host>", text)
        return _PATH_RE.sub("<path>", text)

    def opt_text(self, value: str | None) -> str | None:
        """``text`` of an optional value."""
        return None if value is None else self.text(value)

    def tree(self, value: Any) -> Any:
        """A JSON value of metadata (an intent) with every string scrubbed, keys included (free text: its
        characters are kept, line breaks too)."""
        return _walk(value, self._replace)

    def content(self, value: str) -> str:
        """Agent content: known secret values only."""
        return self.secrets.redact(value)

    def content_tree(self, value: Any) -> Any:
        """An event payload: known secret values only, in every string."""
        return self.secrets.redact_tree(value)


GENERIC = Scrubber()


def scrub(text: object) -> str:
    """An upstream message made safe to show or log: the metadata scrub without a runtime's own address,
    length capped."""
    if not isinstance(text, str):
        return ""
    return GENERIC.text(text, limit=MAX_UPSTREAM_MESSAGE)
