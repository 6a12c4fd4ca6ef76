"""WebSocket URL patterns of the whole project (each app contributes its own)."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
