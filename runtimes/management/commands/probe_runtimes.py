"""``manage.py probe_runtimes [ids…]``: refresh the status + capability cache of runtimes, in parallel.

A runtime this process cannot probe (its token ref does not resolve here, or its embedded store belongs to
the serving Backend) gets its line and leaves its row alone; the command then exits non-zero.
"""

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
        results = probe_runtimes(runtime_ids=ids or None, source="command")
        if not results:
            self.stdout.write("no runtimes registered")
        for result in results:
            detail = f" {result.error_code}" if result.error_code else ""
            detail += f" ({result.reason})" if result.reason else ""
            line = f"{result.runtime_id}: {result.state}{detail} ({result.latency_ms:.0f} ms)"
            if result.local:
                line += " - not probed from this process; its status was left as it was"
            self.stdout.write(line)
        local = [result.runtime_id for result in results if result.local]
        if local:
            # Its token ref does not resolve in this environment, or its embedded store is served elsewhere.
            raise CommandError(
                f"{len(local)} runtime(s) could not be probed from this process: {', '.join(local)}. "
                "Run probe_runtimes with the serving Backend's environment, or use the admin's probe."
            )
