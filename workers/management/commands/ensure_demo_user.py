"""``manage.py ensure_demo_user``: create a demo user when the database has no user at all."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERNAME = "demo"


class Command(BaseCommand):
    """Create ``demo`` (staff, with a random password printed once) on an empty user table."""

    help = "Create a demo user if no user exists and print its credentials once."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.exists():
            self.stdout.write("users exist; no demo user created")
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username=DEMO_USERNAME, email="", password=password)
        self.stdout.write(
            f"created demo user: username={DEMO_USERNAME} password={password}  (shown once; keep it)"
        )
