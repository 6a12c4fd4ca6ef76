"""The console's input submission: one Idempotency-Key per submitted input, one retry with it when the answer
is lost, and so one input however the network behaves (headless Chromium, real Backend and runtime)."""

from __future__ import annotations

from playwright.sync_api import Request, Route, expect

from tests.browser.conftest import ConsolePage
from tests.browser.helpers import BROWSER_MARKS, create_echo_worker, log_in, reply, user_message

pytestmark = BROWSER_MARKS


def test_a_lost_answer_is_retried_once_with_the_same_key_and_makes_one_input(console_page: ConsolePage) -> None:
    page = log_in(console_page)
    create_echo_worker(page, "local", "first")
    keys: list[str | None] = []

    def lose_the_first_answer(route: Route, request: Request) -> None:
        keys.append(request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # the Backend and the runtime do the work...
            route.abort("connectionreset")  # ...and the answer never reaches the page
        else:
            route.continue_()

    page.route("**/input/", lose_the_first_answer)
    box = page.locator("#input-text")
    box.fill("only once")
    box.press("Enter")
    expect(box).to_have_value("")  # the retry got the (first) answer
    expect(reply(page, "only once")).to_have_count(1)
    expect(user_message(page, "only once")).to_have_count(1)
    assert len(keys) == 2 and keys[0] == keys[1]
    assert keys[0] is not None and keys[0].startswith("console-")

    # A new submission is a new key.
    box.fill("and again")
    box.press("Enter")
    expect(reply(page, "and again")).to_have_count(1)
    assert len(keys) == 3 and keys[2] not in (None, keys[0])
    expect(page.locator("#input-error")).to_be_hidden()
