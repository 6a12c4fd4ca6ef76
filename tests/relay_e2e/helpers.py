"""What the relay end-to-end tests share: burst workers, the runtime's own record of events, upstream counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from tests.relay_e2e.ws_client import WsClient
from tests.runtime_process import RuntimeProcess, open_events, runtime_summary

CONNECTED_TIMEOUT = 20.0


def burst(count: int, rate: float) -> dict[str, Any]:
    """The Backend's create body of a burst worker: ``count`` events per input at ``rate`` events/s."""
    return {"profile": "builtin:burst", "options": {"count": count, "rate": rate}}


def durable_events(rt: RuntimeProcess, worker_id: str, *, after: int, last: int) -> list[tuple[int, str, Any]]:
    """``(seq, event, data)`` of ``after+1 .. last`` read straight from the runtime (its durable log)."""
    reader = open_events(rt, worker_id, after=after, read_timeout=15)
    try:
        frames = reader.events(count=last - after, timeout=60)
    finally:
        reader.close()
    events = [(frame.seq, str(frame.event), frame.json()["data"]) for frame in frames]
    assert [seq for seq, _, _ in events] == list(range(after + 1, last + 1)), "the runtime's own log has a gap"
    return events


def relayed(client: WsClient) -> list[tuple[int, str, Any]]:
    """``(seq, event, data)`` of every event frame a browser got."""
    return [(int(f["seq"]), str(f["event"]), f["data"]) for f in client.events()]


def streams_open(rt: RuntimeProcess) -> int:
    """How many SSE streams the runtime is serving right now (its upstream count)."""
    return int(runtime_summary(rt)["event_streams_open"])


async def wait_streams_open(
    rt: RuntimeProcess, predicate: Callable[[int], bool], *, timeout: float, what: str
) -> int:
    """Poll the runtime's summary (off the event loop) until ``predicate(event_streams_open)`` holds."""
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(streams_open, rt)
        if predicate(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"event_streams_open: {what} not reached within {timeout}s (last {value})")


def upstream_is(state: str) -> Callable[[WsClient], bool]:
    """A ``wait_for`` predicate: the client got a ``state`` frame saying ``upstream == state``."""
    return lambda client: any(f.get("upstream") == state for f in client.of_type("state"))


async def wait_all(
    clients: Sequence[WsClient], predicate: Callable[[WsClient], bool], *, timeout: float, what: str
) -> None:
    """Wait until ``predicate`` holds for every client (concurrently, one deadline)."""
    await asyncio.gather(*(client.wait_for(predicate, timeout=timeout, what=what) for client in clients))


class StreamSampler:
    """Samples the runtime's ``event_streams_open`` in the background while a test watches a stream."""

    def __init__(self, rt: RuntimeProcess) -> None:
        self.rt = rt
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> StreamSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self.samples.append(await asyncio.to_thread(streams_open, self.rt))
            await asyncio.sleep(0.05)
