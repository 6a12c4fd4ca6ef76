"""The one place that turns errors into the envelope under /api/: the DRF handler and Django's error views.

Every body is ``{"error": {"code", "message", "runtime_id"?, "worker_id"?, "retryable", "fields"?,
"request_id"?}}`` (docs/api.md). Messages are fixed texts; the text of an unexpected exception never
reaches a response. A typed error answered with a 5xx is logged once, at WARNING, with its code.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults as django_defaults
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import set_rollback

from runtimes.errors import PayloadTooLarge, RateLimited, YoiError
from runtimes.request_context import current_request_id
from workers.ids import path_id_errors, raw_request_path

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
INTERNAL_ERROR_MESSAGE = "internal error; the failure has been logged"
CSRF_MESSAGE = "CSRF check failed"
MAX_FIELD_MESSAGE_CHARS = 300


def error_body(
    code: str, message: str, *, retryable: bool = False, fields: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """The envelope for an error that is not a YoiError."""
    error: dict[str, Any] = {"code": code, "message": message, "retryable": retryable}
    if fields:
        error["fields"] = fields
    return {"error": with_request_id(error)}


def with_request_id(error: dict[str, Any]) -> dict[str, Any]:
    """The ``error`` object with the current request's id, so a user's report can be found in the logs."""
    request_id = current_request_id()
    if request_id is not None:
        error["request_id"] = request_id
    return error


def flatten_detail(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested ``detail`` as ``{field: [messages]}``: nested keys dotted, bare lists as non-field errors."""
    key = prefix or api_settings.NON_FIELD_ERRORS_KEY
    if isinstance(detail, dict):
        fields: dict[str, list[str]] = {}
        for name, value in detail.items():
            if prefix or name != api_settings.NON_FIELD_ERRORS_KEY:
                child = f"{prefix}.{name}" if prefix else str(name)
            else:
                child = ""
            for field, messages in flatten_detail(value, child).items():
                fields.setdefault(field, []).extend(messages)
        return fields
    if isinstance(detail, list):
        fields = {}
        for index, item in enumerate(detail):
            nested = flatten_detail(item, f"{prefix}.{index}" if isinstance(item, dict | list) else prefix)
            for field, messages in nested.items():
                fields.setdefault(field, []).extend(messages)
        return fields
    return {key: [str(detail)[:MAX_FIELD_MESSAGE_CHARS]]}


