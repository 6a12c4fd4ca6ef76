"""The WebSocket Origin check: a socket's ``Origin`` must be exactly an origin this site is served on.

Browsers send cookies with a WebSocket handshake from any page, so the Origin header is what stops another
site from opening a socket with a visitor's session. The rule is the one Django's CSRF check applies to a
POST's Origin: allowed are the origin of the request itself — ``http(s)://`` + its ``Host`` header, the
host being one of ``ALLOWED_HOSTS`` (``DJANGO_ALLOWED_HOSTS``) — and the origins listed in
``CSRF_TRUSTED_ORIGINS`` (``DJANGO_CSRF_TRUSTED_ORIGINS``; ``https://*.example.com`` covers subdomains).
Scheme, host and port must all match; a handshake without an Origin is refused too. The scheme is https
when the server says the connection is secure (a ``wss`` scope) or when ``SECURE_PROXY_SSL_HEADER`` names
a header a TLS-terminating proxy set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
# Django's own defaults when DEBUG is on and ALLOWED_HOSTS is empty (HttpRequest.get_host).
DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The one value of a header, or None when it is missing or repeated."""
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if len(values) != 1:
        return None
    try:
        return bytes(values[0]).decode("ascii")
    except UnicodeDecodeError:
        return None


def _is_secure(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") in {"wss", "https"}:
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return False
    meta_name, secure_value = proxy_header
    name = str(meta_name).removeprefix("HTTP_").replace("_", "-").lower().encode("ascii")
    value = _header(scope, name)
    return value is not None and value.split(",", 1)[0].strip() == secure_value


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's Origin is this site's own origin or a trusted one (see the module docstring)."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    domain, _ = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS or (DEBUG_HOSTS if settings.DEBUG else [])
    if domain and validate_host(domain, allowed_hosts):
        scheme = "https" if _is_secure(scope) else "http"
        if origin == f"{scheme}://{host}":
            return True
    trusted = list(settings.CSRF_TRUSTED_ORIGINS)
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    for entry in trusted:
        pattern = urlsplit(entry)
        wildcard = "*" in pattern.netloc and pattern.scheme == parsed.scheme
        if wildcard and is_same_domain(parsed.netloc, pattern.netloc.removeprefix("*")):
            return True
    return False


class SameOriginValidator:
    """ASGI middleware: a WebSocket handshake whose Origin is not allowed is refused (HTTP 403)."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "websocket" and not origin_allowed(scope):
            await WebsocketDenier()(scope, receive, send)
            return
        await self.application(scope, receive, send)
