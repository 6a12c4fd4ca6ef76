"""Real processes for the console's browser tests: a ``yoi-runtime``, the Backend under daphne, headless Chromium.

``console_site`` starts the reference runtime as ``local`` on a fixed free port (so it can be killed and
restarted on the same address), prepares a Backend data dir (its own SQLite database, migrated, static
files collected as production does, a user with a password, runtimes ``embedded`` and ``local`` synced
from a generated TOML file and probed) and serves it with ``python -m daphne`` in production mode
(``DJANGO_DEBUG=0``, WhiteNoise). ``console_page`` is a fresh browser context whose every request,
response body and WebSocket frame is recorded; at the end of each test none of them, nor the page HTML,
may contain the runtime's address, token or store path.

These tests need Debian's ``chromium`` (``/usr/bin/chromium``; Playwright's own browser download does not
work here) and run only with ``YOI_RUN_BROWSER=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.backend_process import (
    QUICK_RELAY_ENV,
    BackendProcess,
    backend_env,
    free_port,
    manage_command,
    start_backend,
)
from tests.runtime_process import REPO_ROOT, RuntimeProcess, example_config, kill_spawned_since, spawned_count
from tests.runtime_process import start_runtime as spawn_runtime

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request, Response, WebSocket

CHROMIUM = os.environ.get("YOI_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The two widths the console is shown at (and screenshotted at): a laptop and a small phone.
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 360, "height": 740}
USERNAME = "console-user"
PASSWORD = "console-pw-for-browser-tests-5c81"
SECRET_KEY = "browser-tests-secret-key-not-for-production-71ad"
RUNTIME_TOKEN_ENV = "YOI_RUNTIME_TOKEN_BROWSER_LOCAL"
SCREENSHOT_DIR = REPO_ROOT / "docs" / "screenshots"
# Quick, but visible, upstream reconnects: the indicator's countdown lasts long enough to be seen.
BACKEND_SETTINGS = {**QUICK_RELAY_ENV, "YOI_RELAY_BACKOFF_BASE": "1.5", "YOI_RELAY_BACKOFF_CAP": "2.0"}
# One process for what needs the migrated database: the user, the runtimes of the generated file, a probe.
SETUP_SCRIPT = """
from django.contrib.auth import get_user_model
from django.core.management import call_command
get_user_model().objects.create_user(%(username)r, password=%(password)r)
call_command("sync_runtimes", "--file", %(config)r)
call_command("probe_runtimes")
"""


def runtimes_toml(runtime: RuntimeProcess) -> str:
    """``make run``'s runtimes (fixtures/runtimes.example.toml) with ``local`` at the test runtime's port."""
    return (
        "[[runtime]]\n"
        'runtime_id = "embedded"\n'
        'display_name = "Embedded runtime"\n'
        'kind = "embedded"\n'
        "\n"
        "[[runtime]]\n"
        'runtime_id = "local"\n'
        'display_name = "Local reference runtime"\n'
        'kind = "remote"\n'
        f"base_url = {json.dumps(runtime.base_url)}\n"
        f'token_ref = "env:{RUNTIME_TOKEN_ENV}"\n'
        "connect_timeout = 2.0\n"
        "read_timeout = 10.0\n"
    )


@dataclass
class ConsoleSite:
    """The runtime ``local`` and the Backend serving the console, both restartable on their ports."""

    runtime: RuntimeProcess
    data_dir: Path
    env: dict[str, str] = field(repr=False)
    port: int = field(default_factory=free_port)
    backend: BackendProcess | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the Backend."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where daphne's output goes."""
        return self.data_dir / "daphne.log"

    def forbidden(self) -> dict[str, str]:
        """What must never reach the browser: the runtime's address, token and store path."""
        rt = self.runtime
        assert rt.token
        return {
            "runtime base URL": rt.base_url,
            "runtime host:port": f"127.0.0.1:{rt.port}",
            "runtime localhost:port": f"localhost:{rt.port}",
            "runtime token": rt.token,
            "runtime store path": str(rt.store),
        }

    def start_backend(self) -> None:
        """Serve the Backend under daphne on ``port`` and wait for /readyz."""
        self.backend = start_backend(env=self.env, log_path=self.log_path, port=self.port, append_log=True)

    def kill_backend(self) -> None:
        """SIGKILL the Backend: every browser socket drops at once, as in a crash or a network blip."""
        if self.backend is not None:
            self.backend.kill()

    def kill_runtime(self) -> None:
        """SIGKILL the runtime process (its store survives)."""
        self.runtime.kill()

    def restart_runtime(self) -> None:
        """Start the runtime again on the same port, store and token."""
        self.runtime = self.runtime.restart()


