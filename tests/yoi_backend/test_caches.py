"""Sessions are cached per process for at most YOI_SESSION_CACHE_SECONDS (yoi_backend/caches.py)."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core.cache import caches
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from yoi_backend.caches import BoundedLocMemCache


def test_every_entry_lives_at_most_the_cache_timeout() -> None:
    bounded = BoundedLocMemCache("test-bounded", {"TIMEOUT": 5})
    now = time.time()
    for asked in (None, 1209600, 60):
        expiry = bounded.get_backend_timeout(asked)
        assert expiry is not None and expiry - now <= 5.5
    assert bounded.get_backend_timeout(2) - now <= 2.5  # shorter lifetimes are kept


def test_sessions_use_the_bounded_cache_without_redis() -> None:
    assert settings.SESSION_ENGINE == "django.contrib.sessions.backends.cached_db"
    if not settings.REDIS_URL:
        assert isinstance(caches["default"], BoundedLocMemCache)
        assert caches["default"].default_timeout == settings.YOI_SESSION_CACHE_SECONDS


@pytest.mark.django_db
def test_a_session_deleted_elsewhere_ends_here_once_its_cached_copy_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = User.objects.create_user("cache-user", password="pw-for-tests")
    # Made and later deleted "in another process": straight in the database, as watch_worker does.
    store = DatabaseSessionStore()
    store["_auth_user_id"] = str(user.pk)
    store["_auth_user_backend"] = settings.AUTHENTICATION_BACKENDS[-1]
    store["_auth_user_hash"] = user.get_session_auth_hash()
    store.create()
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = store.session_key
    assert client.get("/api/v1/runtimes/").status_code == 200  # read from the database, now cached
    store.delete()
    assert client.get("/api/v1/runtimes/").status_code == 200  # the cached copy still answers...
    later = time.time() + settings.YOI_SESSION_CACHE_SECONDS + 1
    monkeypatch.setattr("django.core.cache.backends.locmem.time.time", lambda: later)
    assert client.get("/api/v1/runtimes/").status_code in (401, 403)  # ...for at most the cache's lifetime


@pytest.mark.django_db
def test_a_sessions_user_is_read_from_the_cache_and_dropped_when_it_changes() -> None:
    user = User.objects.create_user("cached-user", password="pw-for-tests")
    client = Client()
    client.force_login(user)
    client.get("/api/v1/runtimes/")  # loads and caches the session and the user
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/runtimes/").status_code == 200
    read = " ".join(query["sql"] for query in queries.captured_queries)
    assert "auth_user" not in read and "django_session" not in read  # both came from the cache
    user.is_active = False
    user.save()  # drops the cached copy: the deactivation applies at once
    assert client.get("/api/v1/runtimes/").status_code in (401, 403)
