"""WebSocket URL patterns of the whole project (each app contributes its own)."""

from __future__ import annotations

from typing import Any

from workers.routing import websocket_urlpatterns as worker_patterns

websocket_urlpatterns: list[Any] = [*worker_patterns]
