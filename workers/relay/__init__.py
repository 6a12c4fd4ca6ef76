"""The event relay: one backend-owned upstream per watched worker per process, fanned out to browsers.

One event's path, one file per step (docs/architecture.md, "The event path"):

1. ``runtimes/client.py`` — ``LiveEventStream``: the runtime's socket, read on the event loop; the HTTP
   response parsed by httptools, the SSE body decoded as it arrives (``SseDecoder``);
   ``runtimes/handles/remote.py`` turns each message into a ``WorkerEvent`` (``parse_event``).
2. ``workers/relay/upstream.py`` — ``Upstream``: the one connection per worker, its state and backoff.
3. ``workers/relay/replay.py`` — ``ReplayLog``: the event is logged (its frame encoded once), and browsers
   behind the live edge are caught up from it.
4. ``workers/relay/subscriber.py`` — ``Subscriber``: each browser's cursor admits the event.
5. ``workers/transport.py`` — ``DirectWriter``: the frame goes to the browser's socket.

``workers/relay/hub.py`` holds ``WorkerRelay``, the one owner that joins the parts, and ``RelayHub``.
"""

from __future__ import annotations

from workers.relay.hub import RelayHub, WorkerRelay, relay_hub
from workers.relay.subscriber import FrameWriter, Subscriber
from workers.relay.upstream import UpstreamState

__all__ = ["FrameWriter", "RelayHub", "Subscriber", "UpstreamState", "WorkerRelay", "relay_hub"]
