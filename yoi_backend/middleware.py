"""HTTP middleware of the Backend: a request id and metrics for every request, and the operations endpoints.

``RequestObservabilityMiddleware`` comes first in ``MIDDLEWARE``: it binds the request's id (the caller's
``X-Request-ID`` when usable, else a new one) for every log line the request causes, echoes it in the
response, and counts the response in ``yoi_api_requests_total`` / ``yoi_api_request_duration_seconds`` by
route name (the URL pattern's name, never the path). ``OperationsMiddleware`` follows it and answers
``/livez``, ``/healthz``, ``/readyz`` and ``/metrics`` itself, before host validation, sessions and CSRF:
an orchestrator or Prometheus reaches a process by its address, which need not be an allowed host.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from runtimes import metrics
from runtimes.request_context import bind_request_id, request_id_from, unbind_request_id
from yoi_backend import views

REQUEST_ID_HEADER = "X-Request-ID"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
GetResponse = Callable[[HttpRequest], HttpResponseBase]
OPERATIONS_ENDPOINTS: dict[str, tuple[str, Callable[[HttpRequest], HttpResponseBase]]] = {
    "/livez": ("livez", views.livez),
    "/healthz": ("healthz", views.livez),
    "/readyz": ("readyz", views.readyz),
    "/metrics": ("metrics", views.metrics),
}


def route_name(request: HttpRequest) -> str:
    """A bounded name for what the request addressed: the URL pattern's name, ``static`` or ``unmatched``."""
    name: str | None = getattr(request, "yoi_route", None)
    if name:
        return name
    match = request.resolver_match
    if match is not None:
        return match.view_name or "unnamed"
    if request.path_info.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    return "unmatched"


class RequestObservabilityMiddleware:
    """Request id in, request id out, and the request counted."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = request_id  # type: ignore[attr-defined]
        started = time.perf_counter()
        token = bind_request_id(request_id)
        try:
            response = self.get_response(request)
        finally:
            unbind_request_id(token)
        method = request.method if request.method in METHODS else "other"
        metrics.observe_api(
            route_name(request), method or "other", response.status_code, time.perf_counter() - started
        )
        response[REQUEST_ID_HEADER] = request_id
        return response


class OperationsMiddleware:
    """Answers the liveness, readiness and metrics endpoints before the rest of the chain runs."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        endpoint = OPERATIONS_ENDPOINTS.get(request.path_info)
        if endpoint is None:
            return self.get_response(request)
        name, view = endpoint
        request.yoi_route = name  # type: ignore[attr-defined]
        return view(request)
