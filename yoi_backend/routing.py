"""WebSocket URL patterns of the whole project (each app contributes its own), then a catch-all: any other
path is accepted and closed 4404 (or 4400 for malformed event-socket ids) instead of failing in the router."""

from __future__ import annotations

from typing import Any

from django.urls import re_path

from workers.consumers import UnknownPathConsumer
from workers.routing import websocket_urlpatterns as worker_patterns

websocket_urlpatterns: list[Any] = [*worker_patterns, re_path(r"", UnknownPathConsumer.as_asgi())]
