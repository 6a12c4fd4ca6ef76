"""What the console's browser tests do again and again: log in, open a runtime, create a worker, talk to it."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import PASSWORD, USERNAME, ConsolePage

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        os.environ.get("YOI_RUN_BROWSER") != "1",
        reason="browser tests run with YOI_RUN_BROWSER=1 (they need Debian's chromium)",
    ),
]

# How long a restarted process may take before the page shows it is back.
RECOVERY_TIMEOUT = 30_000


def log_in(console: ConsolePage, next_path: str = "/") -> Page:
    """Open ``next_path``, get sent to the login page, log in, land there (the console: with its runtimes)."""
    page = console.page
    page.goto(next_path)
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    if next_path == "/":
        expect(page.locator("#runtime-list .runtime-item")).to_have_count(2)
    return page


def open_drawer_if_narrow(page: Page) -> None:
    """On a narrow screen the sidebar is a drawer: open it."""
    toggle = page.locator("#nav-toggle")
    if toggle.is_visible() and toggle.get_attribute("aria-expanded") == "false":
        toggle.click()
        expect(page.locator("#sidebar")).to_be_visible()


def open_runtime(page: Page, runtime_id: str) -> None:
    """Select a runtime in the sidebar."""
    open_drawer_if_narrow(page)
    page.locator(f'#runtime-list [data-runtime-id="{runtime_id}"] > .runtime-link').click()
    expect(page.locator("#view-runtime")).to_be_visible()
    expect(page.locator("#rt-id")).to_have_text(runtime_id)
    expect(page.locator("#create-form")).to_be_visible()


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


def api_post(page: Page, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to the browser API with the page's session (as another tab of the same user would)."""
    cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
    response = page.request.post(
        path,
        data=json.dumps(body),
        headers={"Content-Type": "application/json", "X-CSRFToken": cookies.get("csrftoken", "")},
    )
    assert response.ok, (response.status, response.text())
    answer: dict[str, Any] = response.json()
    return answer


def focus_ring(locator: Locator) -> str:
    """How the focused element shows focus: its outline (style, width) or box shadow; "" when it shows none."""
    style: str = locator.evaluate(
        """el => {
          const s = getComputedStyle(el);
          const outline = s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0;
          if (outline) return `outline ${s.outlineStyle} ${s.outlineWidth}`;
          if (s.boxShadow && s.boxShadow !== "none") return `shadow ${s.boxShadow}`;
          return "";
        }"""
    )
    return style
