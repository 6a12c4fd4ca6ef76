"""The open event sockets of this process: the per-user cap, policy checks for their whole life, shutdown.

Every accepted event socket is admitted here (``LiveSockets.admit``) and released when it ends. While open
it is checked again (``workers.policy.socket_verdicts``), and closed with an error frame when its access no
longer holds:

* at once when a change is announced on the channel layer (``announce``, called by workers.signals after a
  commit: logout, a user or group saved, a runtime saved or deleted) — the socket's consumer asks for a
  check (``check_soon``) and the checks of one moment run together, in one thread hop;
* within about a second of this process's registry seeing a runtime's ``enabled`` flag or groups change,
  however the row was changed (``sync_runtimes`` in another process, a shell);
* every ``YOI_SOCKET_REVALIDATE_SECONDS`` for everything else (a session expiring, a user edited in a shell
  of another process without a shared channel layer).

The cap (``YOI_MAX_SOCKETS_PER_USER``) counts this process's sockets, or, with ``REDIS_URL``, every process's
sockets in one Redis sorted set per user whose entries expire unless the owning process refreshes them.
On shutdown the drain hook ``close_all`` closes every socket with 1001 and later ones are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from runtimes.errors import YoiError
from workers.policy import SocketAccess, runtime_policy_rows, socket_verdicts

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
# How often the registry is looked at for runtime changes (it re-reads rows at most every
# YOI_REGISTRY_REFRESH_SECONDS, so a change is seen within that plus this).
REGISTRY_POLL_SECONDS = 1.0
# Checks asked for within this long of each other run together.
CHECK_COALESCE_SECONDS = 0.05
CHANNEL_LAYER_TIMEOUT = 5.0
REDIS_TIMEOUT = 2.0
SOCKET_KEY_PREFIX = "yoi:sockets:user:"
# A process refreshes its entries at every revalidation; an entry it stops refreshing (the process died)
# expires after this many revalidation intervals, and at the least after SHARED_ENTRY_MIN_TTL seconds.
SHARED_ENTRY_INTERVALS = 3
SHARED_ENTRY_MIN_TTL = 60.0

_verdicts = database_sync_to_async(socket_verdicts, thread_sensitive=False)
_runtime_rows = database_sync_to_async(runtime_policy_rows, thread_sensitive=False)


class LiveSocket(Protocol):
    """What this module needs of an event socket (workers.consumers.WorkerEventsConsumer)."""

    async def end(self, error: YoiError | None, *, code: int | None = None) -> None: ...


# Admit one socket when the user has fewer than the cap (ARGV: now, expiry, member, cap, ttl in ms).
_ADMIT = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[4])
if cap > 0 and redis.call('zcard', KEYS[1]) >= cap then return 0 end
redis.call('zadd', KEYS[1], ARGV[2], ARGV[3])
redis.call('pexpire', KEYS[1], ARGV[5])
return 1
"""


class SharedSocketCount:
    """Every process's open sockets per user, in Redis: one sorted set per user, a member per socket scored
    with the time it expires unless its process refreshes it (a process that died leaves nothing behind)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return "SharedSocketCount(redis=<backend-private>)"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.from_url(
                self._url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            self._clients[loop] = client
        return client

    @staticmethod
    def _ttl() -> float:
        return max(SHARED_ENTRY_MIN_TTL, SHARED_ENTRY_INTERVALS * float(settings.YOI_SOCKET_REVALIDATE_SECONDS))

    async def admit(self, access: SocketAccess, cap: int) -> bool:
        """Count this socket in unless the user already has ``cap`` open in all processes."""
        now, ttl = time.time(), self._ttl()
        admitted = await self._client().eval(
            _ADMIT,
            1,
            f"{SOCKET_KEY_PREFIX}{access.user_id}",
            now,
            now + ttl,
            access.socket_id,
            cap,
            int(ttl * 1000),
        )
        return bool(admitted)

    async def release(self, access: SocketAccess) -> None:
        """Count this socket out."""
        await self._client().zrem(f"{SOCKET_KEY_PREFIX}{access.user_id}", access.socket_id)

    async def refresh(self, accesses: Iterable[SocketAccess]) -> None:
        """Keep this process's sockets counted for another TTL."""
        expiry, ttl_ms = time.time() + self._ttl(), int(self._ttl() * 1000)
        pipe = self._client().pipeline(transaction=False)
        for access in accesses:
            key = f"{SOCKET_KEY_PREFIX}{access.user_id}"
            pipe.zadd(key, {access.socket_id: expiry}, xx=True)
            pipe.pexpire(key, ttl_ms)
        await pipe.execute()


