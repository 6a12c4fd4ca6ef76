"""A runtime that returns its URL, host:port, a path, a traceback and the Backend's secrets in every field of
every success and error body, and in event payloads (tests/workers/hostile_runtime.py).

None of it reaches an API response, a WebSocket frame, the console page or an admin page; the only exception
is agent content (transcript item content, event payloads), where URLs and paths pass as the agent wrote
them and only secret values are redacted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from runtimes.models import Runtime
from runtimes.scrub import REDACTED, known_secrets
from tests.workers.hostile_runtime import LEAK_PATH, RID, WID, HostileRuntime, Poison
from tests.workers.ws_helpers import events_path, is_event, open_socket

TOKEN_ENV = "YOI_RUNTIME_TOKEN_HOSTILE"
TOKEN = "tok-hostile-backend-credential-31c9e7"
OTHER_ENV = "YOI_RUNTIME_TOKEN_HOSTILE_OTHER"
OTHER_TOKEN = "tok-another-runtimes-credential-8d02aa"


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch, db: None) -> Iterator[HostileRuntime]:
    """The misbehaving runtime and its row, plus a second row whose token it also knows."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(OTHER_ENV, OTHER_TOKEN)
    known_secrets.reset()  # the Backend's own values are collected again, with this test's environment
    server = HostileRuntime(token=TOKEN, other_token=OTHER_TOKEN, secret_key=settings.SECRET_KEY).start()
    Runtime.objects.create(
        runtime_id=RID,
        display_name="Hostile",
        kind=Runtime.Kind.REMOTE,
        base_url=server.base_url,
        token_ref=f"env:{TOKEN_ENV}",
        connect_timeout=2.0,
        read_timeout=5.0,
    )
    Runtime.objects.create(
        runtime_id="other",
        display_name="Other",
        kind=Runtime.Kind.REMOTE,
        base_url="http://127.0.0.1:9",
        token_ref=f"env:{OTHER_ENV}",
        enabled=False,
    )
    try:
        yield server
    finally:
        server.stop()


def strings(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string of a JSON value (keys too) with the path it is at."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), str(key)
            yield from strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, (*path, index))


def is_agent_content(path: tuple[Any, ...]) -> bool:
    """Transcript item content, or anything inside an event frame's payload."""
    return (len(path) >= 3 and path[-3] == "items" and path[-1] == "content") or (bool(path) and path[0] == "data")


def check_json(label: str, body: Any, poison: Poison) -> None:
    """No forbidden value in metadata, no secret in agent content."""
    for path, text in strings(body):
        forbidden = poison.secrets() if is_agent_content(path) else [*poison.forbidden(), "127.0.0.1"]
        for value in forbidden:
            assert value.lower() not in text.lower(), f"{label} at {path}: {value!r} in {text!r}"


def check_page(label: str, html: str, poison: Poison, *, allowed: tuple[str, ...] = ()) -> None:
    """No forbidden value anywhere in a page (operator-configured values in ``allowed`` removed first)."""
    for value in allowed:
        html = html.replace(value, "")
    for value in [*poison.forbidden(), "127.0.0.1"]:
        assert value not in html, f"{label}: {value!r} in the page"


def test_no_runtime_supplied_address_path_traceback_or_secret_reaches_the_api_console_or_admin(
    hostile: HostileRuntime,
) -> None:
    poison = hostile.poison
    user = User.objects.create_user("alice", "", "alice-pw-for-tests")
    api = APIClient()
    api.force_authenticate(user)
    base = f"/api/v1/runtimes/{RID}"
    worker = f"{base}/workers/{WID}"
    calls: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("GET", f"{base}/", None, 200),  # stale: probes first, capabilities cached
        ("GET", "/api/v1/runtimes/", None, 200),
        ("GET", f"{base}/workers/", None, 200),
        ("POST", f"{base}/workers/", {"profile": "example", "intent": {"kind": "task", "goal": "x"}}, 201),
        ("GET", f"{worker}/", None, 200),
        ("POST", f"{worker}/input/", {"content": "hi"}, 202),
        ("POST", f"{worker}/stop/", {}, 200),
        ("POST", f"{worker}/cancel/", {"reason": "done"}, 200),
        ("GET", f"{worker}/transcript/?start=0&limit=2", None, 200),
        ("GET", "/api/v1/workers/", None, 200),
        ("GET", f"{base}/workers/w-missing/", None, 404),
        ("GET", f"{base}/workers/w-broken/", None, 502),
        ("POST", f"{base}/workers/w-done/input/", {"content": "hi"}, 409),
        ("POST", f"{base}/workers/w-refusing/input/", {"content": "hi"}, 422),
    ]
    answers: dict[str, Any] = {}
    for method, path, body, status in calls:
        response = api.get(path) if method == "GET" else api.post(path, body, format="json")
        assert response.status_code == status, (path, response.content[:500])
        check_json(f"{method} {path}", response.json(), poison)
        for header, value in response.headers.items():
            check_json(f"{method} {path} header {header}", value, poison)
        answers[path] = response.json()

    # Agent content passes with its URLs and paths; only the secrets in it are redacted.
    items = answers[f"{worker}/transcript/?start=0&limit=2"]["items"]
    assert poison.url in items[0]["content"] and LEAK_PATH in items[0]["content"]
    assert REDACTED in items[0]["content"]
    # Metadata was scrubbed, not dropped.
    profiles = answers[f"{base}/"]["capabilities"]["profiles"]
    assert profiles[0]["name"].startswith("profile.name: see <url> or <host>")
    rejected = answers[f"{base}/workers/w-refusing/input/"]["error"]
    assert rejected["code"] == "runtime_rejected" and "<path>" in rejected["message"]
    assert len(hostile.requests) >= len(calls)

    # The console page carries no runtime data at all; the admin shows the operator's own base_url only.
    browser = Client()
    browser.force_login(user)
    check_page("console", browser.get("/").content.decode(), poison)
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "", "root-pw-for-tests"))
    row = Runtime.objects.get(runtime_id=RID)
    for path in ("/admin/runtimes/runtime/", f"/admin/runtimes/runtime/{row.pk}/change/"):
        page = admin.get(path)
        assert page.status_code == 200
        check_page(f"admin {path}", page.content.decode(), poison, allowed=(f'value="{row.base_url}"',))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("quick_relay")
async def test_no_poison_reaches_a_websocket_frame_outside_event_payloads(hostile: HostileRuntime) -> None:
    poison = hostile.poison
    user = await sync_to_async(User.objects.create_user)("bob", "", "bob-pw-for-tests")
    socket_ = await open_socket(events_path(RID, WID, "after=0"), user=user)
    try:
        assert socket_.accepted
        await socket_.read_until(is_event("worker_exited"))
    finally:
        await socket_.disconnect()
    for text in socket_.texts:
        check_json("frame", json.loads(text), poison)
    events = socket_.events()
    assert [frame["seq"] for frame in events] == [1, 2, 3, 4]
    assert events[2]["event"].startswith("event.kind: see <url>")
    payload = events[0]["data"]["text"]
    assert poison.url in payload and LEAK_PATH in payload and REDACTED in payload

    missing = await open_socket(events_path(RID, "w-missing"), user=user)
    try:
        await missing.read_until_closed()
    finally:
        await missing.disconnect()
    assert missing.frames and missing.frames[0]["type"] == "error"
    for text in missing.texts:
        check_json("error frame", json.loads(text), poison)
