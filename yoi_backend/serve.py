"""``python -m yoi_backend.serve``: the Backend's server entry point — daphne, with a graceful stop.

It takes daphne's own command line (``-b HOST -p PORT [options] yoi_backend.asgi:application``; the
application argument may be left out) and serves the same way, except on SIGTERM or SIGINT: instead of
stopping at once, the process drains (``yoi_backend/lifecycle.py``) — it turns unready, waits
``YOI_DRAIN_DELAY_SECONDS`` so a load balancer stops routing to it, runs the drain hooks (event sockets
close with 1001), then lets in-flight requests finish for at most ``YOI_DRAIN_GRACE_SECONDS`` before it
exits. A second signal stops it at once.
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
from twisted.internet import reactor as _reactor  # isort:skip

from yoi_backend import lifecycle  # isort:skip

# Twisted's reactor is typed by its zope interfaces, which mypy reads as unbound methods.
reactor: Any = _reactor

DEFAULT_APPLICATION = "yoi_backend.asgi:application"
DEFAULT_DRAIN_DELAY = 0.5
DEFAULT_DRAIN_GRACE = 10.0
DRAIN_CHECK_INTERVAL = 0.05
_APPLICATION_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must be >= 0, got {raw!r}")
    return value


class BackendServer(Server):
    """daphne's Server whose stop signals drain the process instead of stopping the reactor at once."""

    def run(self) -> None:
        self.signal_handlers = False  # ours, installed once the reactor runs (below)
        self._stopping_since: float | None = None
        reactor.callWhenRunning(self._install_signal_handlers)
        super().run()

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


def main(argv: list[str] | None = None) -> None:
    """Parse daphne's arguments (adding the Backend's application when none is named) and serve."""
    args: list[Any] = list(sys.argv[1:] if argv is None else argv)
    if not args or not _APPLICATION_RE.fullmatch(str(args[-1])):
        args.append(DEFAULT_APPLICATION)
    BackendCommandLine().run(args)


if __name__ == "__main__":
    main()
