"""The answer to a login refused for too many failures (django-axes' ``AXES_LOCKOUT_CALLABLE``).

429 with ``Retry-After`` (the seconds left of the cool-off): the §5 envelope ``rate_limited`` for an API
client (a path under /api/, or a client that prefers JSON), else a page that says when to try again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.db.models import Max, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from runtimes.errors import RateLimited
from workers.exceptions import is_api_request, with_request_id

LOCKOUT_MESSAGE = "too many failed logins; retry later"


def _cool_off_left(request: HttpRequest, credentials: dict[str, Any] | None) -> float:
    """Seconds until the most recent counted failure of this username or address leaves the cool-off."""
    cool_off = get_cool_off(request) or timedelta(0)
    since = timezone.now() - cool_off
    match = Q(ip_address=getattr(request, "axes_ip_address", None))
    username = get_client_username(request, credentials)
    if username:
        match |= Q(username=username)
    latest = AccessAttempt.objects.filter(match, attempt_time__gte=since).aggregate(at=Max("attempt_time"))["at"]
    if latest is None:
        return cool_off.total_seconds()
    return (latest + cool_off - timezone.now()).total_seconds()


def prefers_json(request: HttpRequest) -> bool:
    """An API client: a path under /api/, or an Accept header that ranks JSON above HTML."""
    return is_api_request(request) or (
        request.get_preferred_type(["text/html", "application/json"]) == "application/json"
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 ``rate_limited`` with Retry-After: the envelope for API clients, the lockout page for browsers."""
    error = RateLimited(retry_after=_cool_off_left(request, credentials), message=LOCKOUT_MESSAGE)
    response: HttpResponse
    if prefers_json(request):
        response = JsonResponse({"error": with_request_id(error.to_json())}, status=error.http_status)
    else:
        context = {"retry_after": error.retry_after, "login_url": request.path}
        response = render(request, "registration/locked_out.html", context, status=error.http_status)
    for name, value in error.headers().items():
        response[name] = value
    return response
