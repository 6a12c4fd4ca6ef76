"""App config of the workers app."""

from __future__ import annotations

from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """Browser-facing API over workers of every runtime."""

    name = "workers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Open event sockets follow changes of users, groups, sessions and runtimes (workers.signals)."""
        from workers import signals

        signals.connect()
