"""The console in headless Chromium against a real Backend and a real ``yoi-runtime``.

Log in, see both runtimes of ``make run``'s config, create an echo worker, watch its streamed replies
arrive live, survive a runtime restart and a Backend restart without losing or repeating a line, page
the transcript, and see a finished worker refuse input. Every test ends with the leak check of
``console_page`` (and no script error). Screenshots (``YOI_UPDATE_SCREENSHOTS=1``) are taken at 1280 px
and, in the same states, 360 px.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import expect

from tests.browser.conftest import NARROW, USERNAME, ConsolePage, ConsoleSite, save_screenshot
from tests.browser.helpers import (
    BROWSER_MARKS,
    RECOVERY_TIMEOUT,
    assert_gapless,
    create_echo_worker,
    log_in,
    open_runtime,
    rendered_seqs,
    reply,
    send_input,
)

pytestmark = BROWSER_MARKS


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
    save_screenshot(page, "console-runtime-1280.png")
    page.set_viewport_size(NARROW)
    expect(page.locator("#sidebar")).to_be_hidden()
    save_screenshot(page, "console-runtime-360.png", full_page=True)

    # Everything the page loaded came from the Backend itself: no CDN, no other origin.
    urls = console_page.traffic.request_urls
    assert any("/static/workers/console." in url and url.endswith(".js") for url in urls), urls
    assert all(url.startswith(site.base_url + "/") for url in urls), urls
    assert console_page.traffic.api_bodies(), "no /api/ response body was recorded for the leak check"


def test_echo_worker_streams_live_and_survives_a_runtime_restart(
    console_page: ConsolePage, killable_site: ConsoleSite
) -> None:
    site = killable_site
    page = log_in(console_page)
    create_echo_worker(page, "local", "hello from the console")
    # Streamed: the reply was assembled from several text_delta events as they arrived.
    assert reply(page, "hello from the console").locator(".chunk[data-seq]").count() >= 2
    send_input(page, "one")
    save_screenshot(page, "console-worker-1280.png")
    page.set_viewport_size(NARROW)
    save_screenshot(page, "console-worker-360.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    site.kill_runtime()
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "reconnecting", timeout=RECOVERY_TIMEOUT)
    expect(conn.locator(".conn-countdown")).to_have_text(re.compile(r"^retry in \d+ s$"))
    # Why, in words, with the code beside it.
    expect(conn.locator(".conn-reason")).to_contain_text("runtime unreachable")
    expect(conn.locator(".conn-reason code")).to_have_text("runtime_unreachable")
    # The sidebar agrees with the worker pane.
    local = page.locator('#runtime-list [data-runtime-id="local"]')
    expect(local.locator(".badge")).to_have_text("offline")
    expect(local.locator(".err-inline code")).to_have_text("runtime_unreachable")
    save_screenshot(page, "console-reconnecting-1280.png")

    site.restart_runtime()
    expect(conn).to_have_attribute("data-state", "connected", timeout=RECOVERY_TIMEOUT)
    send_input(page, "two")
    assert_gapless(rendered_seqs(page))
    for text in ("hello from the console", "one", "two"):
        expect(reply(page, text)).to_have_count(1)
    expect(local.locator(".badge")).to_have_text("online", timeout=RECOVERY_TIMEOUT)
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

    # On page 1, new items move the total (and the pager) live: the range never lags behind.
    send_input(page, "three")
    expect(page.locator("#tx-range")).to_have_text("1\u20135 of 8")
    expect(items.first).to_contain_text("hello from the console")
    expect(page.locator("#tx-next")).to_be_enabled()
    save_screenshot(page, "console-transcript-1280.png")


def test_browser_socket_resumes_with_after_when_the_backend_restarts(
    console_page: ConsolePage, killable_site: ConsoleSite
) -> None:
    site = killable_site
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


def test_a_stopped_worker_disables_the_input_and_says_why(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    worker_id = create_echo_worker(page, "embedded", "hello embedded")
    box = page.locator("#input-text")
    expect(box).to_be_enabled()
    expect(page.locator("#input-closed")).to_be_hidden()

    page.locator("#wk-stop").click()
    expect(page.locator("#wk-status")).to_have_text("stopped")
    expect(page.locator("#conn")).to_have_attribute("data-state", "ended")
    expect(page.locator("#events .ev-worker_exited")).to_have_count(1)
    assert_gapless(rendered_seqs(page))
    for control in ("#input-text", "#input-kind", "#input-send", "#wk-stop", "#wk-cancel"):
        expect(page.locator(control)).to_be_disabled()
    closed = page.locator("#input-closed")
    expect(closed).to_have_text("This worker was stopped: it takes no more input.")
    # The box points at the reason, so a screen reader says it too.
    assert "input-closed" in (box.get_attribute("aria-describedby") or "")
    # Focus was on Stop, now disabled: it went somewhere visible instead of being lost.
    assert page.evaluate("document.activeElement !== document.body")

    # Opened afresh, the finished worker is shown finished at once.
    page.reload()
    expect(page.locator("#wk-id")).to_have_text(worker_id)
    expect(page.locator("#wk-status")).to_have_text("stopped")
    expect(box).to_be_disabled()
    expect(closed).to_be_visible()
    row = page.locator(f'#runtime-list .worker-list [data-worker-id="{worker_id}"]')
    expect(row.locator(".dot")).to_have_class(re.compile("dot-stopped"))


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
    expect(page.locator(".opblock")).to_have_count(11)  # every operation of the schema
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Yoi Workspace Backend API")
    assert violations == [], violations
