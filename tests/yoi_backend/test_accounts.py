"""Accounts: Django's standard password validators, and revocation of API tokens and sessions when a user's
password changes or the user is deactivated (yoi_backend/auth.py)."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import password_validation
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-9F2k"
NEW_PASSWORD = "another-long-passphrase-7Qz"


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short1", "too short"),
        ("password123", "too common"),
        ("8274619305", "entirely numeric"),
        ("aliceliddell", "too similar"),
    ],
)
def test_the_standard_validators_are_on(password: str, message: str) -> None:
    user = User(username="aliceliddell", email="alice@example.invalid")
    with pytest.raises(ValidationError) as info:
        password_validation.validate_password(password, user=user)
    assert any(message in text for text in info.value.messages), info.value.messages


def test_the_demo_user_gets_a_password_that_passes_them() -> None:
    out = StringIO()
    call_command("ensure_demo_user", stdout=out)
    match = re.search(r"username=demo password=(\S+)", out.getvalue())
    assert match is not None
    password = match.group(1)
    user = User.objects.get(username="demo")
    password_validation.validate_password(password, user=user)
    assert user.check_password(password)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def is_logged_in(client: Client) -> bool:
    """The session still authenticates (the console redirects anonymous visitors to the login page)."""
    return client.get("/").status_code == 200


def token_works(key: str) -> bool:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api.get("/api/v1/runtimes/").status_code == 200


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", "alice@example.invalid", PASSWORD)


def test_a_password_change_revokes_tokens_and_sessions(alice: User) -> None:
    token = Token.objects.create(user=alice)
    first, second = logged_in(alice), logged_in(alice)
    bob = User.objects.create_user("bob", "", PASSWORD)
    bobs_session, bobs_token = logged_in(bob), Token.objects.create(user=bob)
    assert is_logged_in(first) and is_logged_in(second) and token_works(token.key)

    alice.set_password(NEW_PASSWORD)
    alice.save()
    assert not Token.objects.filter(user=alice).exists()
    assert not token_works(token.key)
    assert not is_logged_in(first) and not is_logged_in(second)
    # Nobody else is touched.
    assert is_logged_in(bobs_session) and token_works(bobs_token.key)


def test_changing_ones_own_password_keeps_that_session_and_ends_the_others(alice: User) -> None:
    alice.is_staff = True
    alice.save()
    token = Token.objects.create(user=alice)
    changer, other = logged_in(alice), logged_in(alice)
    response = changer.post(
        "/admin/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert is_logged_in(changer)
    assert not is_logged_in(other)
    assert not token_works(token.key)


def test_an_admin_setting_someone_elses_password_revokes_theirs(alice: User) -> None:
    token = Token.objects.create(user=alice)
    session = logged_in(alice)
    admin = logged_in(User.objects.create_superuser("root", "", "root-pw-for-tests-Zx81"))
    response = admin.post(
        f"/admin/auth/user/{alice.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert not is_logged_in(session) and not token_works(token.key)


def test_the_admin_refuses_a_weak_password(alice: User) -> None:
    admin = logged_in(User.objects.create_superuser("root", "", "root-pw-for-tests-Zx81"))
    response = admin.post(
        f"/admin/auth/user/{alice.pk}/password/",
        {"password1": "password123", "password2": "password123", "usable_password": "true"},
    )
    assert response.status_code == 200
    assert "too common" in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_deactivation_revokes_tokens_and_sessions(alice: User) -> None:
    token = Token.objects.create(user=alice)
    session = logged_in(alice)
    alice.is_active = False
    alice.save()
    assert not Token.objects.filter(pk=token.pk).exists()
    assert not is_logged_in(session)


def test_an_unusable_password_revokes_too(alice: User) -> None:
    token = Token.objects.create(user=alice)
    alice.set_unusable_password()
    alice._password = None  # type: ignore[attr-defined]  # as if the hash had been assigned directly
    alice.save()
    assert not Token.objects.filter(pk=token.pk).exists()


def test_ordinary_saves_revoke_nothing(alice: User) -> None:
    token = Token.objects.create(user=alice)
    session = logged_in(alice)
    alice.first_name = "Alice"
    alice.save()
    alice.save(update_fields=["last_login"])
    # A hasher upgrade at login re-saves the hash of the same password through check_password: not a change.
    alice.check_password(PASSWORD)
    alice.save(update_fields=["password"])
    assert Token.objects.filter(pk=token.pk).exists()
    assert is_logged_in(session)
