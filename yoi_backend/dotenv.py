"""The ``.env`` file: read into the environment once, never over a variable that is already set."""

from __future__ import annotations

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent


def load_dotenv() -> Path | None:
    """Read ``YOI_ENV_FILE`` (default: ``.env`` in the repository root) when it exists; the file read."""
    path = Path(os.environ.get("YOI_ENV_FILE") or BASE_DIR / ".env")
    if not path.is_file():
        return None
    environ.Env.read_env(path)  # existing variables win over the file
    return path
