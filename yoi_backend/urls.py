"""Root URLconf: admin, health, the browser API; errors under /api/ answer the JSON envelope (DESIGN §5)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path

from workers.exceptions import api_not_found
from yoi_backend.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", include("workers.urls")),
    # Last: any other /api/ URL gets the JSON 404 envelope, with DEBUG on too.
    re_path(r"^api/", api_not_found, name="api-not-found"),
]

handler400 = "workers.exceptions.bad_request"
handler403 = "workers.exceptions.permission_denied"
handler404 = "workers.exceptions.page_not_found"
handler500 = "workers.exceptions.server_error"
