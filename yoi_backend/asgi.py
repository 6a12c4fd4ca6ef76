"""ASGI entry point: HTTP through Django (on a pool of request threads, see handler.py), WebSocket through
Channels (the event relay), behind an exact Origin check (yoi_backend/origin.py)."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "yoi_backend.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from yoi_backend.handler import PooledASGIHandler  # noqa: E402

django_asgi_app = PooledASGIHandler(max_threads=settings.YOI_HTTP_THREADS)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from workers.sockets import live_sockets  # noqa: E402
from yoi_backend import lifecycle  # noqa: E402
from yoi_backend.origin import SameOriginValidator  # noqa: E402
from yoi_backend.routing import websocket_urlpatterns  # noqa: E402
from yoi_backend.sockets import SocketObserver  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Outermost: a request id and the socket metrics for every socket, refused ones included.
        "websocket": SocketObserver(SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)

# When the server drains (SIGTERM), every open event socket closes with 1001 "going away".
lifecycle.on_drain(live_sockets.close_all)
