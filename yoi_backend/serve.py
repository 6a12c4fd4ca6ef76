"""``python -m yoi_backend.serve``: the Backend's server entry point — daphne, with a graceful stop.

It takes daphne's own command line (``-b HOST -p PORT [options] yoi_backend.asgi:application``; the
application argument may be left out) and serves the same way, except on SIGTERM or SIGINT: instead of
stopping at once, the process drains (``yoi_backend/lifecycle.py``) — it turns unready, waits
``YOI_DRAIN_DELAY_SECONDS`` so a load balancer stops routing to it, runs the drain hooks (event sockets
close with 1001), then lets in-flight requests finish for at most ``YOI_DRAIN_GRACE_SECONDS`` before it
exits. A second signal stops it at once.

Request bodies are checked as soon as a request's headers are in, before daphne buffers the body
(``yoi_backend/bodylimits.py``): one over the cap, or one sent without credentials, is answered at once
and never read. The server speaks HTTP/1.1 only (daphne's HTTP/2 needs extras the project does not
install), so every request goes through that check. Before it listens, it collects static files when
``DJANGO_DEBUG=0`` and they are missing or out of date (``yoi_backend/static_collect.py``). While it
serves, a background thread re-probes runtimes whose circuit breaker has half-opened
(``runtimes.health.HealthMonitor``).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Any

# daphne.server installs the asyncio Twisted reactor on import: it must come before anything imports Twisted.
from daphne.server import Server  # isort:skip
from daphne.cli import CommandLineInterface  # isort:skip
from daphne.http_protocol import HTTPFactory, WebRequest  # isort:skip
from twisted.internet import reactor as _reactor  # isort:skip
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder  # isort:skip

from yoi_backend.bodylimits import BodyPolicy, Refusal, has_session_cookie, payload_too_large, request_path  # isort:skip

from yoi_backend import lifecycle  # isort:skip

# Twisted's reactor is typed by its zope interfaces, which mypy reads as unbound methods.
reactor: Any = _reactor

DEFAULT_APPLICATION = "yoi_backend.asgi:application"
DEFAULT_DRAIN_DELAY = 0.5
DEFAULT_DRAIN_GRACE = 10.0
DRAIN_CHECK_INTERVAL = 0.05
_APPLICATION_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# After refusing a body the server still reads (and drops) what the client sends for this long, so that a
# client busy sending its body gets to read the answer instead of a reset; then the connection is closed.
REFUSAL_LINGER_SECONDS = 5.0


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must be >= 0, got {raw!r}")
    return value


class BodyLimitedRequest(WebRequest):
    """daphne's request, counting the body as it arrives: past its cap the channel refuses it."""

    body_cap = 0
    body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.refused:
            return
        self.body_received += len(data)
        if self.body_received > self.body_cap:
            channel.refuse(payload_too_large(request_path(channel._path)))  # self.uri is set only at the end
            return
        super().handleContentChunk(data)


class BodyLimitedChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel asking BodyPolicy about each request once its headers are in."""

    refused = False
    _policy: BodyPolicy | None = None
    _linger: Any = None

    @classmethod
    def policy(cls) -> BodyPolicy:
        """The caps, read from settings at the first request (the application is loaded by then)."""
        if BodyLimitedChannel._policy is None:
            BodyLimitedChannel._policy = BodyPolicy.from_settings()
        return BodyLimitedChannel._policy

    def allHeadersReceived(self) -> None:
        request: BodyLimitedRequest = self.requests[-1]
        headers = request.requestHeaders
        policy = self.policy()
        credentials = headers.hasHeader(b"authorization") or has_session_cookie(
            headers.getRawHeaders(b"cookie", []), policy.session_cookie
        )
        refusal, cap = policy.check_headers(
            target=self._path,
            length=self.length,
            chunked=isinstance(self._transferDecoder, _ChunkedTransferDecoder),
            credentials=credentials,
        )
        if refusal is not None:
            self.refuse(refusal)  # before "100 Continue": a client that waits for it never sends the body
            return
        request.body_cap = cap
        super().allHeadersReceived()

    def refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` now, read no more of the request, and close once the client is done."""
        if self.refused:
            return
        self.refused = True
        self.length = None  # not 0: the line parser must not take the request as complete
        self._transferDecoder = None
        request = self.requests[-1]  # the refused one (Twisted parses one request at a time)
        if request.content is not None:  # what a chunked body buffered so far goes now, not at close
            request.content.close()
        self.setTimeout(None)
        # Twisted's interfaces are zope interfaces, which mypy reads as unbound methods.
        transport: Any = self.transport
        transport.write(refusal.to_bytes())
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:  # TLS: no half-close, so close once the answer is written
            transport.loseConnection()
            return
        half_close()
        self._linger = reactor.callLater(REFUSAL_LINGER_SECONDS, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return  # the refused body, dropped as it arrives: never buffered
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self.refused:
            super().allContentReceived()

    def connectionLost(self, reason: Any = None) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


class BodyLimitedHTTPFactory(HTTPFactory):
    """daphne's HTTP factory building BodyLimitedChannel / BodyLimitedRequest (HTTP/1.1 only)."""

    def protocol(self) -> BodyLimitedChannel:
        return BodyLimitedChannel()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BodyLimitedRequest
        return protocol

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


class BackendServer(Server):
    """daphne's Server whose stop signals drain the process instead of stopping the reactor at once."""

    def run(self) -> None:
        self.signal_handlers = False  # ours, installed once the reactor runs (below)
        self._stopping_since: float | None = None
        reactor.callWhenRunning(self._install_signal_handlers)
        reactor.callWhenRunning(self._start_health_monitor)
        super().run()

    @property
    def http_factory(self) -> BodyLimitedHTTPFactory:
        """The factory of every HTTP connection (daphne's ``run`` assigns its own: this takes its place)."""
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        self._http_factory = BodyLimitedHTTPFactory(factory.server)

    def _start_health_monitor(self) -> None:
        """The background re-probe of runtimes (runtimes/health.py); it stops when the process drains."""
        from runtimes.health import start_health_monitor
        from yoi_backend import lifecycle

        monitor = start_health_monitor()
        if monitor is not None:
            lifecycle.on_drain(lambda: monitor.stop(timeout=0))

    def _install_signal_handlers(self) -> None:
        loop = reactor._asyncioEventloop
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.graceful_stop)

    def graceful_stop(self) -> None:
        """First signal: drain, then stop. Second signal: stop now."""
        if self._stopping_since is not None:
            self.stop()
            return
        self._stopping_since = time.monotonic()
        lifecycle.begin_drain()
        reactor.callLater(_seconds("YOI_DRAIN_DELAY_SECONDS", DEFAULT_DRAIN_DELAY), self._close_connections)

    def _close_connections(self) -> None:
        lifecycle.run_drain_hooks()
        self._grace_deadline = time.monotonic() + _seconds("YOI_DRAIN_GRACE_SECONDS", DEFAULT_DRAIN_GRACE)
        self._stop_when_idle()

    def _stop_when_idle(self) -> None:
        busy = any(
            (details.get("application_instance") is not None and not details["application_instance"].done())
            for details in self.connections.values()
        )
        if not busy or time.monotonic() >= self._grace_deadline:
            self.stop()
            return
        reactor.callLater(DRAIN_CHECK_INTERVAL, self._stop_when_idle)


class BackendCommandLine(CommandLineInterface):
    """daphne's command line serving ``BackendServer``; the application defaults to the Backend's."""

    server_class = BackendServer


def prepare() -> None:
    """Before listening: set Django up and, in production, collect static files if they are not current."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "yoi_backend.settings")
    django.setup(set_prefix=False)
    from yoi_backend.static_collect import ensure_collected

    ensure_collected()


def main(argv: list[str] | None = None) -> None:
    """Parse daphne's arguments (adding the Backend's application when none is named) and serve."""
    args: list[Any] = list(sys.argv[1:] if argv is None else argv)
    if not args or not _APPLICATION_RE.fullmatch(str(args[-1])):
        args.append(DEFAULT_APPLICATION)
    prepare()
    BackendCommandLine().run(args)


if __name__ == "__main__":
    main()
