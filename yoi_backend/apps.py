"""App config of the project package itself: connects what must run in every process, server or command."""

from __future__ import annotations

from django.apps import AppConfig


class YoiBackendConfig(AppConfig):
    """The project's own signal handlers (yoi_backend/auth.py: cached users, credential revocation)."""

    name = "yoi_backend"
    label = "yoi_backend"

    def ready(self) -> None:
        # Connected here, not when the auth backend is first loaded: a password change made by a management
        # command (changepassword) must revoke tokens and sessions too.
        from yoi_backend import auth  # noqa: F401
