"""Swagger UI (/api/docs/) as shipped: "Try it out" on create, then Execute, makes a worker (201)."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from tests.browser.conftest import ConsolePage
from tests.browser.helpers import BROWSER_MARKS, log_in

pytestmark = BROWSER_MARKS


def test_swaggers_example_create_succeeds_unchanged(console_page: ConsolePage) -> None:
    page = log_in(console_page, "/api/docs/")
    expect(page).to_have_url(re.compile(r"/api/docs/$"))
    create = page.locator("#operations-workers-runtime_workers_create")
    create.locator(".opblock-summary").click()
    create.get_by_role("button", name="Try it out").click()
    # Pre-filled from the schema's examples: make run's runtime and an echo worker.
    expect(create.locator('input[placeholder="runtime_id"]')).to_have_value("local")
    body = create.locator("textarea.body-param__text")
    assert json.loads(body.input_value())["profile"] == "builtin:echo"

    with page.expect_response(re.compile(r"/api/v1/runtimes/local/workers/$")) as answer:
        create.get_by_role("button", name="Execute").click()
    assert answer.value.status == 201, answer.value.text()
    expect(create.locator(".live-responses-table tr.response .response-col_status")).to_have_text("201")
    worker = answer.value.json()
    assert worker["runtime_id"] == "local" and worker["profile"] == "builtin:echo"
