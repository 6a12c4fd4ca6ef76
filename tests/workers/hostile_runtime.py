"""A misbehaving runtime for tests: protocol v1 on 127.0.0.1 whose every string field carries poison.

The poison is the runtime's own URL, its host:port (plain and percent-encoded) and host, a filesystem path,
a Python traceback, the Backend's token for it, another runtime's token and ``DJANGO_SECRET_KEY``. It
answers every route of the protocol with success bodies, error bodies (404, 409, 422, 500) and an SSE
stream whose events (and reset) are poisoned the same way.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

RID = "rt-hostile"
WID = "w-h"
LEAK_PATH = "/srv/hostile-runtime/state/leak.json"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/hostile-runtime/app.py", line 10, in handle\n'
    "ValueError: boom at hostile-internal.example:8443"
)


@dataclass(frozen=True)
class Poison:
    """What the runtime puts everywhere, and what must not come out (``forbidden`` / ``secrets``)."""

    base_url: str
    token: str
    other_token: str
    secret_key: str

    @property
    def host_port(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/hostile-leak"

    def text(self, label: str) -> str:
        """One poisoned string (``label`` says which field it is, to find it in a failure)."""
        encoded = quote(self.host_port, safe="")
        return (
            f"{label}: see {self.url} or {self.host_port} ({encoded}) on host {urlsplit(self.base_url).hostname} "
            f"in {LEAK_PATH} token {self.token} other {self.other_token} key {self.secret_key}\n{TRACEBACK}"
        )

    def secrets(self) -> list[str]:
        """Values that may appear nowhere, agent content included."""
        return [self.token, self.other_token, self.secret_key]

    def forbidden(self) -> list[str]:
        """Values that may appear nowhere outside agent content."""
        return [
            *self.secrets(),
            self.url,
            self.host_port,
            quote(self.host_port, safe=""),
            LEAK_PATH,
            "Traceback (most recent call last)",
            'File "/srv/hostile-runtime/app.py", line 10',
            "hostile-internal.example:8443",
        ]


class HostileRuntime:
    """The server: ``start()`` on a free port, ``stop()`` at the end; counts the requests it answered."""

    def __init__(self, *, token: str, other_token: str, secret_key: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.poison = Poison(self.base_url, token, other_token, secret_key)
        self._server.hostile = self  # type: ignore[attr-defined]
        self.requests: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HostileRuntime:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------------------------------------ bodies

    def worker(self, worker_id: str = WID) -> dict[str, Any]:
        p = self.poison.text
        return {
            "worker_ref": {"runtime_id": RID, "worker_id": worker_id},
            "status": p("worker.status"),
            "profile": {"kind": "named", "value": p("worker.profile")},
            "intent": {"kind": p("intent.kind"), p("intent.key"): [p("intent.list"), {"deep": p("intent.deep")}]},
            "transcript_len": 2,
            "last_seq": 4,
            "reason": p("worker.reason"),
            "exit_code": 0,
        }

    def summary(self) -> dict[str, Any]:
        p = self.poison.text
        return {
            "runtime_id": RID,
            "display_name": p("display_name"),
            "backend": p("backend"),
            "status": p("runtime.status"),
            "worker_count": 1,
            "default_profile": p("default_profile"),
            "protocol_version": p("protocol_version"),
            "limits": {"max_transcript_projection_items": 256, "max_input_bytes": 1024},
            "profiles": [{"name": p("profile.name"), "description": p("profile.description")}],
        }

    def ack(self, worker_id: str) -> dict[str, Any]:
        p = self.poison.text
        ref = {"runtime_id": RID, "worker_id": worker_id}
        return {"worker_ref": ref, "status": p("ack.status"), "transcript_sequence": 1, "event_id": p("ack.id")}

    def transcript(self) -> dict[str, Any]:
        p = self.poison.text
        items = [
            {"sequence": 0, "role": p("role"), "content": p("transcript.content"), "event_id": p("item.id")},
            {"sequence": 1, "role": "assistant", "content": p("transcript.answer"), "event_id": 3},
        ]
        ref = {"runtime_id": RID, "worker_id": WID}
        return {"worker_ref": ref, "start": 0, "limit": 2, "total_items": 2, "items": items, "next_start": None}

    def error(self, code: str) -> dict[str, Any]:
        return {"error": {"code": code, "message": self.poison.text(f"error.{code}")}}

    def sse(self) -> bytes:
        p = self.poison.text
        events: list[tuple[str, dict[str, Any]]] = [
            ("reset", {"reason": p("reset.reason"), "earliest_seq": 1}),
        ]
        kinds = ["text_delta", "tool_result", p("event.kind").replace("\n", " "), "worker_exited"]
        for seq, kind in enumerate(kinds, start=1):
            data = {"text": p(f"event.{seq}.text"), "nested": {p("event.key"): [p("event.list")]}}
            events.append((kind, {"seq": seq, "worker_id": WID, "event": kind, "data": data, "ts": 1.0}))
        chunks = []
        for kind, data in events:
            head = f"id: {data['seq']}\n" if "seq" in data else ""
            chunks.append(f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n")
        return "".join(chunks).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def hostile(self) -> HostileRuntime:
        return self.server.hostile  # type: ignore[attr-defined,no-any-return]

    def _json(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _route(self, method: str) -> None:
        if method == "POST":
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        self.hostile.requests.append((method, path))
        h = self.hostile
        if path == "/v1/runtime":
            return self._json(200, {"runtime": h.summary()})
        if path == "/v1/workers":
            return (
                self._json(201, {"worker": h.worker()})
                if method == "POST"
                else self._json(200, {"workers": [h.worker()]})
            )
        parts = path.split("/")  # ['', 'v1', 'workers', id, action?]
        worker_id = parts[3] if len(parts) > 3 else ""
        action = parts[4] if len(parts) > 4 else ""
        if worker_id == "w-missing":
            return self._json(404, h.error("worker_not_found"))
        if worker_id == "w-broken":
            return self._json(500, h.error("internal"))
        if worker_id == "w-refusing":
            return self._json(422, {"error": {"code": h.poison.text("code"), "message": h.poison.text("msg")}})
        if action in {"input", "stop", "cancel"}:
            if worker_id == "w-done":
                return self._json(409, h.error("worker_not_running"))
            return self._json(200, {"ack": h.ack(worker_id)})
        if action == "transcript":
            return self._json(200, {"transcript": h.transcript()})
        if action == "events":
            raw = h.sse()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return None
        return self._json(200, {"worker": h.worker(worker_id)})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")
