"""``manage.py sync_runtimes [ids…] [--file PATH] [--prune]``: apply the runtimes config file to the registry."""

from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runtimes.config import RuntimeConfigError, load_runtime_config
from runtimes.services import RuntimeSyncError, runtime_sync_config


class Command(BaseCommand):
    """Upsert runtimes from the TOML config by runtime_id; one output line per runtime."""

    help = (
        "Create or update runtimes from the runtimes config file (default: YOI_RUNTIMES_CONFIG). "
        "An invalid file changes nothing. --prune disables runtimes missing from the file."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("runtime_ids", nargs="*", metavar="runtime_id", help="Sync only these runtimes.")
        parser.add_argument("--file", dest="file", default=None, help="Path of the TOML runtimes config file.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Disable runtimes that are not in the file (they are never deleted).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path_text: str = options["file"] or settings.YOI_RUNTIMES_CONFIG
        if not path_text:
            raise CommandError("no runtimes config file: pass --file PATH or set YOI_RUNTIMES_CONFIG")
        path = Path(path_text)
        try:
            entries = load_runtime_config(path)
        except RuntimeConfigError as exc:
            raise CommandError(f"invalid runtimes config {path}:\n{exc}") from None
        try:
            outcomes = runtime_sync_config(
                entries=entries, only_ids=options["runtime_ids"] or None, prune=options["prune"]
            )
        except RuntimeSyncError as exc:
            raise CommandError(str(exc)) from None
        for outcome in outcomes:
            self.stdout.write(f"{outcome.runtime_id}: {outcome.outcome}")
