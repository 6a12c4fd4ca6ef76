"""Shared fixtures: real worker-runtime processes on 127.0.0.1 (no Django imports at module level)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_process import (
    RuntimeProcess,
    example_config,
    kill_spawned_since,
    spawned_count,
    start_runtime,
)

# Short, so idle-stream tests see pings quickly and SSE reads never block for long.
TEST_PING_INTERVAL = "0.5"

RuntimeFactory = Callable[..., RuntimeProcess]


@pytest.fixture
def runtime_factory(tmp_path: Path) -> Iterator[RuntimeFactory]:
    """Start runtimes in fresh directories under tmp_path; every process (restarts too) is killed after."""
    marker = spawned_count()
    counter = iter(range(1_000_000))

    def start(**kwargs: Any) -> RuntimeProcess:
        kwargs.setdefault("config_text", example_config())
        kwargs.setdefault("extra_args", ("--ping-interval", TEST_PING_INTERVAL))
        tmp_dir = kwargs.pop("tmp_dir", None) or tmp_path / f"runtime-{next(counter)}"
        return start_runtime(tmp_dir, **kwargs)

    try:
        yield start
    finally:
        kill_spawned_since(marker)


@pytest.fixture
def runtime_process(runtime_factory: RuntimeFactory) -> RuntimeProcess:
    """A runtime with the ``example-agent`` profile, a token and a short ping interval."""
    return runtime_factory()


@pytest.fixture
def small_retention_runtime(runtime_factory: RuntimeFactory) -> RuntimeProcess:
    """Like ``runtime_process``, but each worker keeps only its last 5 events."""
    return runtime_factory(config_text=example_config(event_retention=5))


@pytest.fixture
def secrets_dir(settings: Any, tmp_path: Path) -> Path:
    """A fresh ``YOI_SECRETS_DIR`` for this test: ``file:`` refs must point inside it."""
    directory = (tmp_path / "secrets").resolve()
    directory.mkdir()
    settings.YOI_SECRETS_DIR = directory
    return directory
