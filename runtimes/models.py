"""The runtime registry rows and the audit log of worker commands."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from runtimes.config import (
    MAX_TIMEOUT,
    REMOTE_CONNECTION_KEYS,
    embedded_connection_problems,
    remote_connection_problems,
    validate_max_in_flight,
    validate_timeout,
)
from runtimes.secrets import SecretPolicy

runtime_id_validator = RegexValidator(
    regex=r"^[A-Za-z0-9_:-]{1,120}\Z", message="runtime_id must match [A-Za-z0-9_:-]{1,120}"
)

# Fields that say where a runtime is reached and with which credential: changing them needs the permission
# runtimes.change_runtime_connection (the admin shows them read-only without it).
AIMING_FIELDS: tuple[str, ...] = ("kind", *REMOTE_CONNECTION_KEYS)
# Fields that decide which upstream a row points at; changing any of them invalidates the status cache.
CONNECTION_FIELDS: frozenset[str] = frozenset({*AIMING_FIELDS, "connect_timeout", "read_timeout", "enabled"})
# The probe-maintained cache; operators read it, nothing but the health code writes it.
STATUS_CACHE_FIELDS: tuple[str, ...] = (
    "capabilities",
    "status",
    "status_error_code",
    "status_reason",
    "last_seen_at",
    "checked_at",
    "consecutive_failures",
)


class Runtime(models.Model):
    """A runtime the Backend can route to: where it is, how to authenticate, and its cached health.

    The token itself is never stored: ``token_ref`` says where it lives (``env:NAME`` or ``file:/path``).
    """

    class Kind(models.TextChoices):
        EMBEDDED = "embedded", "Embedded"
        REMOTE = "remote", "Remote"

    class Status(models.TextChoices):
        CONFIGURED = "configured", "Configured"
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        UNAUTHORIZED = "unauthorized", "Unauthorized"
        ERROR = "error", "Error"

    runtime_id = models.CharField(max_length=120, unique=True, validators=[runtime_id_validator])
    display_name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    base_url = models.CharField(
        max_length=500, blank=True, help_text="http(s) URL of a remote runtime; empty for embedded."
    )
    token_ref = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where the token lives: env:NAME or file:/absolute/path (never the token).",
    )
    enabled = models.BooleanField(default=True, help_text="A disabled runtime gets no upstream traffic.")
    connect_timeout = models.FloatField(default=2.0, help_text="Seconds.")
    read_timeout = models.FloatField(default=10.0, help_text="Seconds.")
    tls_ca_file = models.CharField(
        max_length=500, blank=True, help_text="CA bundle (PEM) to trust for this runtime; empty = system store."
    )
    tls_client_cert_file = models.CharField(
        max_length=500, blank=True, help_text="Client certificate (PEM) for mTLS; empty = none."
    )
    tls_client_key_ref = models.CharField(
        max_length=500, blank=True, help_text="Where the mTLS client key lives: a secret ref like token_ref."
    )
    allow_insecure_http = models.BooleanField(
        default=False, help_text="Allow plain http:// to a host that is not loopback (the token in cleartext)."
    )
    max_in_flight = models.PositiveIntegerField(
        default=32, help_text="Bulkhead: at most this many requests in flight to this runtime."
    )
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="runtimes",
        help_text="Groups that may use it; empty = every authenticated user. Staff see all.",
    )

    capabilities = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONFIGURED)
    status_error_code = models.CharField(max_length=64, blank=True)
    status_reason = models.CharField(
        max_length=64, blank=True, help_text='Why, when it says: "tls", or the setting at fault (e.g. token_ref).'
    )
    last_seen_at = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    # Moves on every save(). Running processes re-read the rows every YOI_REGISTRY_REFRESH_SECONDS and rebuild a
    # handle when its connection fields changed (runtimes/registry.py).
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["runtime_id"]
        permissions = [
            ("change_runtime_connection", "Can change where a runtime is reached and with which credential"),
        ]

    def __str__(self) -> str:
        return self.runtime_id

    def __repr__(self) -> str:
        return f"<Runtime runtime_id={self.runtime_id!r}>"

    def clean_fields(self, exclude: Collection[str] | None = None) -> None:
        """Field checks, plus the connection rules of the config file (runtimes/config.py) for the fields
        being validated: a form that shows a field read-only excludes it, and its stored value stands."""
        errors: dict[str, list[Any]] = {}
        try:
            super().clean_fields(exclude=exclude)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        skipped = set(exclude or ())
        values = {key: getattr(self, key) for key in REMOTE_CONNECTION_KEYS}
        if self.kind == self.Kind.REMOTE:
            problems = remote_connection_problems(values, policy=SecretPolicy.from_settings())
        else:
            problems = embedded_connection_problems(values)
        for key, message in problems:
            if key not in skipped and key not in errors:
                errors.setdefault(key, []).append(message)
        for key in ("connect_timeout", "read_timeout"):
            value = getattr(self, key)
            if value is None or key in skipped or key in errors:
                continue
            try:
                validate_timeout(value, key=key)
            except ValueError:
                errors.setdefault(key, []).append(f"Must be greater than 0 and at most {MAX_TIMEOUT:g} seconds.")
        if self.max_in_flight is not None:
            try:
                validate_max_in_flight(self.max_in_flight)
            except ValueError as exc:
                errors.setdefault("max_in_flight", []).append(str(exc))
        if errors:
            raise ValidationError(errors)

    def reset_status_cache(self) -> None:
        """Forget cached health and capabilities (in memory): they described the previous target."""
        self.capabilities = {}
        self.status = self.Status.CONFIGURED
        self.status_error_code = ""
        self.status_reason = ""
        self.last_seen_at = None
        self.checked_at = None
        self.consecutive_failures = 0


class AuditEvent(models.Model):
    """One worker command a user sent through the Backend, kept even after its runtime row is gone."""

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        INPUT = "input", "Input"
        STOP = "stop", "Stop"
        CANCEL = "cancel", "Cancel"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Denormalised so the record still says who acted after the user is deleted.
    username = models.CharField(max_length=150, blank=True)
    # Not a foreign key: the history outlives the runtime row.
    runtime_id = models.CharField(max_length=120, db_index=True)
    worker_id = models.CharField(max_length=120, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    outcome = models.CharField(max_length=64, help_text='"ok" or the error code.')
    latency_ms = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        target = f"{self.runtime_id}/{self.worker_id}" if self.worker_id else self.runtime_id
        return f"{self.action} {target}: {self.outcome}"

    def __repr__(self) -> str:
        return (
            f"<AuditEvent action={self.action!r} runtime_id={self.runtime_id!r} "
            f"worker_id={self.worker_id!r} outcome={self.outcome!r}>"
        )


class ProbeRecord(models.Model):
    """One probe of a runtime and what it found: the recent history the admin shows (the newest
    ``PROBE_HISTORY`` per runtime are kept)."""

    class Source(models.TextChoices):
        COMMAND = "command", "probe_runtimes"
        ADMIN = "admin", "Admin"
        BACKGROUND = "background", "Background re-probe"
        REFRESH = "refresh", "Refresh status"
        STALE = "stale", "Stale read"

    runtime_id = models.CharField(max_length=120)
    state = models.CharField(max_length=16, help_text="The status the probe found (online, offline, ...).")
    code = models.CharField(max_length=64, blank=True, help_text="The error code; empty when online.")
    latency_ms = models.FloatField()
    source = models.CharField(max_length=16, choices=Source.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["runtime_id", "-created_at"], name="runtimes_probe_recent")]

    def __str__(self) -> str:
        return f"{self.runtime_id}: {self.state}"

    def __repr__(self) -> str:
        return f"<ProbeRecord runtime_id={self.runtime_id!r} state={self.state!r} code={self.code!r}>"
