"""Read queries over runtimes: what a user may see, from the cache (no upstream call unless stale)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from runtimes.errors import RuntimeNotFound
from runtimes.health import runtime_probe
from runtimes.models import Runtime
from runtimes.registry import RuntimeConnection, registry
from runtimes.types import Capabilities

# The user of a request: the project uses Django's default user model.
RequestUser = User | AnonymousUser


@dataclass(frozen=True)
class RuntimeView:
    """A runtime as a browser sees it: identity, kind, cached status and capabilities; never its address."""

    runtime_id: str
    display_name: str
    kind: str
    enabled: bool
    state: str
    checked_at: datetime | None
    last_seen_at: datetime | None
    error_code: str
    capabilities: Capabilities
    error_reason: str = ""


def _group_ids(user: User) -> frozenset[int]:
    """The user's group ids, looked up once per request user object."""
    cached: frozenset[int] | None = getattr(user, "_yoi_group_ids", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("id", flat=True))
        user._yoi_group_ids = cached  # type: ignore[attr-defined]
    return cached


def runtime_is_visible(*, connection: RuntimeConnection, user: RequestUser) -> bool:
    """Staff see every runtime; others see runtimes with no groups, or sharing a group with them."""
    if not user.is_authenticated:
        return False
    if user.is_staff or not connection.group_ids:
        return True
    assert isinstance(user, User)
    return bool(connection.group_ids & _group_ids(user))


def runtime_require_visible(*, runtime_id: str, user: RequestUser) -> RuntimeConnection:
    """The runtime's connection if this user may see it; RuntimeNotFound otherwise (no hint it exists)."""
    connection = registry.connections().get(runtime_id)
    if connection is None or not runtime_is_visible(connection=connection, user=user):
        raise RuntimeNotFound(runtime_id=runtime_id)
    return connection


def _views(runtime_ids: list[str] | None) -> list[RuntimeView]:
    rows = Runtime.objects.order_by("runtime_id")
    if runtime_ids is not None:
        rows = rows.filter(runtime_id__in=runtime_ids)
    return [
        RuntimeView(
            runtime_id=row.runtime_id,
            display_name=row.display_name,
            kind=row.kind,
            enabled=row.enabled,
            state=row.status if row.enabled else "disabled",
            checked_at=row.checked_at,
            last_seen_at=row.last_seen_at,
            error_code=row.status_error_code,
            capabilities=Capabilities.from_json(row.capabilities),
            error_reason=row.status_reason,
        )
        for row in rows
    ]


def runtime_list_visible(*, user: RequestUser) -> list[RuntimeView]:
    """Every runtime this user may see, from the cache: never an upstream call."""
    connections = registry.connections()
    visible = [rid for rid, conn in connections.items() if runtime_is_visible(connection=conn, user=user)]
    return _views(visible)


def runtime_get_visible(*, runtime_id: str, user: RequestUser, probe: bool = False) -> RuntimeView:
    """One runtime; its cached status is refreshed first when older than YOI_STATUS_STALE_SECONDS, or in any
    case with ``probe`` (the console's "Refresh status": a real probe, whatever the breaker says)."""
    connection = runtime_require_visible(runtime_id=runtime_id, user=user)
    views = _views([runtime_id])
    if not views:
        raise RuntimeNotFound(runtime_id=runtime_id)
    view = views[0]
    stale_before = timezone.now() - timedelta(seconds=float(settings.YOI_STATUS_STALE_SECONDS))
    stale = view.checked_at is None or view.checked_at < stale_before
    if connection.enabled and (probe or (stale and registry.breaker_state(runtime_id) == "closed")):
        runtime_probe(runtime_id=runtime_id, source="refresh" if probe else "stale")
        view = _views([runtime_id])[0]
    return view
