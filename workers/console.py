"""The browser console at ``/``: one Django page whose script drives the browser API and the event socket.

The page itself carries no runtime data: everything comes from ``/api/v1/`` and ``/ws/`` at run time, so a
runtime's address or token cannot reach it. Its own files are served from this project (no CDN), which
the Content-Security-Policy of every page (yoi_backend/security.py) enforces in the browser.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie


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
console_login = auth_views.LoginView.as_view(
    template_name="registration/login.html", redirect_authenticated_user=True
)

#: ``/logout/`` (POST only, as Django's LogoutView is): back to the login page.
console_logout = auth_views.LogoutView.as_view(next_page="login")
