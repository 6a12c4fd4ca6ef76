"""``yoi-runtime``: run the reference worker-runtime as a process.

``yoi-runtime serve --bind HOST:PORT --store DIR --runtime-id ID [--config FILE]
[--token-env NAME | --token-file PATH | --insecure-no-auth] [--tls-cert FILE --tls-key FILE
[--tls-client-ca FILE] | --insecure-http] [--access-log] [--ping-interval S] [--memory]``

Prints one line when it listens (``yoi-runtime: runtime <id> listening on http(s)://HOST:PORT (store:
<backend>)``), stops cleanly on SIGTERM/SIGINT (exit 0), and exits 2 with one line on stderr when it cannot
start. With ``--tls-cert``/``--tls-key`` it serves HTTPS; ``--tls-client-ca`` also requires a client
certificate signed by that CA (mTLS). Without TLS a bind address that is not loopback needs ``--insecure-http``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from worker_runtime.config import ConfigError, RuntimeConfig, load_config
from worker_runtime.core import WorkerRuntime
from worker_runtime.errors import StoreError
from worker_runtime.ids import is_valid_id
from worker_runtime.net import is_loopback
from worker_runtime.server import DEFAULT_PING_INTERVAL, RuntimeServer, create_server
from worker_runtime.store import FsStore, MemoryStore, Store

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
GRACEFUL_SHUTDOWN_SECONDS = 5
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class StartupError(Exception):
    """The process cannot start; the message is the one line printed on stderr."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``yoi-runtime``."""
    parser = argparse.ArgumentParser(prog="yoi-runtime", description="The Yoi reference worker-runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the runtime protocol over HTTP")
    serve.add_argument("--bind", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    serve.add_argument("--store", metavar="DIR", help="the FS store directory (required unless --memory)")
    serve.add_argument("--runtime-id", required=True, metavar="ID", help="this runtime's id")
    serve.add_argument("--config", metavar="FILE", help="the runtime config file (TOML)")
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument("--token-env", metavar="NAME", help="read the bearer token from this environment variable")
    auth.add_argument("--token-file", metavar="PATH", help="read the bearer token from this file")
    auth.add_argument(
        "--insecure-no-auth", action="store_true", help="serve without a token (loopback addresses only)"
    )
    serve.add_argument(
        "--ping-interval",
        type=float,
        default=DEFAULT_PING_INTERVAL,
        metavar="S",
        help="seconds between keep-alive comments on idle event streams (default 15)",
    )
    serve.add_argument("--memory", action="store_true", help="keep state in memory only (no store)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, chain first)")
    serve.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    serve.add_argument(
        "--tls-client-ca", metavar="FILE", help="require a client certificate signed by this CA (mTLS)"
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on an address that is not loopback (the token crosses the network in cleartext)",
    )
    serve.add_argument(
        "--access-log", action="store_true", help="print one line per request on stdout (no headers)"
    )
    return parser


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise StartupError(f"--bind must be HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-env / --token-file, never echoed anywhere."""
    if args.token_env:
        token = os.environ.pop(args.token_env, "")  # popped: agent subprocesses inherit the environment
        if not token.strip():
            raise StartupError(f"environment variable {args.token_env} is not set or empty")
        return token.strip()
    if args.token_file:
        try:
            token = Path(args.token_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise StartupError(f"cannot read the token file: {reason}") from exc
        if not token.strip():
            raise StartupError("the token file is empty")
        return token.strip()
    return None


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context of --tls-cert/--tls-key (and --tls-client-ca), or None for plain HTTP."""
    if not args.tls_cert and not args.tls_key:
        if args.tls_client_ca:
            raise StartupError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not args.tls_cert or not args.tls_key:
        raise StartupError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_TLS_VERSION
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except ssl.SSLError as exc:
        raise StartupError("the TLS certificate or key is not PEM, or they do not match") from exc
    except OSError as exc:
        raise StartupError(f"cannot read the TLS certificate or key: {exc.strerror or 'error'}") from exc
    if args.tls_client_ca:
        try:
            context.load_verify_locations(cafile=args.tls_client_ca)
        except ssl.SSLError as exc:
            raise StartupError("the --tls-client-ca file holds no PEM certificate") from exc
        except OSError as exc:
            raise StartupError(f"cannot read the --tls-client-ca file: {exc.strerror or 'error'}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve bind host {host!r}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with two hooks: after it listens, and before it waits on open connections."""

    def __init__(
        self, config: uvicorn.Config, *, on_started: Callable[[], None], on_shutdown: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_shutdown = on_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Event streams never end on their own; end them so the graceful wait is short.
        self._on_shutdown()
        await super().shutdown(sockets=sockets)


def _loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def serve(args: argparse.Namespace) -> int:
    """Open the store and serve until SIGTERM/SIGINT; raises StartupError when it cannot start."""
    host, port = parse_bind(args.bind)
    if not is_valid_id(args.runtime_id):
        raise StartupError("--runtime-id must match [A-Za-z0-9_:-]{1,120}")
    if not args.memory and not args.store:
        raise StartupError("--store DIR is required (or --memory)")
    if args.ping_interval <= 0:
        raise StartupError("--ping-interval must be positive")
    token = read_token(args)
    if token is None and not args.insecure_no_auth:
        raise StartupError("refusing to start without a token: give --token-env NAME or --token-file PATH")
    if token is None and not is_loopback(host):
        raise StartupError("refusing --insecure-no-auth on a non-loopback address")
    tls = tls_context(args)
    if tls is None and not is_loopback(host) and not args.insecure_http:
        raise StartupError(
            "refusing plain HTTP on a non-loopback address (the token would cross the network in cleartext): "
            "give --tls-cert and --tls-key, or --insecure-http"
        )
    try:
        config = load_config(args.config) if args.config else RuntimeConfig()
    except ConfigError as exc:
        raise StartupError(f"invalid config: {exc}") from exc
    # Listen first: a taken port leaves no trace in the store, and early clients queue in the backlog.
    sock = bind_socket(host, port)
    try:
        store: Store = MemoryStore() if args.memory else FsStore(args.store)
        runtime = WorkerRuntime(runtime_id=args.runtime_id, store=store, config=config)
        try:
            runtime.open()
        except StoreError as exc:
            raise StartupError(f"cannot open the store: {exc}") from exc
        try:
            server = create_server(runtime, store=store, token=token, ping_interval=args.ping_interval)
            _run(
                server,
                sock,
                host=host,
                runtime_id=args.runtime_id,
                backend=store.backend,
                tls=tls,
                access_log=args.access_log,
            )
        finally:
            runtime.close()
    finally:
        sock.close()
    return 0


def _run(
    server: RuntimeServer,
    sock: socket.socket,
    *,
    host: str,
    runtime_id: str,
    backend: str,
    tls: ssl.SSLContext | None,
    access_log: bool,
) -> None:
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host

    def announce() -> None:
        address = f"{'https' if tls else 'http'}://{shown_host}:{bound_port}"
        print(f"yoi-runtime: runtime {runtime_id} listening on {address} (store: {backend})", flush=True)

    config = uvicorn.Config(
        server.app,
        loop=_loop_name(),
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        # The context was built (and checked) before the store was opened: use it as it is.
        ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
    )
    if access_log:
        # uvicorn set its access logger to log_level; the request lines are INFO.
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    uv = _Server(config, on_started=announce, on_shutdown=server.begin_shutdown)

    def forward(sig: int, frame: FrameType | None) -> None:
        uv.handle_exit(sig, frame)

    # uvicorn restores the handlers it found and re-raises the signal after serving; make those ours, so a
    # stop signal (early or re-raised) only asks uvicorn to exit and the runtime still closes cleanly.
    previous: dict[int, Any] = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uv.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``yoi-runtime`` and ``python -m worker_runtime``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        return serve(args)
    except StartupError as exc:
        print(f"yoi-runtime: {exc}", file=sys.stderr)
        return EXIT_USAGE
