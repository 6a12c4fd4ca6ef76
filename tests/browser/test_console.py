"""The console in headless Chromium against a real Backend and a real ``yoi-runtime``.

Log in, see both runtimes of ``make run``'s config, create an echo worker, watch its streamed replies
arrive live, survive a runtime restart and a Backend restart without losing or repeating a line, page
the transcript, and read typed errors. Every test ends with the leak check of ``console_page``.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import PASSWORD, USERNAME, ConsolePage, save_screenshot

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        os.environ.get("YOI_RUN_BROWSER") != "1",
        reason="browser tests run with YOI_RUN_BROWSER=1 (they need Debian's chromium)",
    ),
]

# How long a restarted process may take before the page shows it is back.
RECOVERY_TIMEOUT = 30_000


def log_in(console: ConsolePage) -> Page:
    """Open /, get sent to the login page, log in, land on the console with its runtimes."""
    page = console.page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#runtime-list .runtime-item")).to_have_count(2)
    return page


def open_runtime(page: Page, runtime_id: str) -> None:
    """Select a runtime in the left column."""
    page.locator(f'#runtime-list [data-runtime-id="{runtime_id}"] > .runtime-link').click()
    expect(page.locator("#view-runtime")).to_be_visible()
    expect(page.locator("#rt-id")).to_have_text(runtime_id)


def create_echo_worker(page: Page, runtime_id: str, first_input: str) -> str:
    """Create an echo worker from the runtime view; wait for its live view; its id."""
    open_runtime(page, runtime_id)
    page.locator("#create-profile").select_option("builtin:echo")
    page.locator("#create-input").fill(first_input)
    page.locator("#create-submit").click()
    expect(page.locator("#view-worker")).to_be_visible()
    expect(page.locator("#wk-status")).to_have_text("running")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(reply(page, first_input)).to_have_count(1)
    return page.locator("#wk-id").inner_text()


def reply(page: Page, text: str) -> Locator:
    """The finished echo reply to ``text`` in the event view."""
    bubble = page.locator(".bubble", has_text=re.compile(rf"^echo: {re.escape(text)}$"))
    return page.locator("#events .ev-reply.done").filter(has=bubble)


def user_message(page: Page, text: str) -> Locator:
    """The user's input ``text`` in the event view."""
    bubble = page.locator(".bubble", has_text=re.compile(rf"^{re.escape(text)}$"))
    return page.locator("#events .ev-user").filter(has=bubble)


def send_input(page: Page, text: str) -> None:
    """Type an input, press Enter, and wait for the worker's streamed reply to finish."""
    box = page.locator("#input-text")
    box.fill(text)
    box.press("Enter")
    expect(user_message(page, text)).to_have_count(1)
    expect(reply(page, text)).to_have_count(1)
    expect(box).to_have_value("")


def rendered_seqs(page: Page) -> list[int]:
    """The seq of every event element in the event view, in page order."""
    values = page.locator("#events [data-seq]").evaluate_all("elements => elements.map(e => e.dataset.seq)")
    return [int(value) for value in values]


def assert_gapless(seqs: list[int]) -> None:
    """Every event from the first one, each once, in order."""
    assert seqs, "no events rendered"
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_login_then_both_runtimes_with_kind_status_and_capabilities(console_page: ConsolePage) -> None:
    page = console_page.page
    site = console_page.site
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".login-card .error-box")).to_contain_text("correct username and password")

    page = log_in(console_page)
    expect(page.locator(".topbar .user")).to_have_text(USERNAME)
    for runtime_id, kind in (("embedded", "embedded"), ("local", "remote")):
        item = page.locator(f'#runtime-list [data-runtime-id="{runtime_id}"]')
        expect(item.locator(".tag")).to_have_text(kind)
        expect(item.locator(".badge")).to_have_text("online")
        expect(item.locator(".seen")).not_to_contain_text("never")
        expect(item.locator(".caps")).to_contain_text("profiles")

    open_runtime(page, "local")
    expect(page.locator("#rt-title")).to_have_text("Local reference runtime")
    expect(page.locator("#rt-profiles")).to_contain_text("builtin:echo")
    expect(page.locator("#rt-profiles")).to_contain_text("example-agent")
    expect(page.locator("#create-profile option")).to_have_text(["builtin:echo", "builtin:burst", "example-agent"])
    expect(page.locator("#rt-last-seen time")).not_to_have_text("never")
    expect(page.locator("#worker-table")).not_to_contain_text("Loading")
    expect(page.locator("#runtime-list .worker-list")).not_to_contain_text("Loading")
    save_screenshot(page, "console-runtimes.png")

    # Everything the page loaded came from the Backend itself: no CDN, no other origin.
    urls = console_page.traffic.request_urls
    assert any("/static/workers/console." in url and url.endswith(".js") for url in urls), urls
    assert all(url.startswith(site.base_url + "/") for url in urls), urls
    assert console_page.traffic.api_bodies(), "no /api/ response body was recorded for the leak check"


