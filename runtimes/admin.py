"""Operator admin for runtimes (status and transport badges, "probe now", the operator view) and the
read-only audit log.

Operators see ``base_url`` and the secret *refs*; changing where a runtime is reached or with which
credential (``AIMING_FIELDS``) needs ``runtimes.change_runtime_connection``, and without it those fields are
read-only. A ref is checked when written (a file is read to see that it is not empty) but its value is
never shown; the capabilities shown were scrubbed when they came from the runtime. A runtime's page also
shows what an operator on call needs: its breaker and the streams and sockets this process holds for it,
its last probes and its audit rows.
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
from runtimes.config import insecure_http
from runtimes.health import probe_runtimes
from runtimes.models import (
    AIMING_FIELDS,
    CONNECTION_FIELDS,
    STATUS_CACHE_FIELDS,
    AuditEvent,
    ProbeRecord,
    Runtime,
)
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
# Transport label -> its badge's class in runtimes/admin.css.
TRANSPORT_CLASSES: dict[str, str] = {
    "mTLS": "yoi-transport-tls",
    "TLS": "yoi-transport-tls",
    "http (loopback)": "yoi-transport-loopback",
}
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
        *OPERATOR_FIELDS,
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
        ("Limits", {"fields": ("max_in_flight",)}),
        (
            "Status (maintained by probes)",
            {"fields": ("status_badge", "status_message", *STATUS_CACHE_FIELDS, "created_at", "updated_at")},
        ),
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
        label = obj.get_status_display()
        if obj.status_error_code:
            detail = (
                f"{obj.status_error_code}: {obj.status_reason}" if obj.status_reason else obj.status_error_code
            )
            label = f"{label} ({detail})"
        # Colours in runtimes/admin.css: the admin runs under the CSP, which allows no inline style.
        return format_html(
            '<span class="yoi-status yoi-status-{}" title="{}">{}</span>',
            obj.status,
            REASON_MESSAGES.get(obj.status_reason, ""),
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
            label, css = INSECURE_LABEL, "yoi-transport-insecure"
        elif obj.base_url.lower().startswith("https:"):
            label = "mTLS" if obj.tls_client_cert_file else "TLS"
            css = TRANSPORT_CLASSES[label]
        else:
            label = "http (loopback)"
            css = TRANSPORT_CLASSES[label]
        return format_html('<span class="yoi-transport {}">{}</span>', css, label)

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
        for result in probe_runtimes(runtime_ids=runtime_ids, source="admin"):
            text = f"{result.runtime_id}: {result.state}" + (
                f" ({result.error_code})" if result.error_code else ""
            )
            text += f" in {result.latency_ms:.1f} ms"
            if result.reason:
                text += f": {REASON_MESSAGES.get(result.reason, result.reason)}"
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
