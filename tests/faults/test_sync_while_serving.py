"""``manage.py sync_runtimes`` with a broken file while the Backend serves: it fails and nothing changes.

Broken files are applied concurrently (separate processes, same database) while a client keeps using the
Backend. Afterwards a valid file that only enables a disabled sentinel runtime is applied, and the test waits
until the Backend serves the sentinel: from then on the Backend has re-read the rows, so if a broken file
had changed anything, it would show. Nothing did: same runtime list, same answers, same upstream.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.backend_process import MANAGE_TIMEOUT, manage_command
from tests.faults.conftest import FAKE_WORKER_ID, FaultBackend, FaultSite, RefusedPort, RuntimeRow, runtimes_toml
from tests.runtime_process import REPO_ROOT, wait_until

REMOTE_ID = "sync-remote"


def config_fields(backend: FaultBackend) -> dict[str, dict[str, Any]]:
    """The configured part of every runtime in the Backend's list (not the status, which probes update)."""
    response = backend.api("GET", "runtimes/")
    assert response.status_code == 200, response.text
    keys = ("display_name", "kind", "enabled")
    return {item["runtime_id"]: {key: item[key] for key in keys} for item in response.json()["items"]}


def command_answers(backend: FaultBackend) -> dict[str, tuple[int, Any]]:
    """A command and a query per runtime, reduced to what must not change."""
    sent = backend.api("POST", f"runtimes/{REMOTE_ID}/workers/{FAKE_WORKER_ID}/input/", {"content": "probe"})
    listed = backend.api("GET", "runtimes/embedded/workers/")
    disabled = backend.api("GET", "runtimes/sync-disabled/workers/")
    return {
        "remote-input": (sent.status_code, sent.json().get("status")),
        "embedded-list": (listed.status_code, type(listed.json().get("items")).__name__),
        "disabled-list": (disabled.status_code, disabled.json().get("error", {}).get("code")),
    }


def broken_files(tmp: Path, rows: list[RuntimeRow], refused: RefusedPort, *, sentinel: str) -> dict[str, Path]:
    """Runtimes files that each try to change things and are each invalid somewhere."""
    remote = next(row for row in rows if row.runtime_id == REMOTE_ID)
    hijacked = RuntimeRow(
        runtime_id=REMOTE_ID,
        base_url=f"http://127.0.0.1:{refused.port}",
        token=remote.token,
        display_name="Hijacked",
        read_timeout=1.0,
    )
    renamed_embedded = RuntimeRow(runtime_id="embedded", kind="embedded", display_name="Renamed", enabled=False)
    sentinel_on = RuntimeRow(runtime_id=sentinel, kind="embedded", enabled=True)
    changes = runtimes_toml([hijacked, renamed_embedded, sentinel_on])
    texts: dict[str, str | bytes] = {
        "toml-syntax": changes + '[[runtime]]\nruntime_id = "unterminated\n',
        "bad-timeout": changes.replace("read_timeout = 1.0", "read_timeout = -1"),
        "timeout-too-large": changes.replace("read_timeout = 1.0", "read_timeout = 100000"),
        "timeout-not-a-number": changes.replace("read_timeout = 1.0", 'read_timeout = "soon"'),
        "duplicate-id": changes + runtimes_toml([hijacked]),
        "bad-scheme": changes.replace(f"http://127.0.0.1:{refused.port}", "ftp://127.0.0.1/x"),
        "credentials-in-url": changes.replace("http://127.0.0.1", "http://user:secret@127.0.0.1"),
        "bad-id": changes + runtimes_toml([RuntimeRow(runtime_id="../etc", kind="embedded")]),
        "unknown-kind": changes.replace('kind = "embedded"', 'kind = "martian"', 1),
        "plain-token": changes.replace(
            f'token_ref = "env:{hijacked.token_env}"', 'token_ref = "the-token-itself"'
        ),
        "no-runtimes": "# nothing here\n",
        "runtime-not-a-table": 'runtime = "embedded"\n',
        "not-utf8": changes.encode() + b"# \xff\xfe\n",
    }
    paths: dict[str, Path] = {}
    for name, text in texts.items():
        path = tmp / f"broken-{name}.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, "utf-8")
        paths[name] = path
    paths["missing-file"] = tmp / "does-not-exist.toml"
    return paths


