"""The HTTP side of the ASGI application: Django's handler, run the way a WSGI server runs it.

Django's own ``ASGIHandler`` runs the middleware chain in async mode. Our middleware is sync (WhiteNoise
has no async mode; the others are ``MiddlewareMixin``, which hops to a thread for every
``process_request`` / ``process_response``), and so are DRF's views, so a request went back and forth
between the event loop and a thread about a dozen times — on a thread created for that request alone,
which opened a new database connection every time (``CONN_MAX_AGE`` never got to reuse one). That was
most of the proxy's cost (docs/performance.md).

``PooledASGIHandler`` builds the middleware chain in sync mode and runs a whole request — signals,
request parsing, every middleware, the view — with one hand-off to a long-lived thread of a bounded pool,
then sends the response from the event loop. Pool threads keep their database connection between
requests (closed by Django's usual ``close_old_connections`` on ``request_started`` / ``request_finished``).

The pool is sized for blocking upstream calls: every thread may be waiting on a runtime for up to its read
timeout, so a dead runtime can hold threads until its circuit breaker opens (``YOI_HTTP_THREADS``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix


class PooledASGIHandler(ASGIHandler):
    """Django's ASGI handler with a sync middleware chain run on a bounded pool of long-lived threads."""

    def __init__(self, *, max_threads: int) -> None:
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.max_threads = max_threads
        self.executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="django-request")

    def __repr__(self) -> str:
        return f"PooledASGIHandler(max_threads={self.max_threads})"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Kept for what still runs on the loop: a streaming response's sync iterator (static files) is read
        # through sync_to_async, on one thread per request as under Django's own handler.
        async with ThreadSensitiveContext():
            await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self.executor, self._respond, scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                # request_finished (close_old_connections) fires here, on a pool thread like the request.
                await loop.run_in_executor(self.executor, response.close)
        finally:
            body_file.close()

    def _respond(self, scope: dict[str, Any], body_file: Any) -> HttpResponseBase:
        """One whole request on a pool thread: what WSGIHandler.__call__ does, for an ASGI scope."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # create_request returns one of the two
            return error_response
        response = self.get_response(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size  # the ASGI server chunks; read larger blocks
        return response
