"""Services of the runtimes app: writes to the registry (config sync first, probing and health below)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from django.db import transaction

from runtimes.config import RuntimeEntry
from runtimes.models import CONNECTION_FIELDS, Runtime

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Config sync (sync_runtimes)
# ---------------------------------------------------------------------------------------------------------

SyncOutcomeKind = Literal["created", "updated", "unchanged", "disabled"]
_SYNCED_FIELDS: tuple[str, ...] = (
    "display_name",
    "kind",
    "base_url",
    "token_ref",
    "connect_timeout",
    "read_timeout",
    "enabled",
    "max_in_flight",
    "tls_ca_file",
    "tls_client_cert_file",
    "tls_client_key_ref",
    "allow_insecure_http",
)


class RuntimeSyncError(ValueError):
    """A sync request that cannot be applied (unknown ids, conflicting options); nothing was changed."""


@dataclass(frozen=True)
class SyncOutcome:
    """What ``runtime_sync_config`` did to one runtime row."""

    runtime_id: str
    outcome: SyncOutcomeKind


def _apply_entry(entry: RuntimeEntry, row: Runtime | None) -> SyncOutcome:
    if row is None:
        Runtime.objects.create(
            **{name: getattr(entry, name) for name in _SYNCED_FIELDS}, runtime_id=entry.runtime_id
        )
        logger.info("runtimes.sync.created", extra={"runtime_id": entry.runtime_id})
        return SyncOutcome(entry.runtime_id, "created")
    changed = [name for name in _SYNCED_FIELDS if getattr(row, name) != getattr(entry, name)]
    if not changed:
        return SyncOutcome(entry.runtime_id, "unchanged")
    for name in changed:
        setattr(row, name, getattr(entry, name))
    if CONNECTION_FIELDS.intersection(changed):
        row.reset_status_cache()
    # A full save() (updated_at moves); running processes pick the change up at their next row refresh.
    row.save()
    logger.info("runtimes.sync.updated", extra={"runtime_id": entry.runtime_id, "fields": changed})
    return SyncOutcome(entry.runtime_id, "updated")


def runtime_sync_config(
    *, entries: list[RuntimeEntry], only_ids: list[str] | None = None, prune: bool = False
) -> list[SyncOutcome]:
    """Upsert runtime rows from validated config entries, atomically; with ``prune``, disable rows not in it.

    Rows are never deleted (audit history refers to runtime ids). Outcomes come in file order, then the
    pruned rows by runtime_id.
    """
    by_id = {entry.runtime_id: entry for entry in entries}
    if len(by_id) != len(entries):
        raise RuntimeSyncError("the config entries contain duplicate runtime ids")
    if only_ids:
        if prune:
            raise RuntimeSyncError("--prune applies to the whole file; it cannot be combined with runtime ids")
        unknown = sorted(set(only_ids) - by_id.keys())
        if unknown:
            raise RuntimeSyncError(f"runtime ids not in the config file: {', '.join(unknown)}")
        wanted = set(only_ids)
        entries = [entry for entry in entries if entry.runtime_id in wanted]

    outcomes: list[SyncOutcome] = []
    with transaction.atomic():
        rows = {
            row.runtime_id: row
            for row in Runtime.objects.select_for_update().filter(runtime_id__in=[e.runtime_id for e in entries])
        }
        for entry in entries:
            outcomes.append(_apply_entry(entry, rows.get(entry.runtime_id)))
        if prune:
            missing = (
                Runtime.objects.select_for_update().exclude(runtime_id__in=by_id.keys()).order_by("runtime_id")
            )
            for row in missing:
                if not row.enabled:
                    outcomes.append(SyncOutcome(row.runtime_id, "unchanged"))
                    continue
                row.enabled = False
                row.reset_status_cache()
                row.save()
                logger.info("runtimes.sync.disabled", extra={"runtime_id": row.runtime_id})
                outcomes.append(SyncOutcome(row.runtime_id, "disabled"))
    return outcomes
