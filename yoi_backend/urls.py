"""Root URLconf: the console, login, admin, the browser API and its schema.

Errors under /api/ answer the JSON envelope (docs/api.md). ``/livez``, ``/healthz``, ``/readyz`` and
``/metrics`` are answered by ``yoi_backend.middleware.OperationsMiddleware`` before URL routing.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from workers.console import console, console_login, console_logout
from workers.exceptions import api_not_found

urlpatterns = [
    path("", console, name="console"),
    path("login/", console_login, name="login"),
    path("logout/", console_logout, name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("workers.urls")),
    # OpenAPI schema (authenticated, like the API: 401 envelope otherwise) and Swagger UI from local static
    # files (a browser page: anonymous visitors are sent to the login page). The split view serves its
    # script as a file (?script=), so the page runs under the same CSP as every other page.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        login_required(
            SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="workers/api_docs.html")
        ),
        name="swagger-ui",
    ),
    # Last: any other /api/ URL gets the JSON 404 envelope, with DEBUG on too.
    re_path(r"^api/", api_not_found, name="api-not-found"),
]

handler400 = "workers.exceptions.bad_request"
handler403 = "workers.exceptions.permission_denied"
handler404 = "workers.exceptions.page_not_found"
handler500 = "workers.exceptions.server_error"
