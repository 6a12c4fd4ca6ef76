"""App config of the runtimes app."""

from __future__ import annotations

from django.apps import AppConfig


class RuntimesConfig(AppConfig):
    """The registry of runtimes and the handles that reach them."""

    name = "runtimes"
    default_auto_field = "django.db.models.BigAutoField"