class LiveSockets:
    """This process's open event sockets (see the module docstring); bound to the event loop they run on."""

    def __init__(self) -> None:
        self._sockets: dict[LiveSocket, SocketAccess] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pending: set[LiveSocket] = set()
        self._checking: asyncio.Task[None] | None = None
        self._runtime_rows: dict[str, tuple[bool, frozenset[int]]] | None = None
        self._shared: SharedSocketCount | None = None
        self._shared_url = ""
        self.draining = False
        self.checked = 0  # sockets checked so far (diagnostics, tests)

    def __repr__(self) -> str:
        return f"LiveSockets(open={len(self._sockets)}, draining={self.draining})"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the sockets live on, while it runs."""
        loop = self._loop
        return loop if loop is not None and loop.is_running() else None

    def count(self, user_id: int | None = None) -> int:
        """Open sockets in this process (of one user)."""
        if user_id is None:
            return len(self._sockets)
        return sum(1 for access in self._sockets.values() if access.user_id == user_id)

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Sockets of another (finished) loop cannot be reached any more: start afresh on this one.
            self._sockets.clear()
            self._pending.clear()
            self._checking = None
            self._runtime_rows = None
            self._loop = loop
            self._watcher = loop.create_task(self._watch())
        url = str(getattr(settings, "REDIS_URL", "") or "")
        if url != self._shared_url:
            self._shared_url = url
            self._shared = SharedSocketCount(url) if url else None

    # ------------------------------------------------------------------------------------ admission

    async def admit(self, socket: LiveSocket, access: SocketAccess) -> bool:
        """Register an accepted socket, unless its user is at ``YOI_MAX_SOCKETS_PER_USER`` (0 = no cap)."""
        self._bind()
        cap = int(settings.YOI_MAX_SOCKETS_PER_USER)
        if cap and not await self._admit_counted(access, cap):
            logger.info(
                "workers.sockets.cap_reached",
                extra={"runtime_id": access.runtime_id, "user_id": access.user_id, "cap": cap},
            )
            return False
        self._sockets[socket] = access
        return True

    async def _admit_counted(self, access: SocketAccess, cap: int) -> bool:
        if self._shared is not None:
            try:
                return await asyncio.wait_for(self._shared.admit(access, cap), REDIS_TIMEOUT)
            except Exception as exc:
                # Redis is away: count this process's sockets rather than refuse or admit everyone.
                _log_unavailable(exc)
        return self.count(access.user_id) < cap

    async def release(self, socket: LiveSocket) -> None:
        """Forget a socket that ended."""
        access = self._sockets.pop(socket, None)
        self._pending.discard(socket)
        if access is not None and self._shared is not None and settings.YOI_MAX_SOCKETS_PER_USER:
            try:
                await asyncio.wait_for(self._shared.release(access), REDIS_TIMEOUT)
            except Exception as exc:
                # Its entry expires by itself once no process refreshes it.
                _log_unavailable(exc)

    # ------------------------------------------------------------------------------------ checks

    def check_soon(self, socket: LiveSocket) -> None:
        """Check this socket's access again, from fresh rows, together with the others asked for now."""
        if socket not in self._sockets:
            return
        self._pending.add(socket)
        if self._checking is None:
            self._checking = asyncio.get_running_loop().create_task(self._check_pending())

    async def _check_pending(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(CHECK_COALESCE_SECONDS)  # let the rest of one announcement arrive
                batch, self._pending = self._pending, set()
                await self.check(batch, fresh=True)
        finally:
            self._checking = None

    async def check(self, sockets: Collection[LiveSocket], *, fresh: bool) -> int:
        """Check these sockets' access now and end those whose access no longer holds; how many ended."""
        accesses = {socket: self._sockets[socket] for socket in sockets if socket in self._sockets}
        if not accesses:
            return 0
        verdicts = await _verdicts(accesses=set(accesses.values()), fresh=fresh)
        self.checked += len(accesses)
        ended = 0
        for socket, access in accesses.items():
            error = verdicts.get(access)
            if error is None or socket not in self._sockets:
                continue
            logger.info(
                "workers.sockets.policy_close",
                extra={"runtime_id": access.runtime_id, "user_id": access.user_id, "code": error.code},
            )
            await socket.end(error)
            ended += 1
        return ended

    async def _watch(self) -> None:
        """The process's watch over its sockets: the registry every second, everything at every interval."""
        loop = asyncio.get_running_loop()
        next_full = loop.time() + float(settings.YOI_SOCKET_REVALIDATE_SECONDS)
        while self._loop is loop:
            await asyncio.sleep(REGISTRY_POLL_SECONDS)
            if not self._sockets:
                next_full = loop.time() + float(settings.YOI_SOCKET_REVALIDATE_SECONDS)
                continue
            try:
                await self._check_runtime_changes()
                if loop.time() >= next_full:
                    next_full = loop.time() + float(settings.YOI_SOCKET_REVALIDATE_SECONDS)
                    await self.check(list(self._sockets), fresh=False)
                    await self._refresh_shared_count()
            except Exception:
                # The database or Redis is away: the sockets stay as they are until the next look.
                logger.exception("workers.sockets.check_failed")

    async def _check_runtime_changes(self) -> None:
        rows = await _runtime_rows()
        before, self._runtime_rows = self._runtime_rows, rows
        if before is None:
            # The first look: whatever changed since these sockets' lookups is only in the rows themselves.
            changed = {access.runtime_id for access in self._sockets.values()}
        else:
            changed = {rid for rid, row in before.items() if rows.get(rid) != row}
        if changed:
            affected = [socket for socket, access in self._sockets.items() if access.runtime_id in changed]
            await self.check(affected, fresh=False)

    async def _refresh_shared_count(self) -> None:
        if self._shared is not None and settings.YOI_MAX_SOCKETS_PER_USER and self._sockets:
            await asyncio.wait_for(self._shared.refresh(list(self._sockets.values())), REDIS_TIMEOUT)

    # ------------------------------------------------------------------------------------ shutdown

    def close_all(self) -> None:
        """The drain hook: close every socket with 1001 (going away); sockets opened later close at once."""
        self.draining = True
        loop = self.loop
        if loop is None:
            return
        sockets = list(self._sockets)
        logger.info("workers.sockets.closing_all", extra={"count": len(sockets)})

        def close() -> None:
            for socket in sockets:
                loop.create_task(socket.end(None, code=GOING_AWAY))

        _on_loop(loop, close)

    def reset(self) -> None:
        """Forget every socket and stop watching (tests)."""
        if self._watcher is not None and self._loop is not None and not self._loop.is_closed():
            _on_loop(self._loop, self._watcher.cancel)
        self._sockets.clear()
        self._pending.clear()
        self._watcher = self._checking = None
        self._loop = None
        self._runtime_rows = None
        self.draining = False


def _log_unavailable(exc: Exception) -> None:
    logger.warning("workers.sockets.shared_count_unavailable", extra={"error_class": type(exc).__name__})


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Run ``callback`` on ``loop``: now when called from it, else as soon as it can."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback()
    else:
        loop.call_soon_threadsafe(callback)


live_sockets = LiveSockets()


# ------------------------------------------------------------------------------------------- announcements


async def _group_send_all(groups: Sequence[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await asyncio.wait_for(
            asyncio.gather(*(layer.group_send(group, message) for group in groups)), CHANNEL_LAYER_TIMEOUT
        )
    except Exception as exc:
        # The periodic revalidation still finds the change; only the promptness is lost.
        extra = {"type": message.get("type"), "error_class": type(exc).__name__}
        logger.warning("workers.sockets.announce_failed", extra=extra)


def announce(groups: Sequence[str], message: dict[str, Any]) -> None:
    """Send a policy message to the sockets in ``groups``, in every process the channel layer reaches.

    Callable from any thread. In a process with open sockets it is sent from their event loop (the
    in-memory channel layer may only be used from there); elsewhere (``manage.py``, a shell) it is sent
    from this thread, which reaches other processes only over a shared (Redis) channel layer.
    """
    if not groups:
        return
    loop = live_sockets.loop
    if loop is not None:
        future = asyncio.run_coroutine_threadsafe(_group_send_all(groups, message), loop)
        future.add_done_callback(_log_unexpected)
        return
    if isinstance(get_channel_layer(), InMemoryChannelLayer | None):
        return  # no socket of this process, and no other process to reach
    try:
        asyncio.get_running_loop().create_task(_group_send_all(groups, message))
    except RuntimeError:  # no event loop in this thread: the usual case
        async_to_sync(_group_send_all)(groups, message)


def _log_unexpected(future: Any) -> None:
    with contextlib.suppress(Exception):
        if future.exception() is not None:
            logger.warning(
                "workers.sockets.announce_failed", extra={"error_class": type(future.exception()).__name__}
            )
