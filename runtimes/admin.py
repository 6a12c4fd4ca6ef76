"""Operator admin for runtimes (status badge, "probe now", the operator view) and the read-only audit log.

Operators see and edit ``base_url`` and the token *ref*; nothing here resolves a ref, so a token value
can never reach a page. A runtime's page also shows what an operator on call needs: its breaker and the
streams and sockets this process holds for it, its last probes and its audit rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from runtimes import metrics
from runtimes.models import CONNECTION_FIELDS, STATUS_CACHE_FIELDS, AuditEvent, ProbeRecord, Runtime
from runtimes.registry import registry
from runtimes.types import Capabilities

MAX_SUMMARY_PROFILES = 4
OPERATOR_ROWS = 10
BREAKER_LABELS = {
    "closed": "closed (calls go through)",
    "half_open": "half-open (one trial call)",
    "open": "open (fast-failing)",
}
OPERATOR_FIELDS = ("breaker_state", "open_streams", "recent_probes", "recent_audit")
_TABLE = '<table class="yoi-operator"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>'


def _table(headers: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> SafeString:
    """A small escaped HTML table ("none yet" when there are no rows)."""
    if not rows:
        return format_html("<span>{}</span>", "none yet")
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    return format_html(_TABLE, head, body)


def _ms(value: float) -> str:
    """A latency for people: milliseconds with one decimal."""
    return f"{value:.1f} ms"


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "—"


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
    readonly_fields = (*STATUS_CACHE_FIELDS, "created_at", "updated_at", *OPERATOR_FIELDS)
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
        ("Limits", {"fields": ("max_in_flight",)}),
        ("Status (maintained by probes)", {"fields": (*STATUS_CACHE_FIELDS, "created_at", "updated_at")}),
        (
            "Operator view",
            {
                "fields": OPERATOR_FIELDS,
                "description": "The breaker and the open streams and sockets are this Backend process's own "
                "(each process of a deployment has its own); probes and audit rows are shared.",
            },
        ),
    )

    class Media:
        css = {"all": ("runtimes/admin.css",)}

    def get_fieldsets(self, request: HttpRequest, obj: Runtime | None = None) -> Any:
        """The operator view only on an existing runtime's page."""
        fieldsets = list(super().get_fieldsets(request, obj))
        return fieldsets if obj is not None else [entry for entry in fieldsets if entry[0] != "Operator view"]

    @admin.display(description="circuit breaker (this process)")
    def breaker_state(self, obj: Runtime) -> str:
        """The runtime's breaker in the process serving this page."""
        state = registry.breaker_state(obj.runtime_id)
        return f"{BREAKER_LABELS.get(state, state)} — pid {os.getpid()}"

    @admin.display(description="open in this process")
    def open_streams(self, obj: Runtime) -> str:
        """Upstream event streams and browser sockets this process holds for the runtime."""
        counts = metrics.stream_counts(obj.runtime_id)
        return f"{counts.upstreams} upstream event stream(s), {counts.sockets} browser socket(s)"

    @admin.display(description="last probes")
    def recent_probes(self, obj: Runtime) -> SafeString:
        """The newest probes: when, by what, the state found, its code and latency."""
        probes = ProbeRecord.objects.filter(runtime_id=obj.runtime_id)[:OPERATOR_ROWS]
        rows = [
            (_when(p.created_at), p.get_source_display(), p.state, p.code or "—", _ms(p.latency_ms))
            for p in probes
        ]
        return _table(("time", "by", "result", "code", "latency"), rows)

    @admin.display(description="last commands (audit)")
    def recent_audit(self, obj: Runtime) -> SafeString:
        """The newest audit rows of commands sent to the runtime."""
        events = AuditEvent.objects.filter(runtime_id=obj.runtime_id)[:OPERATOR_ROWS]
        rows = [
            (_when(e.created_at), e.username or "—", e.action, e.worker_id or "—", e.outcome, _ms(e.latency_ms))
            for e in events
        ]
        return _table(("time", "user", "action", "worker", "outcome", "latency"), rows)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Runtime) -> SafeString:
        """The cached status as a coloured badge, with the error code when there is one."""
        label = obj.get_status_display()
        if obj.status_error_code:
            label = f"{label} ({obj.status_error_code})"
        # Colours in runtimes/admin.css: the admin runs under the CSP, which allows no inline style.
        return format_html('<span class="yoi-status yoi-status-{}">{}</span>', obj.status, label)

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
        for result in probe_runtimes(runtime_ids=runtime_ids, source="admin"):
            text = f"{result.runtime_id}: {result.state}" + (
                f" ({result.error_code})" if result.error_code else ""
            )
            text += f" in {result.latency_ms:.1f} ms"
            level = messages.SUCCESS if result.state == Runtime.Status.ONLINE else messages.WARNING
            self.message_user(request, text, level=level)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log of worker commands: read-only for everyone, superusers included."""

    list_display = ("created_at", "username", "runtime_id", "worker_id", "action", "outcome", "latency")
    list_filter = ("action", "outcome", "runtime_id")
    search_fields = ("username", "runtime_id", "worker_id")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: AuditEvent) -> str:
        """The command's latency in milliseconds with one decimal."""
        return _ms(obj.latency_ms)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
