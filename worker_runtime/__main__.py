"""``python -m worker_runtime``: the same CLI as ``yoi-runtime``."""

from __future__ import annotations

from worker_runtime.cli import main

raise SystemExit(main())
