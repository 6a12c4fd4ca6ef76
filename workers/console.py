"""The browser console at ``/``: one Django page whose script drives the browser API and the event socket.

The page itself carries no runtime data: everything comes from ``/api/v1/`` and ``/ws/`` at run time, so a
runtime's address or token cannot reach it. Its own files are served from this project (no CDN), which
the Content-Security-Policy below enforces in the browser.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

# Only this origin: scripts, styles, fetch and the event WebSocket ('self' covers ws:/wss: of this host).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

ViewFunction = Callable[..., HttpResponseBase]


def console_headers(view: ViewFunction) -> ViewFunction:
    """Add the console's Content-Security-Policy to what ``view`` answers."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapped


@console_headers
@login_required
@ensure_csrf_cookie
def console(request: HttpRequest) -> HttpResponse:
    """The console page (login required); the script reads the CSRF token from the ``csrftoken`` cookie."""
    context = {
        "runtimes_url": reverse("workers:runtime-list"),
        "login_url": settings.LOGIN_URL,
    }
    return render(request, "workers/console.html", context)


#: ``/login/``: Django's LoginView with the console's look (an authenticated visitor goes straight on).
console_login = console_headers(
    auth_views.LoginView.as_view(template_name="registration/login.html", redirect_authenticated_user=True)
)

#: ``/logout/`` (POST only, as Django's LogoutView is): back to the login page.
console_logout = console_headers(auth_views.LogoutView.as_view(next_page="login"))
