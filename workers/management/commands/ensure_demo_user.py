"""``manage.py ensure_demo_user``: create a demo user when the database has no user at all."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

DEMO_USERNAME = "demo"
PASSWORD_ATTEMPTS = 10


class Command(BaseCommand):
    """Create ``demo`` (staff, with a random password printed once) on an empty user table."""

    help = "Create a demo user if no user exists and print its credentials once."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.exists():
            self.stdout.write("users exist; no demo user created")
            return
        password = self._valid_password(users(username=DEMO_USERNAME))
        users.objects.create_superuser(username=DEMO_USERNAME, email="", password=password)
        self.stdout.write(
            f"created demo user: username={DEMO_USERNAME} password={password}  (shown once; keep it)"
        )

    @staticmethod
    def _valid_password(user: Any) -> str:
        """A random password that passes AUTH_PASSWORD_VALIDATORS (a draw could, rarely, be all digits)."""
        for _ in range(PASSWORD_ATTEMPTS):
            password = secrets.token_urlsafe(12)
            try:
                validate_password(password, user=user)
            except ValidationError:
                continue
            return password
        raise CommandError("could not make a demo password that passes AUTH_PASSWORD_VALIDATORS")
