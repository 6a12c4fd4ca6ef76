"""The process's lifecycle as the rest of the Backend sees it: serving, then draining before it stops.

The server entry point (``yoi_backend/serve.py``) calls ``begin_drain()`` when it is told to stop
(SIGTERM, Ctrl-C): from then on ``is_draining()`` is true (a readiness check answers 503, so a load
balancer stops routing here), and after a short delay the entry point calls ``run_drain_hooks()``, where
whatever holds long-lived connections ends them cleanly (event sockets close with 1001). In-flight HTTP
requests then get a bounded grace before the process exits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

DrainHook = Callable[[], object]

_draining = threading.Event()
_hooks: list[DrainHook] = []
_lock = threading.Lock()


def is_draining() -> bool:
    """True once the process has been told to stop."""
    return _draining.is_set()


def begin_drain() -> None:
    """Mark the process as draining (idempotent)."""
    if not _draining.is_set():
        _draining.set()
        logger.info("yoi_backend.lifecycle.draining")


def on_drain(hook: DrainHook) -> DrainHook:
    """Register ``hook`` to run (on the server's event loop thread) when connections should end; usable as
    a decorator. Registering the same hook twice runs it once."""
    with _lock:
        if hook not in _hooks:
            _hooks.append(hook)
    return hook


def run_drain_hooks() -> None:
    """Run every drain hook once, in registration order; a failing hook is logged and the rest still run."""
    with _lock:
        hooks = list(_hooks)
    for hook in hooks:
        try:
            hook()
        except Exception:
            name = getattr(hook, "__qualname__", type(hook).__name__)
            logger.exception("yoi_backend.lifecycle.drain_hook_failed", extra={"hook": name})


def reset() -> None:
    """Back to serving, hooks kept (tests)."""
    _draining.clear()