def test_echo_worker_streams_live_and_survives_a_runtime_restart(console_page: ConsolePage) -> None:
    site = console_page.site
    page = log_in(console_page)
    create_echo_worker(page, "local", "hello from the console")
    # Streamed: the reply was assembled from several text_delta events as they arrived.
    assert reply(page, "hello from the console").locator(".chunk[data-seq]").count() >= 2
    send_input(page, "one")
    save_screenshot(page, "console-worker-live.png")

    site.kill_runtime()
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "reconnecting", timeout=RECOVERY_TIMEOUT)
    expect(conn.locator(".conn-countdown")).to_have_text(re.compile(r"^retry in \d+ s$"))
    expect(conn.locator(".conn-reason")).not_to_be_empty()
    save_screenshot(page, "console-reconnecting.png")

    site.restart_runtime()
    expect(conn).to_have_attribute("data-state", "connected", timeout=RECOVERY_TIMEOUT)
    send_input(page, "two")
    assert_gapless(rendered_seqs(page))
    for text in ("hello from the console", "one", "two"):
        expect(reply(page, text)).to_have_count(1)
    frames = console_page.traffic.frames_received
    assert any('"type":"event"' in frame for frame in frames), "the leak check saw no event frame"

    # The transcript holds 6 items: with 5 a page, two pages.
    page.locator("#tx-limit").select_option("5")
    items = page.locator("#transcript .tx-item")
    expect(items).to_have_count(5)
    expect(page.locator("#tx-range")).to_have_text("1\u20135 of 6")
    expect(page.locator("#tx-prev")).to_be_disabled()
    page.locator("#tx-next").click()
    expect(items).to_have_count(1)
    expect(page.locator("#tx-range")).to_have_text("6\u20136 of 6")
    expect(items.first).to_have_attribute("data-sequence", "6")
    expect(items.first).to_contain_text("echo: two")
    expect(page.locator("#tx-next")).to_be_disabled()
    page.locator("#tx-prev").click()
    expect(items).to_have_count(5)
    expect(items.first).to_contain_text("hello from the console")
    save_screenshot(page, "console-transcript.png")


def test_browser_socket_resumes_with_after_when_the_backend_restarts(console_page: ConsolePage) -> None:
    site = console_page.site
    traffic = console_page.traffic
    page = log_in(console_page)
    create_echo_worker(page, "local", "before the blip")
    last_seq = rendered_seqs(page)[-1]
    sockets_before = len(traffic.ws_urls)

    site.kill_backend()
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", re.compile("reconnecting|unavailable"))
    expect(conn.locator(".conn-countdown")).to_have_text(re.compile(r"^retry"))
    site.start_backend()
    expect(conn).to_have_attribute("data-state", "connected", timeout=RECOVERY_TIMEOUT)

    resumed = traffic.ws_urls[-1]
    assert len(traffic.ws_urls) > sockets_before
    assert parse_qs(urlsplit(resumed).query)["after"] == [str(last_seq)], resumed
    send_input(page, "after the blip")
    assert_gapless(rendered_seqs(page))
    expect(reply(page, "before the blip")).to_have_count(1)
    expect(page.locator("#events .ev-sys")).to_contain_text(f"resumed after #{last_seq}")


def test_errors_show_the_typed_code_and_message(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    create_echo_worker(page, "embedded", "hello embedded")
    page.locator("#wk-stop").click()
    expect(page.locator("#wk-status")).to_have_text("stopped")
    expect(page.locator("#conn")).to_have_attribute("data-state", "ended")
    expect(page.locator("#events .ev-worker_exited")).to_have_count(1)
    assert_gapless(rendered_seqs(page))

    page.locator("#input-text").fill("anyone there?")
    page.locator("#input-send").click()
    error = page.locator("#input-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-code", "runtime_rejected")
    expect(error.locator(".err-code")).to_have_text("runtime_rejected")
    expect(error.locator(".err-msg")).to_contain_text("rejected")
    expect(error.locator(".err-details")).to_contain_text("worker_not_running")

    page.goto("/#/runtimes/local/workers/w-no-such-worker")
    expect(page.locator("#worker-error")).to_have_attribute("data-code", "worker_not_found")
    expect(page.locator("#worker-error .err-msg")).not_to_be_empty()
    page.goto("/#/runtimes/no-such-runtime")
    expect(page.locator("#runtime-error")).to_have_attribute("data-code", "runtime_not_found")


def test_api_docs_run_under_the_content_security_policy(console_page: ConsolePage) -> None:
    """Swagger UI renders every operation with the CSP every page sends, and the browser reports no violation."""
    page = console_page.page
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )
    log_in(console_page)
    response = page.goto("/api/docs/")
    assert response is not None and response.headers["content-security-policy"].startswith("default-src 'self'")
    expect(page.locator(".opblock")).to_have_count(10)
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Yoi Workspace Backend API")
    assert violations == [], violations