class Traffic:
    """A client that keeps using the Backend on a thread until stopped; counts the answers."""

    def __init__(self, backend: FaultBackend) -> None:
        self.backend = backend
        self.answers: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        calls = [
            ("list", "GET", "runtimes/", None),
            ("input", "POST", f"runtimes/{REMOTE_ID}/workers/{FAKE_WORKER_ID}/input/", {"content": "traffic"}),
            ("embedded", "GET", "runtimes/embedded/workers/", None),
        ]
        while not self._stop.is_set():
            for name, method, path, body in calls:
                try:
                    status = self.backend.api(method, path, body, timeout=(5.0, 10.0)).status_code
                except requests.RequestException:
                    status = -1
                self.answers[(name, status)] += 1


# One process per file costs a Django start-up (about a CPU second). make test runs the file most tempting to
# half-apply (valid entries first, then one bad value, with --prune); .ci/run runs every one.
QUICK_FILES = ("bad-timeout",)


@pytest.mark.parametrize(
    ("names", "sentinel"),
    [
        pytest.param(QUICK_FILES, "sync-sentinel-1", id="one-file"),
        pytest.param(None, "sync-sentinel-2", id="every-broken-file", marks=pytest.mark.slow),
    ],
)
def test_broken_runtimes_files_change_nothing_while_the_backend_serves(
    tmp_path: Path, fault_site: FaultSite, names: tuple[str, ...] | None, sentinel: str
) -> None:
    backend, fakes = fault_site.backend, fault_site.fakes
    config_before, answers_before = config_fields(backend), command_answers(backend)
    assert answers_before == {
        "remote-input": (202, "running"),
        "embedded-list": (200, "list"),
        "disabled-list": (503, "runtime_disabled"),
    }
    assert config_before[sentinel]["enabled"] is False
    remote_calls_before = len(fakes.requests_to(REMOTE_ID))
    files = broken_files(tmp_path, list(fault_site.rows.values()), fault_site.refused, sentinel=sentinel)
    if names is not None:
        files = {name: files[name] for name in names}

    with Traffic(backend) as traffic:
        procs = {
            name: subprocess.Popen(
                manage_command("sync_runtimes", "--file", str(path))
                + (["--prune"] if name == "bad-timeout" else []),
                env=backend.env,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, path in files.items()
        }
        results: dict[str, tuple[int, str]] = {}
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=MANAGE_TIMEOUT)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            results[name] = (proc.returncode, out + err)

        # A valid file that only enables the sentinel; once the Backend serves it, it has re-read the rows
        # after every broken sync ended.
        valid = tmp_path / "valid.toml"
        valid.write_text(runtimes_toml([RuntimeRow(runtime_id=sentinel, kind="embedded")]), "utf-8")
        applied = backend.manage("sync_runtimes", "--file", str(valid))
        assert applied.returncode == 0, applied.stdout + applied.stderr

        def sentinel_served() -> bool:
            return backend.api("GET", f"runtimes/{sentinel}/workers/").status_code == 200

        wait_until(sentinel_served, timeout=20, interval=0.05, message="the Backend to pick up the valid file")

    for name, (code, output) in results.items():
        assert code != 0, f"{name}: exit 0\n{output}"
        assert "Traceback" not in output, f"{name}:\n{output}"
        assert "CommandError" in output, f"{name}:\n{output}"
        assert "secret" not in output and str(fault_site.refused.port) not in output, f"{name} echoes:\n{output}"

    config_after = config_fields(backend)
    assert config_after.pop(sentinel)["enabled"] is True
    config_before.pop(sentinel)
    assert config_after == config_before
    assert command_answers(backend) == answers_before
    assert len(fakes.requests_to(REMOTE_ID)) > remote_calls_before  # still the same upstream
    assert set(traffic.answers) == {("list", 200), ("input", 202), ("embedded", 200)}, traffic.answers
    print(f"\nbroken files: {len(results)} rejected; traffic while syncing: {dict(traffic.answers)}")
