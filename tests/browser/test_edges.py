"""The console's edges: not-found pages, blank input, Cancel's confirmation, long messages, a 360 px screen
and keyboard-only use.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import NARROW, PASSWORD, USERNAME, ConsolePage, save_screenshot
from tests.browser.helpers import (
    BROWSER_MARKS,
    create_echo_worker,
    focus_ring,
    log_in,
    open_runtime,
    reply,
    send_input,
    user_message,
)

pytestmark = BROWSER_MARKS

LONG_TEXT = "".join(f"line {n}: " + "lorem ipsum dolor sit amet " * 7 + "\n" for n in range(1000))  # ~200 KB


def assert_one_clear_not_found(page: Page, title: str, text: str, back: str) -> None:
    """One "not found" page: its title and text, a way back, no form, no second error anywhere."""
    view = page.locator("#view-notfound")
    expect(view).to_be_visible()
    expect(page.locator("#notfound-title")).to_have_text(title)
    expect(page.locator("#notfound-text")).to_contain_text(text)
    expect(page.locator("#notfound-back")).to_have_text(back)
    for hidden in ("#view-runtime", "#view-worker", "#create-form", "#input-form"):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator(".error-box:visible")).to_have_count(0)


def test_unknown_runtime_and_worker_pages_say_not_found_once_with_a_way_back(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    page.goto("/#/runtimes/nope")
    assert_one_clear_not_found(page, "Runtime not found", "There is no runtime nope", "Back to the console")
    page.locator("#notfound-back").click()
    expect(page.locator("#view-empty")).to_be_visible()

    page.goto("/#/runtimes/local/workers/w-no-such-worker")
    assert_one_clear_not_found(
        page, "Worker not found", "has no worker w-no-such-worker", "Back to Local reference runtime"
    )
    page.set_viewport_size(NARROW)
    save_screenshot(page, "console-notfound-360.png")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.locator("#notfound-back").click()
    expect(page.locator("#view-runtime")).to_be_visible()
    expect(page.locator("#rt-title")).to_have_text("Local reference runtime")

    # Ids the API refuses, and addresses the console does not know, are "not found" too.
    page.goto("/#/runtimes/not..valid")
    assert_one_clear_not_found(page, "Runtime not found", "not..valid", "Back to the console")
    page.goto("/#/somewhere/else")
    assert_one_clear_not_found(page, "Not found", "nothing at this address", "Back to the console")
    page.goto("/#/runtimes/nope/workers/w-1")
    assert_one_clear_not_found(page, "Runtime not found", "There is no runtime nope", "Back to the console")


def test_blank_input_is_refused_inline_and_never_sent(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    create_echo_worker(page, "embedded", "first")
    box = page.locator("#input-text")
    sent_before = [url for url in console_page.traffic.request_urls if url.endswith("/input/")]
    box.fill("  \n\t ")
    box.press("Enter")
    hint = page.locator("#input-hint")
    expect(hint).to_have_text("Type something first: blank input is not sent.")
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_be_focused()
    assert "input-hint" in (box.get_attribute("aria-describedby") or "")
    page.locator("#input-send").click()
    expect(hint).to_be_visible()
    assert [url for url in console_page.traffic.request_urls if url.endswith("/input/")] == sent_before
    # Typing something clears the hint; it is then sent as usual.
    send_input(page, "now with words")
    expect(hint).to_be_hidden()
    assert box.get_attribute("aria-invalid") is None


def test_cancel_asks_first_and_keep_leaves_the_worker_running(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    worker_id = create_echo_worker(page, "embedded", "cancel me maybe")
    dialog = page.locator("#cancel-dialog")
    page.locator("#wk-cancel").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(worker_id)
    expect(page.locator("#cancel-keep")).to_be_focused()
    save_screenshot(page, "console-cancel-1280.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.locator("#wk-cancel")).to_be_focused()
    page.locator("#wk-cancel").click()
    page.locator("#cancel-keep").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#wk-status")).to_have_text("running")
    assert not [url for url in console_page.traffic.request_urls if url.endswith("/cancel/")]

    page.locator("#wk-cancel").click()
    page.locator("#cancel-confirm").click()
    expect(page.locator("#wk-status")).to_have_text("cancelled")
    expect(page.locator("#input-text")).to_be_disabled()
    expect(page.locator("#input-closed")).to_have_text("This worker was cancelled: it takes no more input.")
    assert len([url for url in console_page.traffic.request_urls if url.endswith("/cancel/")]) == 1


def test_a_200_kb_message_is_collapsed_in_both_panels_until_show_more(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    create_echo_worker(page, "embedded", "short one")
    # 200 KB typed by Playwright takes longer than the test; put it in the box as a paste would.
    page.locator("#input-text").evaluate("(box, text) => { box.value = text; }", LONG_TEXT)
    page.locator("#input-send").click()
    expect(page.locator("#events .ev-reply.done")).to_have_count(2, timeout=30_000)
    mine = page.locator("#events .ev-user").last
    answer = page.locator("#events .ev-reply.done").last
    expect(page.locator("#transcript .tx-item")).to_have_count(4)
    long_items = page.locator("#transcript .tx-item").filter(has=page.locator(".clamped"))
    expect(long_items).to_have_count(2)
    for panel in (mine, answer, long_items.first, long_items.last):
        clamped = panel.locator(".clamped")
        expect(clamped).to_have_count(1)
        height = clamped.bounding_box()
        assert height is not None and height["height"] < 300, height
        toggle = panel.locator(".more-toggle")
        expect(toggle).to_have_text("Show more")
        expect(toggle).to_have_attribute("aria-expanded", "false")
    # Short messages are left alone.
    expect(user_message(page, "short one").locator(".more-toggle")).to_have_count(0)
    expect(reply(page, "short one").locator(".more-toggle")).to_have_count(0)

    toggle = mine.locator(".more-toggle")
    toggle.click()
    expect(toggle).to_have_text("Show less")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    bubble = mine.locator(".bubble")
    expanded = bubble.bounding_box()
    assert expanded is not None and expanded["height"] > 3000, expanded
    toggle.click()
    expect(toggle).to_have_text("Show more")
    expect(mine.locator(".bubble.clamped")).to_have_count(1)


def page_overflows(page: Page) -> bool:
    """True when the page is wider than the screen (a sideways scroll bar)."""
    overflow: bool = page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
    return overflow


def test_at_360_px_the_sidebar_is_a_drawer_and_everything_still_works(narrow_page: ConsolePage) -> None:
    page = log_in(narrow_page)
    sidebar = page.locator("#sidebar")
    toggle = page.locator("#nav-toggle")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_be_visible()
    expect(toggle).to_have_accessible_name("Runtimes")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    assert not page_overflows(page)

    toggle.click()
    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#runtime-list .runtime-link").first).to_be_focused()
    save_screenshot(page, "console-drawer-360.png")
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_be_focused()

    worker_id = create_echo_worker(page, "local", "hello from a phone")
    expect(sidebar).to_be_hidden()
    assert not page_overflows(page)
    send_input(page, "and again")
    expect(page.locator("#transcript .tx-item")).to_have_count(4)
    assert not page_overflows(page)
    # Both panels are on screen one under the other, each as wide as the screen allows.
    for panel in (".events-panel", ".transcript-panel"):
        box = page.locator(panel).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, (panel, box)
    toggle.click()
    expect(page.locator(f'#runtime-list [data-worker-id="{worker_id}"]')).to_be_visible()
    page.locator("#nav-backdrop").click(position={"x": 350, "y": 400})
    expect(sidebar).to_be_hidden()
    # The toggle stays in reach above the open drawer, and closes it again.
    toggle.click()
    expect(sidebar).to_be_visible()
    toggle.click()
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")


def tab_to(page: Page, selector: str, limit: int = 60) -> list[str]:
    """Press Tab until ``selector`` has focus; every stop on the way must show focus and have a name."""
    stops: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.locator("*:focus")
        described = focused.evaluate(
            "el => `${el.tagName.toLowerCase()}#${el.id}.${el.className} `"
            " + (el.getAttribute('aria-label') || el.labels?.[0]?.textContent || el.textContent || '').trim()"
        )
        stops.append(described)
        assert focus_ring(focused), f"no visible focus on {described}"
        name = described.split(" ", 1)[1] if " " in described else ""
        assert name.strip(), f"no accessible name on {described}"
        if focused.evaluate(f"el => el.matches({selector!r})"):
            return stops
    raise AssertionError(f"{selector} never got focus; stops: {stops}")


def test_keyboard_only_from_login_to_a_worker_reply(console_page: ConsolePage) -> None:
    page = console_page.page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/"))
    expect(page.get_by_label("Username")).to_be_focused()  # the login form starts there
    page.keyboard.type(USERNAME)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#runtime-list .runtime-item")).to_have_count(2)

    # The first stop is the skip link; it jumps to the main content.
    page.keyboard.press("Tab")
    skip = page.locator(".skip-link")
    expect(skip).to_be_focused()
    assert focus_ring(skip)
    stops = tab_to(page, '[data-runtime-id="embedded"] > .runtime-link')
    # The top bar comes before the sidebar, the sidebar before the main content.
    assert any("Log out" in stop for stop in stops), stops
    page.keyboard.press("Enter")
    expect(page.locator("#view-runtime")).to_be_visible()
    expect(page.locator("#rt-title")).to_have_text("Embedded runtime")

    tab_to(page, "#create-profile")
    page.keyboard.press("Tab")  # intent
    page.keyboard.press("Tab")  # first input
    expect(page.locator("#create-input")).to_be_focused()
    page.keyboard.type("typed, never clicked")
    page.keyboard.press("Enter")
    expect(page.locator("#view-worker")).to_be_visible()
    expect(reply(page, "typed, never clicked")).to_have_count(1)

    tab_to(page, "#input-text")
    page.keyboard.type("still no mouse")
    page.keyboard.press("Enter")
    expect(reply(page, "still no mouse")).to_have_count(1)
    # The event list scrolls, so it takes focus too (a keyboard can scroll it).
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#events")).to_be_focused()
    assert focus_ring(page.locator("#events"))

    # Cancel by keyboard, the control just before the events: the dialog takes focus, Enter keeps the worker.
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#wk-cancel")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#cancel-keep")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#cancel-dialog")).to_be_hidden()
    expect(page.locator("#wk-status")).to_have_text("running")
    open_runtime(page, "embedded")
