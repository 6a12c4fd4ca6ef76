"""Fixtures of the registry / health / breaker tests: an isolated data dir, loopback listeners, a polling wait."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.registry import registry
from tests.runtimes.socket_server import make_client, serve  # noqa: F401  (fixtures of the client tests)


class Listener:
    """A loopback TCP socket that never answers: the kernel completes handshakes into its backlog.

    A client connecting to it hangs until its read timeout (a "blackholed" runtime). ``connections()``
    drains the backlog without answering and says how many clients ever connected, so a test can assert
    that something made no upstream traffic at all.
    """

    def __init__(self, backlog: int = 16) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(backlog)
        self._sock.setblocking(False)
        self._accepted: list[socket.socket] = []
        self.port = int(self._sock.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"Listener(port={self.port})"

    def connections(self) -> int:
        """How many connections reached this listener so far (pending ones included)."""
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return len(self._accepted)
            self._accepted.append(conn)

    def close(self) -> None:
        """Close the listener and every connection it took."""
        for conn in self._accepted:
            conn.close()
        self._accepted.clear()
        self._sock.close()


ListenerFactory = Callable[[], Listener]


@pytest.fixture
def listener_factory() -> Iterator[ListenerFactory]:
    """Make loopback listeners; all are closed after the test."""
    made: list[Listener] = []

    def make() -> Listener:
        listener = Listener()
        made.append(listener)
        return listener

    try:
        yield make
    finally:
        for listener in made:
            listener.close()


@pytest.fixture
def listener(listener_factory: ListenerFactory) -> Listener:
    """One loopback listener that never answers."""
    return listener_factory()


@pytest.fixture
def isolated_data_dir(settings: SettingsWrapper, tmp_path: Path) -> Iterator[Path]:
    """Point YOI_DATA_DIR at this test's tmp dir and start and end with an empty registry.

    The embedded store is locked by the open handle, so no handle may outlive its test.
    """
    data_dir = tmp_path / "data"
    settings.YOI_DATA_DIR = data_dir
    registry.reset()
    try:
        yield data_dir
    finally:
        registry.reset()


def refused_refs(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The secret refs the rules refuse (docs/operations.md, "Secrets"), set up in a real secrets dir: each
    must be refused where it is written and must send nothing at use."""
    (secrets_dir.parent / "outside").write_text("tok-outside-value")
    (secrets_dir / "link").symlink_to(secrets_dir.parent / "outside")
    (secrets_dir / "empty").write_text("")
    (secrets_dir / "a-dir").mkdir()
    monkeypatch.setenv("YOI_RUNTIME_TOKEN_", "tok-bare-prefix-value")
    return {
        "django_secret_key": "env:DJANGO_SECRET_KEY",
        "database_url": "env:DATABASE_URL",
        "bare_prefix": "env:YOI_RUNTIME_TOKEN_",
        "relative": "file:../x",
        "symlink_out": f"file:{secrets_dir / 'link'}",
        "outside": f"file:{secrets_dir.parent / 'outside'}",
        "empty_file": f"file:{secrets_dir / 'empty'}",
        "directory": f"file:{secrets_dir / 'a-dir'}",
    }
