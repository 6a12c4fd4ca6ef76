"""The console page at ``/`` and its login/logout pages (the browser drives them in tests/browser)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.test import Client

from runtimes.models import Runtime
from yoi_backend.security import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.django_db

RUNTIME_TOKEN_ENV = "YOI_RUNTIME_TOKEN_TEST_CONSOLE_RUNTIME"
RUNTIME_TOKEN = "console-view-token-4f1b9e0c-never-shown"
RUNTIME_BASE_URL = "http://10.11.12.13:38899/prefix"
STATIC_FILES = ("workers/console.js", "workers/console.css")


@pytest.fixture
def logged_in(user: User) -> Client:
    """A browser-like client with a session for ``user``."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def remote_runtime(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A remote runtime row whose address and token must never reach the page."""
    monkeypatch.setenv(RUNTIME_TOKEN_ENV, RUNTIME_TOKEN)
    return Runtime.objects.create(
        runtime_id="far",
        display_name="Far host",
        kind=Runtime.Kind.REMOTE,
        base_url=RUNTIME_BASE_URL,
        token_ref=f"env:{RUNTIME_TOKEN_ENV}",
    )


def test_anonymous_is_sent_to_the_login_page() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_login_page_renders_with_the_console_style() -> None:
    response = Client().get("/login/?next=/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'name="username"' in body and 'name="password"' in body
    assert "csrfmiddlewaretoken" in body
    assert "workers/console.css" in body
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_login_with_a_password_lands_on_the_console(user: User) -> None:
    client = Client()
    response = client.post("/login/", {"username": "alice", "password": "alice-pw-for-tests", "next": "/"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_wrong_password_shows_an_error(user: User) -> None:
    response = Client().post("/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()


def test_logged_in_gets_the_page_with_a_csrf_cookie(logged_in: Client) -> None:
    response = logged_in.get("/")
    assert response.status_code == 200
    assert response.templates[0].name == "workers/console.html"
    body = response.content.decode()
    assert 'id="runtime-list"' in body and 'id="events"' in body and 'id="conn"' in body
    assert 'data-runtimes-url="/api/v1/runtimes/"' in body
    assert "alice" in body
    assert "csrftoken" in response.cookies
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_page_never_carries_a_runtime_address_or_token(logged_in: Client, remote_runtime: Runtime) -> None:
    body = logged_in.get("/").content.decode()
    for secret in (RUNTIME_BASE_URL, "10.11.12.13", "38899", RUNTIME_TOKEN, RUNTIME_TOKEN_ENV):
        assert secret not in body
    for name in STATIC_FILES:
        path = finders.find(name)
        assert path is not None
        text = Path(str(path)).read_text("utf-8")
        assert RUNTIME_BASE_URL not in text and RUNTIME_TOKEN not in text


def test_every_referenced_file_is_served_by_the_project(logged_in: Client) -> None:
    body = logged_in.get("/").content.decode()
    references = re.findall(r'(?:src|href)="([^"]*)"', body)
    assert references
    for reference in references:
        assert not re.match(r"^(?:[a-z]+:)?//", reference, re.IGNORECASE), reference
        assert reference.startswith(("/", "#", "data:")), reference
    static = [reference for reference in references if reference.startswith("/static/")]
    assert set(STATIC_FILES) == {reference.removeprefix("/static/") for reference in static}
    for name in STATIC_FILES:
        assert finders.find(name) is not None


def test_scripts_use_no_external_urls_and_no_html_injection() -> None:
    for name in STATIC_FILES:
        text = Path(str(finders.find(name))).read_text("utf-8")
        assert not re.search(r"https?://", text), name
        assert "@import" not in text
    script = Path(str(finders.find("workers/console.js"))).read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_logout_is_a_post_that_ends_the_session(logged_in: Client) -> None:
    assert logged_in.get("/logout/").status_code == 405
    response = logged_in.post("/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert logged_in.get("/").status_code == 302
