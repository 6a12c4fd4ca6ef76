"""Project-level views that belong to no app: liveness, readiness and the Prometheus endpoint.

They are served by ``yoi_backend.middleware.OperationsMiddleware`` (before host checks and sessions), so
they carry no session, cookie or CSRF token and work for any Host header.
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from runtimes.registry import registry
from workers.exceptions import error_body
from yoi_backend import lifecycle

logger = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})


def _method_not_allowed() -> JsonResponse:
    response = JsonResponse(error_body("method_not_allowed", "method not allowed"), status=405)
    response["Allow"] = "GET, HEAD"
    return response


def livez(request: HttpRequest) -> HttpResponse:
    """200 while the process runs: no dependency is looked at (``/healthz`` is the same)."""
    if request.method not in READ_METHODS:
        return _method_not_allowed()
    return JsonResponse({"status": "ok"})


def _database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        # No traceback or text: a database error may name the server's address.
        logger.warning("yoi_backend.readyz.database_failed", extra={"error_class": type(exc).__name__})
        return False
    return True


def _registry_loads() -> bool:
    try:
        registry.connections()
    except Exception as exc:
        logger.warning("yoi_backend.readyz.registry_failed", extra={"error_class": type(exc).__name__})
        return False
    return True


def readyz(request: HttpRequest) -> HttpResponse:
    """200 when the database answers, the registry has loaded and the process is not draining; else 503
    naming the failing checks."""
    if request.method not in READ_METHODS:
        return _method_not_allowed()
    checks = {
        "draining": not lifecycle.is_draining(),
        "database": _database_answers(),
        "registry": _registry_loads(),
    }
    failing = [name for name, ok in checks.items() if not ok]
    body: dict[str, object] = {
        "status": "unready" if failing else "ready",
        "checks": {name: "ok" if ok else "failing" for name, ok in checks.items()},
    }
    if failing:
        body["failing"] = failing
    response = JsonResponse(body, status=503 if failing else 200)
    # An answer, not an error: an orchestrator polls this every few seconds while the process drains.
    response._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format; 404 unless ``YOI_METRICS_TOKEN`` is set, then 401 without
    ``Authorization: Bearer <it>``."""
    expected = str(getattr(settings, "YOI_METRICS_TOKEN", "") or "")
    if not expected:
        return JsonResponse(error_body("not_found", "not found"), status=404)
    scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    # Compared whatever the scheme, so timing says nothing about which part was wrong.
    matches = hmac.compare_digest(presented.strip().encode("utf-8"), expected.encode("utf-8"))
    if not (matches and scheme.lower() == "bearer"):
        response = JsonResponse(error_body("not_authenticated", "a metrics bearer token is required"), status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    if request.method not in READ_METHODS:
        return _method_not_allowed()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