def _drf_error(exc: drf.APIException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, envelope and headers for one of DRF's own exceptions."""
    if isinstance(exc, drf.ValidationError):
        fields = flatten_detail(exc.detail)
        return 400, error_body("invalid_request", "the request is invalid", fields=fields), {}
    if isinstance(exc, drf.ParseError):
        fields = flatten_detail(exc.detail)
        return 400, error_body("invalid_request", "the request body is not valid JSON", fields=fields), {}
    if isinstance(exc, drf.UnsupportedMediaType):
        message = "unsupported media type; send application/json"
        return 415, error_body("unsupported_media_type", message), {}
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        # DRF answers 403 when the first authenticator (session) has no challenge; a browser must see 401.
        challenge = getattr(exc, "auth_header", None) or "Token"
        message = (
            "authentication credentials were not provided"
            if isinstance(exc, drf.NotAuthenticated)
            else "authentication failed"
        )
        return 401, error_body("not_authenticated", message), {"WWW-Authenticate": challenge}
    if isinstance(exc, drf.PermissionDenied):
        # SessionAuthentication reports a CSRF failure as PermissionDenied("CSRF Failed: ...").
        is_csrf = str(exc.detail).startswith("CSRF Failed")
        message = CSRF_MESSAGE if is_csrf else "you do not have permission to perform this action"
        return 403, error_body("permission_denied", message), {}
    if isinstance(exc, drf.NotFound):
        return 404, error_body("not_found", "not found"), {}
    if isinstance(exc, drf.MethodNotAllowed):
        return 405, error_body("method_not_allowed", "method not allowed"), {}
    if isinstance(exc, drf.Throttled):
        limited = RateLimited(retry_after=getattr(exc, "wait", None) or 1.0)
        return 429, {"error": with_request_id(limited.to_json())}, limited.headers()
    status = int(exc.status_code)
    if 400 <= status < 500:
        return status, error_body("invalid_request", str(type(exc).default_detail)), {}
    return status, error_body("internal_error", INTERNAL_ERROR_MESSAGE, retryable=status == 503), {}


def _view_name(context: dict[str, Any]) -> str:
    """``ViewSetClass.action`` for logs; nothing from the request or the exception."""
    view = context.get("view")
    if view is None:
        return "unknown"
    action = getattr(view, "action", None)
    return f"{type(view).__name__}.{action}" if action else type(view).__name__


def _mapped(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """Status, envelope and headers of an expected exception; None for a bug."""
    if isinstance(exc, YoiError):
        return exc.http_status, {"error": with_request_id(exc.to_json())}, exc.headers()
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        # Where Django reads a body itself (DATA_UPLOAD_MAX_MEMORY_SIZE); under daphne serve.py refuses it first.
        return 413, {"error": with_request_id(PayloadTooLarge().to_json())}, {}
    if isinstance(exc, SuspiciousOperation):
        return 400, error_body("invalid_request", "the request is invalid"), {}
    if isinstance(exc, drf.APIException):
        return _drf_error(exc)
    return None


def error_code(exc: Exception) -> str:
    """The envelope code the API answers for ``exc`` (what a refused command's audit row records)."""
    mapped = _mapped(exc)
    return str(mapped[1]["error"]["code"]) if mapped is not None else "internal_error"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF EXCEPTION_HANDLER: every exception raised in an API view becomes an envelope response."""
    mapped = _mapped(exc)
    if mapped is None:
        logger.exception("workers.api.unexpected_error", extra={"view": _view_name(context)})
        set_rollback()
        return Response(error_body("internal_error", INTERNAL_ERROR_MESSAGE), status=500)
    # No rollback for an expected error: a failed or refused command's AuditEvent has already been written.
    status, body, headers = mapped
    response = Response(body, status=status, headers=headers)
    if isinstance(exc, YoiError) and status >= 500:
        # An answer about a runtime, not a crash: one WARNING with its code instead of django.request's ERROR.
        logger.warning(
            "workers.api.runtime_error",
            extra={
                "runtime_id": exc.runtime_id,
                "worker_id": exc.worker_id,
                "code": exc.code,
                "status": status,
                "view": _view_name(context),
            },
        )
        response._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log
    return response


# --- Django-level errors (outside DRF): JSON under /api/, Django's own HTML pages elsewhere -------------------


def is_api_request(request: HttpRequest) -> bool:
    """Whether the request addresses the browser API."""
    return request.path_info.startswith(API_PREFIX)


def _json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _slash_redirect(request: HttpRequest) -> HttpResponse | None:
    """A GET/HEAD to an API route written without its trailing slash is redirected (like APPEND_SLASH)."""
    if request.method not in {"GET", "HEAD"} or request.path_info.endswith("/"):
        return None
    try:
        match = resolve(request.path_info + "/")
    except Resolver404:
        return None
    if match.func is api_not_found:
        return None
    target = quote(request.path + "/", safe="/:@!$&'()*+,;=-._~")
    query = request.META.get("QUERY_STRING", "")
    return HttpResponsePermanentRedirect(f"{target}?{query}" if query else target)


@csrf_exempt  # performs no action; an unknown URL is a 404 whatever the method and cookies
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Catch-all for unknown URLs under /api/ (also with DEBUG on): bad ids are 400, the rest 404."""
    fields = path_id_errors(raw_request_path(request) or request.path)
    if fields:
        return _json_error(400, error_body("invalid_request", "the request is invalid", fields=fields))
    redirect = _slash_redirect(request)
    if redirect is not None:
        return redirect
    return _json_error(404, error_body("not_found", "not found"))


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404."""
    if is_api_request(request):
        return _json_error(404, error_body("not_found", "not found"))
    return django_defaults.page_not_found(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler403."""
    if is_api_request(request):
        message = "you do not have permission to perform this action"
        return _json_error(403, error_body("permission_denied", message))
    return django_defaults.permission_denied(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400 (SuspiciousOperation and friends)."""
    if is_api_request(request):
        return _json_error(400, error_body("invalid_request", "the request is invalid"))
    return django_defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: Django has already logged the exception."""
    if is_api_request(request):
        return _json_error(500, error_body("internal_error", INTERNAL_ERROR_MESSAGE))
    return django_defaults.server_error(request)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW."""
    if is_api_request(request):
        return _json_error(403, error_body("permission_denied", CSRF_MESSAGE))
    return django_csrf_failure(request, reason=reason)
