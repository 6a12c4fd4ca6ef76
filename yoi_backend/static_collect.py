"""Static files for production: collected before the server listens, so no page fails on a missing manifest.

With ``DJANGO_DEBUG=0`` pages name their static files through WhiteNoise's manifest (``staticfiles.json`` in
``STATIC_ROOT``); a page rendered before ``collectstatic`` ran — or after an upgrade added a file the
manifest does not know — is a 500. The server entry point (``yoi_backend/serve.py``) calls
``ensure_collected`` first: it runs ``collectstatic`` when the manifest is missing, lacks a file the
finders know, or is older than one of them, and otherwise costs one directory walk. A lock file makes
processes that share ``STATIC_ROOT`` take turns.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles.finders import get_finders
from django.core.management import call_command

logger = logging.getLogger(__name__)
MANIFEST_NAME = "staticfiles.json"
LOCK_NAME = ".collectstatic.lock"


def collected_is_current(static_root: Path) -> bool:
    """Whether the manifest in ``static_root`` lists every file the finders know, none of them newer."""
    manifest = static_root / MANIFEST_NAME
    try:
        collected_at = manifest.stat().st_mtime
        paths = json.loads(manifest.read_text("utf-8")).get("paths", {})
    except (OSError, ValueError, AttributeError):
        return False
    ignore_patterns = apps.get_app_config("staticfiles").ignore_patterns  # type: ignore[attr-defined]
    for finder in get_finders():
        for path, storage in finder.list(ignore_patterns):
            if path not in paths or os.stat(storage.path(path)).st_mtime > collected_at:
                return False
    return True


def ensure_collected() -> bool:
    """Run ``collectstatic`` unless DEBUG serves files from the finders or the collected files are current.

    True when it ran.
    """
    if settings.DEBUG:
        return False
    static_root = Path(settings.STATIC_ROOT)
    static_root.mkdir(parents=True, exist_ok=True)
    with (static_root / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if collected_is_current(static_root):
            return False
        logger.info("yoi_backend.static.collecting")
        call_command("collectstatic", interactive=False, verbosity=0)
        return True
