"""The console's handling of the event socket's ``end`` and ``reset`` (``stream_replaced``) frames and of the
stream epoch, which the Backend's relay is being taught to send.

The page's socket is routed through Playwright (``page.route_web_socket``) to the real Backend; every frame
the Backend sends passes through unchanged, and the test adds the frame under test, exactly as the relay
will send it (docs/api.md), so what is checked is the page's reaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.conftest import ConsolePage
from tests.browser.helpers import BROWSER_MARKS, create_echo_worker, log_in, rendered_seqs, send_input

pytestmark = BROWSER_MARKS

EVENTS_URL = re.compile(r"/ws/runtimes/.*/events/")


@dataclass
class RelayTap:
    """Every event socket the page opens, each connected through to the Backend; the test can add frames."""

    urls: list[str] = field(default_factory=list)
    pages: list[WebSocketRoute] = field(default_factory=list)
    rewrite: Callable[[str], str] | None = None

    def route(self, page: Page) -> None:
        """Route the page's event sockets through this tap."""
        page.route_web_socket(EVENTS_URL, self._handle)

    def _handle(self, ws: WebSocketRoute) -> None:
        self.urls.append(ws.url)
        self.pages.append(ws)
        server = ws.connect_to_server()
        server.on_message(lambda message: ws.send(self.rewrite(str(message)) if self.rewrite else message))

    def send(self, frame: dict[str, object]) -> None:
        """Give the page's current socket one more frame, as if the Backend had sent it."""
        self.pages[-1].send(json.dumps(frame))

    def close(self, code: int) -> None:
        """Close the page's current socket with ``code`` (as the Backend or the network would)."""
        self.pages[-1].close(code=code, reason="")


def start_worker(console: ConsolePage, tap: RelayTap, first: str) -> Page:
    """Log in with the tap in place and open a new echo worker on the embedded runtime."""
    tap.route(console.page)
    page = log_in(console)
    create_echo_worker(page, "embedded", first)
    return page


def test_an_end_frame_disables_the_input_and_the_page_never_reconnects(console_page: ConsolePage) -> None:
    tap = RelayTap()
    page = start_worker(console_page, tap, "before the end")
    last = rendered_seqs(page)[-1]
    tap.send({"type": "end", "final_seq": last})
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "ended")
    expect(conn).to_contain_text(f"last event #{last}")
    expect(page.locator("#input-text")).to_be_disabled()
    expect(page.locator("#input-send")).to_be_disabled()
    expect(page.locator("#input-closed")).to_be_visible()
    # The Backend closes after `end`; even a close that is not 1000 must not bring a reconnect.
    tap.close(4000)
    sockets = len(tap.urls)
    # Wait for something the page does later than any reconnect would be (its first retry is within 0.5 s):
    # two rounds of the runtime-list poll.
    for _ in range(2):
        with page.expect_request(lambda request: request.url.endswith("/api/v1/runtimes/"), timeout=15_000):
            pass
    assert len(tap.urls) == sockets, tap.urls
    expect(conn).to_have_attribute("data-state", "ended")


def test_a_stream_replaced_reset_clears_the_view_and_pages_the_transcript_again(console_page: ConsolePage) -> None:
    tap = RelayTap()
    page = start_worker(console_page, tap, "from the old stream")
    # The transcript is paged again (the worker is fetched first, for its status and length).
    with page.expect_request(lambda request: "/transcript/" in request.url, timeout=15_000):
        tap.send({"type": "reset", "reason": "stream_replaced", "earliest_seq": 1, "epoch": "epoch-2"})
    expect(page.locator("#events [data-seq]")).to_have_count(0)
    expect(page.locator("#events .ev-reset")).to_contain_text("stream was replaced")
    expect(page.locator("#transcript .tx-item")).to_have_count(2)
    # Events of the new stream from its first seq are shown again.
    send_input(page, "on the new stream")
    assert rendered_seqs(page)[0] > 1
    # Its epoch goes with the next resume.
    tap.close(1001)
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    query = parse_qs(urlsplit(tap.urls[-1]).query)
    assert query["epoch"] == ["epoch-2"], tap.urls[-1]


def test_the_first_state_frames_epoch_is_sent_back_on_resume(console_page: ConsolePage) -> None:
    tap = RelayTap()

    def with_epoch(frame: str) -> str:
        data = json.loads(frame)
        if data.get("type") == "state" and "epoch" not in data:
            data["epoch"] = "3f9c-epoch"
        return json.dumps(data)

    tap.rewrite = with_epoch
    page = start_worker(console_page, tap, "epoch please")
    first_url = tap.urls[0]
    assert "epoch" not in parse_qs(urlsplit(first_url).query), first_url  # nothing known yet
    last = rendered_seqs(page)[-1]
    tap.close(1001)  # the Backend going away
    expect(page.locator("#events .ev-sys")).to_contain_text(f"resumed after #{last}")
    query = parse_qs(urlsplit(tap.urls[-1]).query)
    assert query == {"after": [str(last)], "epoch": ["3f9c-epoch"]}, tap.urls[-1]
    send_input(page, "still gapless")
