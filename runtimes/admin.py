"""Operator admin for runtimes (status badge, "probe now") and the read-only audit log.

Operators see and edit ``base_url`` and the token *ref*; nothing here resolves a ref, so a token value
can never reach a page.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from runtimes.health import probe_runtimes
from runtimes.models import CONNECTION_FIELDS, STATUS_CACHE_FIELDS, AuditEvent, Runtime
from runtimes.types import Capabilities

STATUS_COLORS: dict[str, str] = {
    Runtime.Status.ONLINE: "#1e7e34",
    Runtime.Status.OFFLINE: "#6c757d",
    Runtime.Status.UNAUTHORIZED: "#b35900",
    Runtime.Status.ERROR: "#b02a37",
    Runtime.Status.CONFIGURED: "#0b5ed7",
}
MAX_SUMMARY_PROFILES = 4


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
        "enabled",
    )
    list_display_links = ("runtime_id",)
    list_editable = ("enabled",)
    list_filter = ("kind", "status", "enabled", "groups")
    search_fields = ("runtime_id", "display_name")
    ordering = ("runtime_id",)
    filter_horizontal = ("groups",)
    actions = ("probe_now",)
    readonly_fields = (*STATUS_CACHE_FIELDS, "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("runtime_id", "display_name", "kind", "enabled")}),
        (
            "Connection",
            {
                "fields": ("base_url", "token_ref", "connect_timeout", "read_timeout"),
                "description": "token_ref says where the bearer token lives (env:NAME or file:/absolute/path). "
                "The token itself is never stored or shown.",
            },
        ),
        ("Access", {"fields": ("groups",)}),
        ("Status (maintained by probes)", {"fields": (*STATUS_CACHE_FIELDS, "created_at", "updated_at")}),
    )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Runtime) -> SafeString:
        """The cached status as a coloured badge, with the error code when there is one."""
        color = STATUS_COLORS.get(obj.status, "#6c757d")
        label = obj.get_status_display()
        if obj.status_error_code:
            label = f"{label} ({obj.status_error_code})"
        return format_html(
            '<span class="yoi-status yoi-status-{}" style="background:{};color:#fff;padding:1px 6px;'
            'border-radius:8px;white-space:nowrap">{}</span>',
            obj.status,
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
        runtime_ids = sorted(queryset.values_list("runtime_id", flat=True))
        for result in probe_runtimes(runtime_ids=runtime_ids):
            text = f"{result.runtime_id}: {result.state}" + (
                f" ({result.error_code})" if result.error_code else ""
            )
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
