"""Every shell block of the README, run as a newcomer would, in order, against ``make run``'s processes.

Each ```` ```sh ```` block carries a comment saying how it is tested:

- ``run``: in one bash session (variables carry over between blocks); every command must succeed, and an
  API answer that is an error (HTTP >= 400) fails it (``curl`` runs with ``--fail-with-body``).
- ``run until "TEXT"``: repeated (for at most ``UNTIL_SECONDS``) until it succeeds and prints TEXT: for
  what the README says happens "within a few seconds".
- ``run expect "TEXT"``: once; it must print TEXT, which may be an API error (the crash section).
- ``serve``: a server a person starts in a shell of its own: started in the background, ready when its
  ``--bind`` port accepts connections; stopped at the end.
- ``watch expect "TEXT"``: a command that ends by itself later: started in the background; at the end it
  must have exited 0 having printed TEXT.
- ``interactive``: ``changepassword``: fed a new password twice, then the login page must take it.
- ``ci``: ``make`` targets and ``.ci/run``, which CI runs for real: a dry run (``make -n``, ``bash -n``).

``make run`` itself is ``python -m yoi_backend.devrun`` on free ports (``YOI_HTTP_PORT``,
``YOI_LOCAL_RUNTIME_PORT``); the commands run in a scratch directory that links to this checkout but has
its own ``var/``, with the README's ports replaced by the free ones.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.backend_process import free_port
from tests.runtime_process import REPO_ROOT

README = REPO_ROOT / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (?P<how>[^>]*?) -->\n```sh\n(?P<body>.*?)```", re.S)
HOW = re.compile(r'^(run|run until "[^"]+"|run expect "[^"]+"|serve|watch expect "[^"]+"|interactive|ci)$')
README_PORTS = {"http": "8000", "local": "38800", "rt-1": "38801"}
DONE = "__README_BLOCK_DONE__"
# On a line of its own whatever the block printed last (curl prints no final newline).
MARK = f"readme_status=$?; printf '\\n{DONE} %d\\n' \"$readme_status\"\n"
STARTUP_SECONDS = 180.0
BLOCK_SECONDS = 120.0
UNTIL_SECONDS = 30.0
NEW_PASSWORD = "readme-Test-pw-7Qz-x9-unused"
# Only what a person's shell would have: none of the test run's own Django/Yoi/database settings.
DROPPED_ENV = ("DJANGO_", "YOI_", "DATABASE_URL", "REDIS_URL", "PYTEST_")


@dataclass(frozen=True)
class Block:
    """One ```sh block of the README and how it is tested."""

    how: str
    body: str
    line: int

    @property
    def text(self) -> str:
        """The TEXT of ``until`` / ``expect``."""
        match = re.search(r'"([^"]+)"', self.how)
        assert match, self.how
        return match.group(1)


def readme_blocks() -> list[Block]:
    """Every annotated shell block, in order."""
    source = README.read_text("utf-8")
    return [
        Block(m.group("how").strip(), m.group("body"), source.count("\n", 0, m.start()) + 2)
        for m in BLOCK.finditer(source)
    ]


def test_every_shell_block_of_the_readme_says_how_it_is_tested() -> None:
    source = README.read_text("utf-8")
    blocks = readme_blocks()
    assert len(blocks) == source.count("```sh\n"), "a ```sh block without a readme-test comment"
    assert len(blocks) >= 10
    for block in blocks:
        assert HOW.match(block.how), f"README line {block.line}: unknown readme-test kind {block.how!r}"
    # The README stands alone: nothing outside the repository.
    assert "../shared" not in source and "DESIGN" not in source


def localise(text: str, ports: dict[str, int]) -> str:
    """The README's text with its ports replaced by the test's free ones."""
    for name, default in README_PORTS.items():
        text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    return text


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check()`` until true (bounded), or fail naming ``condition``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {condition}")


@dataclass
class Shell:
    """One bash session fed block by block; output read up to a marker line after each block."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, *, cwd: Path, env: dict[str, str]) -> Shell:
        """A non-interactive bash with a ``curl`` that fails on API errors unless ``README_LENIENT`` is set."""
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        shell = cls(proc)
        threading.Thread(target=shell._read, daemon=True).start()
        shell.send(
            "set -o pipefail\n"
            'curl() { if [ -n "$README_LENIENT" ]; then command curl "$@"; '
            'else command curl --fail-with-body "$@"; fi; }\n' + MARK
        )
        status, output = shell.collect(30)
        assert status == 0, output
        return shell

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, script: str) -> None:
        """Write to the session."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(script)
        self.proc.stdin.flush()

    def collect(self, timeout: float) -> tuple[int | None, str]:
        """Output up to the next marker, and the status it reports (None: the shell exited)."""
        deadline = time.monotonic() + timeout
        output: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out; output so far:\n" + "".join(output)) from None
            if line is None:
                return None, "".join(output)
            if line.startswith(DONE):
                return int(line.split()[1]), "".join(output)
            output.append(line)

    def run(self, body: str, *, strict: bool = True, subshell: bool = False) -> tuple[int | None, str]:
        """Run ``body``; strict: stop at the first failing command (the session ends: the test fails)."""
        if subshell:
            script = f"(\nset -e\n{body}\n)\n{MARK}"
        elif strict:
            script = f"set -e\n{body}\nset +e\n{MARK}"
        else:
            script = f"README_LENIENT=1\n{body}\n{MARK}README_LENIENT=\n"
        self.send(script)
        return self.collect(BLOCK_SECONDS)

    def close(self) -> None:
        """Stop the servers the README started (by the ids this shell kept), then the shell."""
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.send(f'for pid in $SERVE_PIDS; do kill "$pid" 2>/dev/null; done; true\n{MARK}')
                self.collect(30)
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def scratch_checkout(root: Path) -> Path:
    """A directory that looks like this checkout (links to its files) with a ``var/`` of its own."""
    work = root / "checkout"
    work.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in {"var", ".git"}:
            (work / entry.name).symlink_to(entry)
    (work / "var").mkdir()
    return work


def clean_env(work: Path, ports: dict[str, int]) -> dict[str, str]:
    """A person's shell in ``work``, with ``make run``'s ports set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(DROPPED_ENV)}
    env.update(
        {
            "YOI_DATA_DIR": str(work / "var"),
            "YOI_HTTP_PORT": str(ports["http"]),
            "YOI_LOCAL_RUNTIME_PORT": str(ports["local"]),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@contextlib.contextmanager
def make_run(work: Path, env: dict[str, str]) -> Iterator[Path]:
    """``make run``'s processes (devrun), until it says it serves; Ctrl-C at the end. Yields its log."""
    log = work.parent / "make-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(work / ".venv" / "bin" / "python"), "-m", "yoi_backend.devrun"],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            "make run to serve",
            lambda: "Stop with Ctrl-C" in log.read_text() or proc.poll() is not None,
            STARTUP_SECONDS,
        )
        assert proc.poll() is None, f"make run exited:\n{log.read_text()}"
        yield log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def dry_run(block: Block, work: Path) -> None:
    """``make X`` -> ``make -n X``; ``bash .ci/run`` -> ``bash -n .ci/run``; nothing else belongs in ``ci``."""
    for line in block.body.splitlines():
        command = shlex.split(line, comments=True)
        if not command:
            continue
        if command[0] == "make" and len(command) == 2:
            check = ["make", "-n", command[1]]
        elif command == ["bash", ".ci/run"]:
            check = ["bash", "-n", ".ci/run"]
        else:
            raise AssertionError(f"README line {block.line}: {line!r} is not a make target or .ci/run")
        result = subprocess.run(check, cwd=work, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{check}: {result.stdout}{result.stderr}"


def bind_port(block: Block, body: str) -> int:
    """The port of a serve block's ``--bind HOST:PORT`` (in ``body``, the block with the test's ports)."""
    match = re.search(r"--bind\s+\S+:(\d+)", body)
    assert match, f"README line {block.line}: a serve block needs --bind HOST:PORT"
    return int(match.group(1))


def log_in(base_url: str, username: str, password: str) -> bool:
    """True when the console's login page takes this password."""
    with requests.Session() as session:
        page = session.get(f"{base_url}/login/", timeout=10)
        page.raise_for_status()
        answer = session.post(
            f"{base_url}/login/",
            data={
                "username": username,
                "password": password,
                "next": "/",
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": f"{base_url}/login/"},
            allow_redirects=False,
            timeout=10,
        )
        return answer.status_code == 302 and answer.headers.get("Location") == "/"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_readme_command_works_against_make_run(tmp_path: Path) -> None:
    ports = {name: free_port() for name in README_PORTS}
    work = scratch_checkout(tmp_path)
    env = clean_env(work, ports)
    base_url = f"http://127.0.0.1:{ports['http']}"
    watchers: list[tuple[Block, str]] = []
    transcript: list[str] = []
    with make_run(work, env) as log:
        assert "password=" in log.read_text(), "make run did not print the demo password"
        shell = Shell.start(cwd=work, env=env)
        try:
            for index, block in enumerate(readme_blocks()):
                body = localise(block.body, ports)
                where = f"README line {block.line} ({block.how})"
                transcript.append(f"--- {where}\n{body}")
                print(f"--- {where}", flush=True)
                if block.how == "ci":
                    dry_run(block, work)
                elif block.how == "run":
                    status, output = shell.run(body)
                    transcript.append(output)
                    assert status == 0, f"{where} failed:\n{output}\n{''.join(transcript)}"
                elif block.how.startswith("run until"):
                    deadline = time.monotonic() + UNTIL_SECONDS
                    while True:
                        status, output = shell.run(body, subshell=True)
                        if status == 0 and block.text in output:
                            break
                        assert time.monotonic() < deadline, f"{where}: never printed {block.text!r}:\n{output}"
                        time.sleep(0.5)
                    transcript.append(output)
                elif block.how.startswith("run expect"):
                    status, output = shell.run(body, strict=False)
                    transcript.append(output)
                    assert status is not None and block.text in output, f"{where}:\n{output}"
                elif block.how == "serve":
                    port = bind_port(block, body)
                    status, output = shell.run(
                        f'{body.rstrip()} > serve-{index}.log 2>&1 &\nSERVE_PIDS="$SERVE_PIDS $!"'
                    )
                    assert status == 0, output
                    served = work / f"serve-{index}.log"
                    wait_for(f"{where} to listen on {port}", lambda p=port: port_open(p), 30)
                    transcript.append(served.read_text())
                elif block.how.startswith("watch"):
                    status, output = shell.run(f"{body.rstrip()} > watch-{index}.log 2>&1 &\nWATCH_{index}=$!")
                    assert status == 0, output
                    watchers.append((block, f"WATCH_{index}"))
                elif block.how == "interactive":
                    answer = subprocess.run(
                        ["bash", "-c", body],
                        cwd=work,
                        env=env,
                        input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n",
                        capture_output=True,
                        text=True,
                        timeout=BLOCK_SECONDS,
                        start_new_session=True,  # no terminal: getpass reads the answers from stdin
                    )
                    assert answer.returncode == 0, f"{where}:\n{answer.stdout}{answer.stderr}"
                    assert log_in(base_url, "demo", NEW_PASSWORD), f"{where}: the new password does not log in"
                else:
                    raise AssertionError(f"{where}: unknown kind")
            for block, variable in watchers:
                index = variable.split("_")[1]
                status, output = shell.run(f'wait "${variable}"', strict=False)
                watched = (work / f"watch-{index}.log").read_text()
                assert status == 0, f"README line {block.line}: exited {status}:\n{watched}"
                assert block.text in watched, f"README line {block.line}: no {block.text!r} in:\n{watched}"
        finally:
            shell.close()
