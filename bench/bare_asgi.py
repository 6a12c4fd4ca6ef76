"""The stack's own fan-out limit: a bare Channels consumer that ``group_send``s frames, with no relay logic.

Served by the same daphne as the Backend (``python -m daphne ... bench.bare_asgi:application``), so that
``bench.fanout`` can compare the relay's delivered frames/s with what Channels + daphne deliver when the
application does nothing but fan out. No auth, no database, no upstream: every client that connects to
``/bare/`` joins one group and gets a ``state`` frame; a client that sends ``{"frames": N, "after": S}``
starts a task that ``group_send``s N event frames (seq S+1 .. S+N, the last one a ``run_end``) one by one
through the in-memory channel layer. Frames have the shape and size of the relay's event frames.

The channel layer's per-channel capacity is raised (the default, 100, would drop frames of a burst):
the baseline is what the stack delivers, not what it throws away.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="bench-bare-asgi-not-a-secret",
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1_000_000}}
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

GROUP = "bench-bare"
STATE_CONNECTED = json.dumps({"type": "state", "upstream": "connected"}, separators=(",", ":"))


def event_text(seq: int, index: int, last: bool) -> str:
    """An event frame shaped like the relay's (``workers.frames.event_frame``)."""
    return json.dumps(
        {
            "type": "event",
            "runtime_id": "bare",
            "worker_id": "bare",
            "seq": seq,
            "event": "run_end" if last else "text_delta",
            "data": {"i": index, "text": "."},
            "ts": time.time(),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


class BareFanoutConsumer(AsyncWebsocketConsumer):
    """Joins the group on connect; relays every group message as one text frame."""

    groups = [GROUP]

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=STATE_CONNECTED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """``{"frames": N, "after": S}`` starts a burst to the whole group."""
        request = json.loads(text_data or "{}")
        count, after = int(request.get("frames", 0)), int(request.get("after", 0))
        self._burst = asyncio.get_running_loop().create_task(self._send_burst(count, after))

    async def _send_burst(self, count: int, after: int) -> None:
        for index in range(count):
            text = event_text(after + index + 1, index, index == count - 1)
            await self.channel_layer.group_send(GROUP, {"type": "bench.frame", "text": text})

    async def bench_frame(self, message: dict[str, Any]) -> None:
        """One group message -> one frame."""
        await self.send(text_data=message["text"])


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every HTTP request with 200 (the readiness check)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"bare"})


application = ProtocolTypeRouter(
    {"http": http_app, "websocket": URLRouter([path("bare/", BareFanoutConsumer.as_asgi())])}
)
