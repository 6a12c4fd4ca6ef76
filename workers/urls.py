"""Browser API routes under /api/v1/ (namespace ``workers``), built by a router over plain ViewSets."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from workers.views import ID_LOOKUP_REGEX, RuntimeViewSet, RuntimeWorkerViewSet, WorkerViewSet

app_name = "workers"

router = SimpleRouter()
router.register("runtimes", RuntimeViewSet, basename="runtime")
router.register(
    rf"runtimes/(?P<runtime_id>{ID_LOOKUP_REGEX})/workers", RuntimeWorkerViewSet, basename="runtime-worker"
)
router.register("workers", WorkerViewSet, basename="worker")

urlpatterns = router.urls
