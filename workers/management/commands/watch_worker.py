"""``manage.py watch_worker RUNTIME WORKER [--after N]``: print a worker's live frames as a browser gets them.

It connects to a running Backend's event socket (``--url``, default ``http://127.0.0.1:8000``: what
``make run`` serves), so it sees exactly what a browser sees, through the same relay. It authenticates as
a user of this database (``--user``, default ``demo``) with a short-lived session it creates for the
purpose and deletes when it ends, so it must run with the Backend's settings (same database and
``DJANGO_SECRET_KEY``). Each frame is printed as one JSON line on stdout; the close is reported on stderr.
The exit status is 0 when the socket closed normally (1000/1001: the worker exited, or the Backend went
away) and 1 after an error frame (close 4000 + HTTP status).

The WebSocket side is the ``websockets`` library's synchronous client (it answers the Backend's pings).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand, CommandError, CommandParser
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from workers.ids import id_errors

CONNECT_TIMEOUT = 5.0
# Daphne pings every 20 s; a socket silent for this long (not even a ping) is dead, not idle.
READ_TIMEOUT = 60.0
CLOSE_TIMEOUT = 2.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
NORMAL_CLOSES = {1000, 1001}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the watch like Ctrl-C does (the session is still deleted)."""
    raise KeyboardInterrupt


def socket_url(base_url: str, runtime_id: str, worker_id: str, after: int | None) -> str:
    """The worker's event socket URL on the Backend at ``base_url`` (http -> ws, https -> wss)."""
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise CommandError("--url must be the Backend's http:// or https:// address, e.g. http://127.0.0.1:8000")
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = f"?{urlencode({'after': after})}" if after is not None else ""
    prefix = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{prefix}/ws/runtimes/{runtime_id}/workers/{worker_id}/events/{query}"


def open_session(username: str) -> SessionStore:
    """A logged-in session of ``username`` (what a browser holds after logging in)."""
    users = get_user_model()
    try:
        user = users.objects.get(**{users.USERNAME_FIELD: username})
    except users.DoesNotExist:
        raise CommandError(f"no user {username!r} in this database (use --user)") from None
    if not user.is_active:
        raise CommandError(f"user {username!r} is not active")
    session = SessionStore()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session


class Command(BaseCommand):
    """Watch one worker's event socket on a running Backend and print every frame as a JSON line."""

    help = (
        "Print a worker's live event frames (one JSON line each) from a running Backend's WebSocket, as the "
        "given user would see them. Ends when the socket closes (the worker exited) or on Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("runtime_id")
        parser.add_argument("worker_id")
        parser.add_argument(
            "--after",
            type=int,
            default=None,
            help="resume after this seq (0 = from the first event); default: live only",
        )
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="the Backend's address (default: make run's)"
        )
        parser.add_argument("--user", default="demo", help="watch as this user (default: demo)")

    def handle(self, *args: Any, **options: Any) -> None:
        runtime_id, worker_id, after = options["runtime_id"], options["worker_id"], options["after"]
        fields = id_errors(runtime_id=runtime_id, worker_id=worker_id)
        if fields:
            raise CommandError(f"invalid id: {fields}")
        if after is not None and after < 0:
            raise CommandError("--after must be >= 0")
        url = socket_url(options["url"], runtime_id, worker_id, after)
        base = urlsplit(options["url"])
        session = open_session(options["user"])
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._watch(url, session_key=str(session.session_key), origin=f"{base.scheme}://{base.netloc}")
        finally:
            session.delete()

    def _watch(self, url: str, *, session_key: str, origin: str) -> None:
        headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_key}"}
        try:
            ws = connect(
                url,
                origin=origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
                additional_headers=headers,
                open_timeout=CONNECT_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                max_size=MAX_FRAME_BYTES,
            )
        except InvalidStatus as exc:
            raise CommandError(f"the Backend refused the socket (HTTP {exc.response.status_code})") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise CommandError(f"cannot open the socket: {type(exc).__name__}") from exc
        self.stderr.write(f"watching {url.split('/ws/', 1)[-1]} (Ctrl-C to stop)")
        try:
            self._print_frames(ws)
        except KeyboardInterrupt:
            ws.close()
            self.stderr.write("stopped")
            return
        except (OSError, TimeoutError) as exc:
            ws.close()
            raise CommandError(f"the socket broke: {type(exc).__name__}") from exc
        code = ws.close_code
        reason = ws.close_reason
        self.stderr.write(f"closed: {code}{f' {reason}' if reason else ''}")
        if code not in NORMAL_CLOSES:
            raise CommandError(f"the socket closed with {code}")

    def _print_frames(self, ws: ClientConnection) -> None:
        """Every message as one line until the Backend closes the socket."""
        while True:
            try:
                message = ws.recv(timeout=READ_TIMEOUT)
            except ConnectionClosed:
                return
            self.stdout.write(message if isinstance(message, str) else message.decode("utf-8", "replace"))
            self.stdout.flush()
