"""Operator admin for runtimes (status and transport badges, "probe now") and the read-only audit log.

Operators see ``base_url`` and the secret *refs*; changing where a runtime is reached or with which
credential (``AIMING_FIELDS``) needs ``runtimes.change_runtime_connection``, and without it those fields are
read-only. A ref is checked when written (a file is read to see that it is not empty) but its value is
never shown; the capabilities shown were scrubbed when they came from the runtime.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from runtimes.config import insecure_http
from runtimes.models import AIMING_FIELDS, CONNECTION_FIELDS, STATUS_CACHE_FIELDS, AuditEvent, Runtime
from runtimes.types import Capabilities

STATUS_COLORS: dict[str, str] = {
    Runtime.Status.ONLINE: "#1e7e34",
    Runtime.Status.OFFLINE: "#6c757d",
    Runtime.Status.UNAUTHORIZED: "#b35900",
    Runtime.Status.ERROR: "#b02a37",
    Runtime.Status.CONFIGURED: "#0b5ed7",
}
MAX_SUMMARY_PROFILES = 4
CONNECTION_PERMISSION = "runtimes.change_runtime_connection"
# What a status reason means, for operators (runtimes/errors.py RuntimeMisconfigured, the client's "tls").
REASON_MESSAGES: dict[str, str] = {
    "tls": "TLS failed: the runtime's certificate did not verify (CA, host name, validity), or the runtime "
    "refused the Backend's client certificate. Nothing was sent.",
    "base_url": "base_url cannot be used: plain http:// to a host that is not loopback needs "
    "allow_insecure_http, and TLS settings need https://. Nothing was sent.",
    "token_ref": "token_ref is refused: env: refs must name YOI_TOKEN_ENV_PREFIX<NAME>, file: refs a file "
    "inside YOI_SECRETS_DIR. Nothing was sent.",
    "tls_ca_file": "tls_ca_file cannot be used: missing, unreadable or not a PEM certificate bundle.",
    "tls_client_cert_file": "tls_client_cert_file cannot be used: missing, unreadable or not PEM.",
    "tls_client_key_ref": "tls_client_key_ref cannot be used: refused, missing, or not the key of the "
    "client certificate.",
}
TRANSPORT_COLORS: dict[str, str] = {"mTLS": "#1e7e34", "TLS": "#1e7e34", "http (loopback)": "#6c757d"}
INSECURE_LABEL = "INSECURE http"


@admin.register(Runtime)
class RuntimeAdmin(admin.ModelAdmin):
    """Runtimes with their cached health; the cache fields are read-only, the token value never shown."""

    list_display = (
        "runtime_id",
        "display_name",
        "kind",
        "status_badge",
        "last_seen_at",
        "checked_at",
        "capabilities_summary",
        "transport_badge",
        "enabled",
    )
    list_display_links = ("runtime_id",)
    list_editable = ("enabled",)
    list_filter = ("kind", "status", "enabled", "groups")
    search_fields = ("runtime_id", "display_name")
    ordering = ("runtime_id",)
    filter_horizontal = ("groups",)
    actions = ("probe_now",)
    readonly_fields = (
        "status_badge",
        *STATUS_CACHE_FIELDS,
        "status_message",
        "transport_badge",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("runtime_id", "display_name", "kind", "enabled")}),
        (
            "Connection",
            {
                "fields": (
                    "base_url",
                    "token_ref",
                    "connect_timeout",
                    "read_timeout",
                    "tls_ca_file",
                    "tls_client_cert_file",
                    "tls_client_key_ref",
                    "allow_insecure_http",
                    "transport_badge",
                ),
                "description": "token_ref and tls_client_key_ref say where a secret lives: env:NAME (NAME "
                "starting with YOI_TOKEN_ENV_PREFIX) or file:/path inside YOI_SECRETS_DIR. Secrets are never "
                "stored or shown. Changing these fields (and kind) needs the permission "
                "'Can change where a runtime is reached and with which credential'.",
            },
        ),
        ("Access", {"fields": ("groups",)}),
        (
            "Status (maintained by probes)",
            {"fields": ("status_badge", "status_message", *STATUS_CACHE_FIELDS, "created_at", "updated_at")},
        ),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        """A new row says where a runtime is reached and with which credential: the connection permission too."""
        return super().has_add_permission(request) and request.user.has_perm(CONNECTION_PERMISSION)

    def get_readonly_fields(self, request: HttpRequest, obj: Runtime | None = None) -> tuple[str, ...]:
        """Where a runtime is reached and with which credential is read-only without the connection permission."""
        fields = tuple(super().get_readonly_fields(request, obj))
        if request.user.has_perm(CONNECTION_PERMISSION):
            return fields
        return (*fields, *AIMING_FIELDS)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Runtime) -> SafeString:
        """The cached status as a coloured badge, with the error code when there is one."""
        color = STATUS_COLORS.get(obj.status, "#6c757d")
        label = obj.get_status_display()
        if obj.status_error_code:
            detail = (
                f"{obj.status_error_code}: {obj.status_reason}" if obj.status_reason else obj.status_error_code
            )
            label = f"{label} ({detail})"
        return format_html(
            '<span class="yoi-status yoi-status-{}" title="{}" style="background:{};color:#fff;padding:1px 6px;'
            'border-radius:8px;white-space:nowrap">{}</span>',
            obj.status,
            REASON_MESSAGES.get(obj.status_reason, ""),
            color,
            label,
        )

    @admin.display(description="status message")
    def status_message(self, obj: Runtime) -> str:
        """What the last failure's reason means, for an operator."""
        return REASON_MESSAGES.get(obj.status_reason, "—")

    @admin.display(description="transport")
    def transport_badge(self, obj: Runtime) -> SafeString | str:
        """How the remote hop is protected; plain http to a remote host is a warning."""
        if obj.kind != Runtime.Kind.REMOTE or not obj.base_url:
            return "—"
        if insecure_http(obj.base_url):
            label, color = INSECURE_LABEL, "#b02a37"
        elif obj.base_url.lower().startswith("https:"):
            label = "mTLS" if obj.tls_client_cert_file else "TLS"
            color = TRANSPORT_COLORS[label]
        else:
            label, color = "http (loopback)", TRANSPORT_COLORS["http (loopback)"]
        return format_html(
            '<span class="yoi-transport" style="background:{};color:#fff;padding:1px 6px;border-radius:8px;'
            'white-space:nowrap">{}</span>',
            color,
            label,
        )

    @admin.display(description="capabilities")
    def capabilities_summary(self, obj: Runtime) -> str:
        """Protocol version and profile names from the cached capabilities."""
        caps = Capabilities.from_json(obj.capabilities)
        parts: list[str] = []
        if caps.protocol_version:
            parts.append(f"v{caps.protocol_version}")
        if caps.profiles:
            names = [profile.name for profile in caps.profiles]
            shown = ", ".join(names[:MAX_SUMMARY_PROFILES])
            if len(names) > MAX_SUMMARY_PROFILES:
                shown += f" +{len(names) - MAX_SUMMARY_PROFILES}"
            parts.append(shown)
        return " · ".join(parts) or "—"

    def save_model(self, request: HttpRequest, obj: Runtime, form: ModelForm[Runtime], change: bool) -> None:
        """Save, dropping the cached status when the row now points somewhere else."""
        if change and CONNECTION_FIELDS.intersection(form.changed_data):
            obj.reset_status_cache()
        super().save_model(request, obj, form, change)

    @admin.action(description="Probe selected runtimes now")
    def probe_now(self, request: HttpRequest, queryset: QuerySet[Runtime]) -> None:
        """Probe the selected runtimes (refreshing their status cache) and report each one's state."""
        # Imported here: the health code pulls in the registry and handles, which the admin does not need.
        from runtimes.health import probe_runtimes

        runtime_ids = sorted(queryset.values_list("runtime_id", flat=True))
        for result in probe_runtimes(runtime_ids=runtime_ids):
            text = f"{result.runtime_id}: {result.state}" + (
                f" ({result.error_code})" if result.error_code else ""
            )
            if result.reason:
                text += f": {REASON_MESSAGES.get(result.reason, result.reason)}"
            level = messages.SUCCESS if result.state == Runtime.Status.ONLINE else messages.WARNING
            self.message_user(request, text, level=level)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log of worker commands: read-only for everyone, superusers included."""

    list_display = ("created_at", "username", "runtime_id", "worker_id", "action", "outcome", "latency_ms")
    list_filter = ("action", "outcome", "runtime_id")
    search_fields = ("username", "runtime_id", "worker_id")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
