"""WebSocket routes of the workers app."""

from __future__ import annotations

from django.urls import re_path

from workers.consumers import WorkerEventsConsumer

# Ids are matched loosely here (even empty) so that a bad id reaches the consumer and gets a typed error frame.
websocket_urlpatterns = [
    re_path(
        r"^ws/runtimes/(?P<runtime_id>[^/]*)/workers/(?P<worker_id>[^/]*)/events/$",
        WorkerEventsConsumer.as_asgi(),
    ),
]