def console_env(data_dir: Path, runtime: RuntimeProcess) -> dict[str, str]:
    """The Backend's environment in production mode (static files collected into ``data_dir/static``)."""
    return backend_env(
        secret_key=SECRET_KEY,
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'db.sqlite3'}",
        extra={
            "DJANGO_STATIC_ROOT": str(data_dir / "static"),
            RUNTIME_TOKEN_ENV: runtime.token or "",
            **BACKEND_SETTINGS,
        },
    )


def manage(*args: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``manage.py`` in the Backend's environment (``finish`` waits for it)."""
    return subprocess.Popen(
        manage_command(*args),
        env=dict(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(command: subprocess.Popen[str]) -> None:
    """Wait for a ``manage.py`` run; fail with its output when it fails."""
    try:
        output, _ = command.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        command.kill()
        output, _ = command.communicate()
    assert command.returncode == 0, f"{' '.join(map(str, command.args))} failed:\n{output}"


@pytest.fixture(scope="session")
def console_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    """The runtime ``local`` plus a prepared, running Backend (see the module docstring)."""
    marker = spawned_count()
    root = tmp_path_factory.mktemp("console")
    runtime = spawn_runtime(
        root / "runtime-local",
        runtime_id="local",
        config_text=example_config(),
        port=free_port(),
        extra_args=("--ping-interval", "1"),
    )
    data_dir = root / "backend"
    data_dir.mkdir()
    site = ConsoleSite(runtime=runtime, data_dir=data_dir, env=console_env(data_dir, runtime))
    try:
        config = data_dir / "runtimes.toml"
        config.write_text(runtimes_toml(runtime), "utf-8")
        # collectstatic (production serves hashed files through WhiteNoise) runs beside the database setup.
        collectstatic = manage("collectstatic", "--noinput", "-v", "0", env=site.env)
        finish(manage("migrate", "--noinput", "-v", "0", env=site.env))
        script = SETUP_SCRIPT % {"username": USERNAME, "password": PASSWORD, "config": str(config)}
        finish(manage("shell", "-c", script, env=site.env))
        finish(collectstatic)
        site.start_backend()
        yield site
    finally:
        site.kill_backend()
        kill_spawned_since(marker)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Traffic:
    """Everything a page sent and received: requests, response bodies, WebSocket URLs and frames."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    request_urls: list[str] = field(default_factory=list)
    ws_urls: list[str] = field(default_factory=list)
    frames_received: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        """Record from now on."""
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("request", self._on_request)
        page.on("requestfinished", self._on_finished)
        page.on("websocket", self._on_websocket)

    def _on_request(self, request: Request) -> None:
        self.request_urls.append(request.url)
        headers = json.dumps(request.headers)
        self.texts.append((f"request {request.method} {request.url}", f"{request.url}\n{headers}"))
        if request.post_data:
            self.texts.append((f"request body {request.url}", request.post_data))

    def _on_finished(self, request: Request) -> None:
        response: Response | None = request.response()
        if response is None:
            return
        self.texts.append((f"response headers {request.url}", json.dumps(response.headers)))
        if 300 <= response.status < 400:
            return  # a redirect has no body to read
        with contextlib.suppress(Exception):  # a page navigated away: Chromium dropped the body
            self.texts.append((f"response body {request.url}", response.body().decode("utf-8", "replace")))

    def _on_websocket(self, websocket: WebSocket) -> None:
        self.ws_urls.append(websocket.url)
        self.texts.append(("websocket url", websocket.url))
        websocket.on("framereceived", self._on_frame_received)
        websocket.on("framesent", lambda payload: self.texts.append(("ws frame sent", _text(payload))))

    def _on_frame_received(self, payload: str | bytes) -> None:
        text = _text(payload)
        self.frames_received.append(text)
        self.texts.append(("ws frame received", text))

    def leaks(self, forbidden: Mapping[str, str]) -> list[str]:
        """Every recorded text that contains a forbidden value (named, never printed)."""
        patterns = forbidden_patterns(forbidden)
        return [
            f"{where} contains the {name}"
            for where, text in self.texts
            for name, pattern in patterns.items()
            if pattern.search(text)
        ]

    def api_bodies(self) -> list[str]:
        """How many /api/ response bodies were read (the leak check must have seen some)."""
        return [text for where, text in self.texts if where.startswith("response body") and "/api/" in where]


def forbidden_patterns(forbidden: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    """Each forbidden value as a pattern; not followed by a digit, so port 4123 never matches port 41234."""
    return {name: re.compile(re.escape(value) + r"(?![0-9])") for name, value in forbidden.items() if value}


def _text(payload: str | bytes) -> str:
    return payload if isinstance(payload, str) else payload.decode("utf-8", "replace")


@dataclass
class ConsolePage:
    """A page of a fresh browser context, with its recorded traffic."""

    page: Page
    traffic: Traffic
    site: ConsoleSite

    def assert_no_leak(self) -> None:
        """Neither the traffic so far nor the current HTML carries the runtime's address, token or path."""
        forbidden = self.site.forbidden()
        leaks = self.traffic.leaks(forbidden)
        html = self.page.content()
        leaks += [
            f"the page HTML contains the {name}"
            for name, pattern in forbidden_patterns(forbidden).items()
            if pattern.search(html)
        ]
        assert not leaks, leaks


@contextlib.contextmanager
def open_console(browser: Browser, site: ConsoleSite, viewport: Mapping[str, int]) -> Iterator[ConsolePage]:
    """A fresh context (no cookies) and page; at the end no recorded traffic may leak, no script error occur."""
    context = browser.new_context(viewport=dict(viewport), base_url=site.base_url)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    page = context.new_page()
    traffic = Traffic()
    traffic.attach(page)
    console = ConsolePage(page=page, traffic=traffic, site=site)
    try:
        yield console
        console.assert_no_leak()
        assert not console.traffic.page_errors, console.traffic.page_errors
    finally:
        context.close()


@pytest.fixture
def console_page(browser: Browser, console_site: ConsoleSite) -> Iterator[ConsolePage]:
    """The console 1280 px wide (see ``open_console``)."""
    with open_console(browser, console_site, WIDE) as console:
        yield console


@pytest.fixture
def narrow_page(browser: Browser, console_site: ConsoleSite) -> Iterator[ConsolePage]:
    """The console 360 px wide, a small phone (see ``open_console``)."""
    with open_console(browser, console_site, NARROW) as console:
        yield console


@pytest.fixture
def killable_site(console_site: ConsoleSite) -> Iterator[ConsoleSite]:
    """Lets a test kill the runtime ``local`` or the Backend: both run again afterwards whatever the test did."""
    try:
        yield console_site
    finally:
        if console_site.runtime.proc.poll() is not None:
            console_site.restart_runtime()
        if console_site.backend is None or not console_site.backend.alive():
            console_site.start_backend()


def save_screenshot(page: Page, name: str, **options: Any) -> None:
    """Write ``docs/screenshots/<name>``, only when ``YOI_UPDATE_SCREENSHOTS=1``."""
    if os.environ.get("YOI_UPDATE_SCREENSHOTS") != "1":
        return
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    # Transitions (the drawer sliding after a resize) are finished first, so the picture is the state itself.
    page.screenshot(path=str(SCREENSHOT_DIR / name), animations="disabled", **options)
