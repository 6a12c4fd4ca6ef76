"""``manage.py probe_runtimes [ids…]``: refresh the status + capability cache of runtimes, in parallel."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runtimes.health import probe_runtimes
from runtimes.registry import registry


class Command(BaseCommand):
    """Probe every runtime (or the given ids) and print one line per runtime."""

    help = "Probe runtimes and refresh their cached status and capabilities."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("runtime_ids", nargs="*", help="only these runtimes (default: all)")

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[str] = options["runtime_ids"]
        known = registry.connections(fresh=True)
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise CommandError(f"unknown runtime ids: {', '.join(unknown)}")
        results = probe_runtimes(runtime_ids=ids or None)
        if not results:
            self.stdout.write("no runtimes registered")
        for result in results:
            detail = f" {result.error_code}" if result.error_code else ""
            detail += f" ({result.reason})" if result.reason else ""
            self.stdout.write(f"{result.runtime_id}: {result.state}{detail} ({result.latency_ms:.0f} ms)")
