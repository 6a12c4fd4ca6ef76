"""Cluster mode of the relay (``REDIS_URL`` set): one upstream per watched worker across all processes.

The relays of one worker in several Backend processes elect a leader with a lease in Redis: redis-py's
``Lock`` with a timeout, taken without blocking and renewed by the holder (``reacquire``). The leader
alone reads the runtime and publishes every event it accepts — in batches, one channel-layer message per
batch — to the worker's channel-layer group; every other process follows the group and fans out locally.
Followers keep trying to take the lease, so when the leader dies its lease expires and a follower opens
the upstream, resuming after the last seq it has. Events may arrive twice (two leaders for a moment) or
not at all (the channel layer drops under load): the relay's per-browser cursor drops duplicates and
repairs gaps from the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

if TYPE_CHECKING:
    from redis.asyncio.lock import Lock

logger = logging.getLogger(__name__)

LEASE_TTL = 6.0
RENEW_INTERVAL = 2.0
MAX_BATCH = 256
INSTANCE_ID = uuid.uuid4().hex  # this process, as a lease owner and a message origin


class ClusterMember(Protocol):
    """What a cluster link needs of its relay (workers.relay.WorkerRelay)."""

    runtime_id: str
    worker_id: str
    loop: asyncio.AbstractEventLoop

    def open_upstream(self) -> None: ...

    def stop_upstream(self) -> None: ...

    def accept(self, seq: int, frame: str, kind: str) -> None: ...

    def mirror_state(self, frame: str) -> None: ...


def group_name(runtime_id: str, worker_id: str) -> str:
    """The worker's channel-layer group: Channels' alphabet, well under its 100-character limit."""
    digest = hashlib.sha256(f"{runtime_id}\0{worker_id}".encode()).hexdigest()[:40]
    return f"yoi-relay.{digest}"


def cluster_enabled() -> bool:
    """True when several processes may share workers (a Redis channel layer is configured)."""
    return bool(getattr(settings, "REDIS_URL", ""))


class _Redis:
    """One asyncio Redis client per event loop (the lease commands only)."""

    def __init__(self) -> None:
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio  # the optional redis extra: imported only in cluster mode

            self._client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
            self._loop = loop
        return self._client


_redis = _Redis()


class ClusterLink:
    """One relay's membership in the cluster: the lease holder publishes, the others follow."""

    def __init__(self, relay: ClusterMember) -> None:
        self.relay = relay
        self.group = group_name(relay.runtime_id, relay.worker_id)
        self.lease_key = f"yoi:relay:lease:{self.group}"
        self.leader = False
        self._lease: Lock | None = None
        self._layer: Any = get_channel_layer()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"ClusterLink(group={self.group!r}, leader={self.leader})"

    def begin(self) -> None:
        """Join the group and start competing for the lease."""
        loop = self.relay.loop
        self._tasks = [loop.create_task(self._lease_loop()), loop.create_task(self._publish_loop())]

    # -------------------------------------------------------------------------------- lease

    async def _lease_loop(self) -> None:
        channel = await self._layer.new_channel()
        await self._layer.group_add(self.group, channel)
        receiver = asyncio.get_running_loop().create_task(self._receive_loop(channel))
        try:
            while not self._closed:
                try:
                    await self._lease_step()
                except Exception:
                    logger.exception("workers.cluster.lease_error", extra=self._ids())
                await asyncio.sleep(RENEW_INTERVAL)
        finally:
            receiver.cancel()
            with contextlib.suppress(Exception):
                await self._layer.group_discard(self.group, channel)

    def _lock(self) -> Lock:
        if self._lease is None:
            from redis.asyncio.lock import Lock  # the optional redis extra: imported only in cluster mode

            client = _redis.client()
            self._lease = Lock(client, self.lease_key, timeout=LEASE_TTL, blocking=False, thread_local=False)
        return self._lease

    async def _lease_step(self) -> None:
        lease = self._lock()
        if self.leader:
            try:
                await lease.reacquire()  # the TTL starts again
            except Exception:  # redis.exceptions.LockError (lost), or Redis unreachable: not the leader now
                logger.warning("workers.cluster.lease_lost", extra=self._ids())
                self.leader = False
                self.relay.stop_upstream()
            return
        if await lease.acquire(blocking=False, token=INSTANCE_ID):
            logger.info("workers.cluster.lease_taken", extra=self._ids())
            self.leader = True
            self.relay.open_upstream()

    # -------------------------------------------------------------------------------- events

    def publish_event(self, seq: int, frame: str, kind: str) -> None:
        """Hand an accepted event to the followers (leader only)."""
        if self.leader and not self._closed:
            self._outbox.put_nowait({"seq": seq, "frame": frame, "kind": kind})

    def publish_state(self, frame: str) -> None:
        """Hand an upstream transition to the followers (leader only)."""
        if self.leader and not self._closed:
            self._outbox.put_nowait({"state": frame})

    async def _publish_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < MAX_BATCH:
                batch.append(self._outbox.get_nowait())
            try:
                await self._layer.group_send(
                    self.group, {"type": "relay.batch", "origin": INSTANCE_ID, "items": batch}
                )
            except Exception:
                # Followers repair what they miss from the runtime; the leader's own browsers are unaffected.
                logger.exception("workers.cluster.publish_failed", extra=self._ids())

    async def _receive_loop(self, channel: str) -> None:
        while True:
            message = await self._layer.receive(channel)
            if message.get("origin") == INSTANCE_ID or self.leader:
                continue
            for item in message.get("items", []):
                if "state" in item:
                    self.relay.mirror_state(str(item["state"]))
                else:
                    self.relay.accept(int(item["seq"]), str(item["frame"]), str(item["kind"]))

    # -------------------------------------------------------------------------------- end

    def close(self) -> None:
        """Leave the group and give the lease back."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self.leader:
            self.leader = False
            self.relay.loop.create_task(self._release())

    async def _release(self) -> None:
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.release()

    def _ids(self) -> dict[str, str]:
        return {"runtime_id": self.relay.runtime_id, "worker_id": self.relay.worker_id}
