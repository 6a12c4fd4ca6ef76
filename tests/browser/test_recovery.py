"""Recovery without Reload: a worker page opened while its runtime is down comes back by itself, and the
sidebar (status, "seen N ago", worker lists) follows the runtimes on its own and agrees with the worker pane.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import NARROW, WIDE, ConsolePage, ConsoleSite, save_screenshot
from tests.browser.helpers import BROWSER_MARKS, RECOVERY_TIMEOUT, api_post, log_in, open_runtime, reply

pytestmark = BROWSER_MARKS

# The sidebar's own refresh of the selected runtime's workers runs every 10 s.
POLL_TIMEOUT = 25_000


def test_a_worker_page_opened_while_its_runtime_is_down_recovers_with_no_click(
    console_page: ConsolePage, killable_site: ConsoleSite
) -> None:
    page = log_in(console_page)
    body = {"profile": "builtin:echo", "initial_input": "before"}
    worker = api_post(page, "/api/v1/runtimes/local/workers/", body)
    worker_url = f"/#/runtimes/local/workers/{worker['worker_id']}"
    page.goto(worker_url)
    expect(reply(page, "before")).to_have_count(1)

    killable_site.kill_runtime()
    page.goto("about:blank")
    page.goto(worker_url)
    error = page.locator("#worker-error")
    expect(error).to_have_attribute("data-code", "runtime_unreachable")
    # Why, in words, with the code beside it, and when the page tries again.
    expect(error.locator(".err-msg")).to_have_text(
        "The runtime cannot be reached: it may be stopped, or its host down."
    )
    expect(error.locator(".err-code")).to_have_text("runtime_unreachable")
    expect(error.locator(".err-countdown")).to_have_text(re.compile(r"^Trying again (in \d+ s\.|…)$"))
    expect(page.locator("#wk-body")).to_be_hidden()
    # The sidebar says the same as the worker pane.
    local = page.locator('#runtime-list [data-runtime-id="local"]')
    expect(local.locator(".badge")).to_have_text("offline")
    expect(local.locator(".runtime-link .err-inline")).to_contain_text("runtime unreachable")
    save_screenshot(page, "console-recovering-1280.png")
    page.set_viewport_size(NARROW)
    save_screenshot(page, "console-recovering-360.png", full_page=True)
    page.set_viewport_size(WIDE)
    detail = f"/workers/{worker['worker_id']}/"
    tries_while_down = sum(1 for url in console_page.traffic.request_urls if url.endswith(detail))

    killable_site.restart_runtime()
    # No click from here on: the page's own retries find the runtime back.
    expect(page.locator("#wk-body")).to_be_visible(timeout=RECOVERY_TIMEOUT)
    expect(error).to_be_hidden()
    expect(page.locator("#wk-status")).to_have_text("running")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(reply(page, "before")).to_have_count(1)
    expect(local.locator(".badge")).to_have_text("online", timeout=RECOVERY_TIMEOUT)
    expect(local.locator(".runtime-link .err-inline")).to_have_count(0)
    assert tries_while_down >= 1


def test_the_sidebar_follows_workers_and_runtime_status_on_its_own(
    console_page: ConsolePage, killable_site: ConsoleSite
) -> None:
    page = log_in(console_page)
    open_runtime(page, "local")
    local = page.locator('#runtime-list [data-runtime-id="local"]')
    expect(local.locator(".badge")).to_have_text("online")

    # A worker made elsewhere (another tab, a script) shows up in the sidebar and the table by itself.
    worker = api_post(page, "/api/v1/runtimes/local/workers/", {"profile": "builtin:echo"})
    row = page.locator(f'#worker-table [data-worker-id="{worker["worker_id"]}"]')
    expect(row).to_have_count(1, timeout=POLL_TIMEOUT)
    expect(local.locator(f'.worker-list [data-worker-id="{worker["worker_id"]}"]')).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("running")
    api_post(page, f"/api/v1/runtimes/local/workers/{worker['worker_id']}/stop/", {})
    expect(row.locator(".badge")).to_have_text("stopped", timeout=POLL_TIMEOUT)

    # The runtime goes down: the status changes with no Reload, and the runtime page says why.
    killable_site.kill_runtime()
    expect(local.locator(".badge")).to_have_text("offline", timeout=POLL_TIMEOUT)
    expect(page.locator("#rt-down")).to_contain_text("cannot be reached")
    expect(page.locator("#rt-down code")).to_have_text("runtime_unreachable")
    expect(page.locator("#rt-error-code code")).to_have_text("runtime_unreachable")

    killable_site.restart_runtime()
    expect(local.locator(".badge")).to_have_text("online", timeout=RECOVERY_TIMEOUT + POLL_TIMEOUT)
    expect(page.locator("#rt-down")).to_be_hidden()
    expect(local.locator(".seen")).not_to_contain_text("never")
