"""axe-core (axe-playwright-python, which ships axe.min.js: nothing is fetched) over the console's main
states, light and dark, 1280 and 360 px wide: no serious or critical violation anywhere.

Each state's result is printed as one line (``pytest -s`` shows them): impact counts and rule ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import NARROW, WIDE, ConsolePage, ConsoleSite, open_console
from tests.browser.helpers import BROWSER_MARKS, RECOVERY_TIMEOUT, api_post, create_echo_worker, log_in, send_input

pytestmark = BROWSER_MARKS

BLOCKING = {"serious", "critical"}
LONG_TEXT = "a long line of text that goes on " * 400


@pytest.fixture(scope="module")
def axe() -> Axe:
    """The axe-core engine bundled with axe-playwright-python."""
    return Axe()


@pytest.fixture(params=["light", "dark"])
def scheme_page(
    request: pytest.FixtureRequest, browser: Browser, console_site: ConsoleSite
) -> Iterator[ConsolePage]:
    """The console at 1280 px in the light and in the dark colour scheme."""
    with open_console(browser, console_site, WIDE) as console:
        console.page.emulate_media(color_scheme=request.param)
        yield console


class Scan:
    """Runs axe on named states and remembers what it found."""

    def __init__(self, axe: Axe, label: str) -> None:
        self.axe = axe
        self.label = label
        self.found: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, page: Page, state: str) -> None:
        """Scan the page as it is now."""
        results = self.axe.run(page)
        violations: list[dict[str, Any]] = results.response["violations"]
        name = f"{self.label}/{state}"
        self.found[name] = violations
        impacts = Counter(v["impact"] for v in violations)
        rules = ", ".join(f"{v['id']}({v['impact']})" for v in violations) or "none"
        print(f"axe {name}: {dict(impacts) or 'no violations'}; rules: {rules}")
        for violation in violations:
            for node in violation["nodes"]:
                summary = " ".join(node.get("failureSummary", "").split())
                print(f"    {violation['id']} {node['target']}: {summary}")

    def assert_clean(self) -> None:
        """No state had a serious or critical violation (the report names rule, element and why)."""
        bad = {
            state: [
                f"{v['id']} ({v['impact']}): {v['help']}: "
                + "; ".join(f"{n['target']} {n.get('failureSummary', '')}" for n in v["nodes"])
                for v in violations
                if v["impact"] in BLOCKING
            ]
            for state, violations in self.found.items()
        }
        bad = {state: found for state, found in bad.items() if found}
        assert not bad, bad


def test_main_states_have_no_serious_or_critical_violations(
    scheme_page: ConsolePage, axe: Axe, killable_site: ConsoleSite
) -> None:
    page = scheme_page.page
    scan = Scan(axe, page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'"))
    page.goto("/")
    scan(page, "login")
    page.get_by_label("Username").fill("nobody")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".login-card .error-box")).to_be_visible()
    scan(page, "login-error")

    page = log_in(scheme_page)
    scan(page, "console-empty")
    create_echo_worker(page, "local", "hello axe")
    send_input(page, LONG_TEXT)
    expect(page.locator("#events .more-toggle")).to_have_count(2)
    scan(page, "worker-live-with-long-text")
    page.locator("#wk-cancel").click()
    expect(page.locator("#cancel-dialog")).to_be_visible()
    scan(page, "cancel-dialog")
    page.locator("#cancel-keep").click()
    page.locator("#input-text").fill("   ")
    page.locator("#input-text").press("Enter")
    expect(page.locator("#input-hint")).to_be_visible()
    scan(page, "blank-input-hint")
    page.locator("#wk-stop").click()
    expect(page.locator("#input-closed")).to_be_visible()
    scan(page, "worker-stopped")

    page.locator("#wk-runtime-link").click()
    expect(page.locator("#create-form")).to_be_visible()
    expect(page.locator("#worker-table tr[data-worker-id]")).not_to_have_count(0)
    scan(page, "runtime")
    page.goto("/#/runtimes/nope")
    expect(page.locator("#view-notfound")).to_be_visible()
    scan(page, "not-found")

    # A runtime that is down: the worker page's error with its countdown, the reconnect indicator.
    worker = api_post(page, "/api/v1/runtimes/local/workers/", {"profile": "builtin:echo"})
    page.goto(f"/#/runtimes/local/workers/{worker['worker_id']}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    killable_site.kill_runtime()
    expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=RECOVERY_TIMEOUT)
    scan(page, "reconnecting")
    page.goto("about:blank")
    page.goto(f"/#/runtimes/local/workers/{worker['worker_id']}")
    expect(page.locator("#worker-error .err-countdown")).to_be_visible()
    scan(page, "load-failed-retrying")
    killable_site.restart_runtime()
    expect(page.locator("#wk-body")).to_be_visible(timeout=RECOVERY_TIMEOUT)
    scan.assert_clean()


def test_narrow_states_have_no_serious_or_critical_violations(narrow_page: ConsolePage, axe: Axe) -> None:
    scan = Scan(axe, "360px")
    page = log_in(narrow_page)
    scan(page, "console-empty")
    page.locator("#nav-toggle").click()
    expect(page.locator("#sidebar")).to_be_visible()
    scan(page, "drawer-open")
    page.keyboard.press("Escape")
    create_echo_worker(page, "embedded", "hello small screen")
    scan(page, "worker-live")
    page.set_viewport_size(NARROW)
    scan.assert_clean()
