"""Ids and cursors as browsers send them: in paths, raw paths and query strings, checked before any call.

The one place the Backend's browser-facing surfaces (views, the error handler, the event socket, the
``watch_worker`` command) read a ``runtime_id``, a ``worker_id`` or an ``after`` cursor from what a client
sent. The alphabet itself is the runtime protocol's (``runtimes.types.is_valid_id``).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

from django.http import HttpRequest

from runtimes.errors import InvalidRequest
from runtimes.types import MAX_JSON_SAFE_INT, is_valid_id

ID_MESSAGE = "must be 1-120 characters of A-Z a-z 0-9 _ : -"
AFTER_MESSAGE = "must be an integer >= 0"


def id_errors(*, runtime_id: str | None = None, worker_id: str | None = None) -> dict[str, list[str]]:
    """``{field: [message]}`` for each given id that is not of the id alphabet."""
    given = {"runtime_id": runtime_id, "worker_id": worker_id}
    return {name: [ID_MESSAGE] for name, value in given.items() if value is not None and not is_valid_id(value)}


def raw_request_path(request: HttpRequest) -> str | None:
    """The path as the client sent it (still percent-encoded), when the server tells us (ASGI raw_path)."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("raw_path"), bytes):
        return scope["raw_path"].decode("latin-1")
    for key in ("RAW_URI", "REQUEST_URI"):
        value = request.META.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def path_id_errors(path: str) -> dict[str, list[str]]:
    """Check the id segments of ``/api/v1/runtimes/<runtime_id>/workers/<worker_id>/…`` in a path.

    On a raw path this catches ids that decoding would split (``a%2Fb``), which no route can see whole.
    """
    parts = path.split("?", 1)[0].split("/")
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == ["api", "v1", "runtimes"]:
            ids = parts[index + 3 :]
            break
    else:
        return {}

    def segment(position: int) -> str | None:
        # An empty last segment is the trailing slash of a list route, not an empty id.
        if position >= len(ids) or (position == len(ids) - 1 and ids[position] == ""):
            return None
        return unquote(ids[position], errors="replace")

    runtime_id = segment(0)
    worker_id = segment(2) if len(ids) > 1 and ids[1] == "workers" else None
    return id_errors(runtime_id=runtime_id, worker_id=worker_id)


def parse_after(query_string: bytes) -> int | None:
    """The ``after`` cursor of a query string (absent = live only); InvalidRequest when malformed."""
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return None
    raw = values[-1]
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_JSON_SAFE_INT:
        raise InvalidRequest(fields={"after": [AFTER_MESSAGE]})
    return int(raw)
