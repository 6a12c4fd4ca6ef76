"""The runtime's own config file (TOML): display name, limits, retention and named profiles.

Example::

    display_name = "Build host 1"
    default_profile = "builtin:echo"
    event_retention = 100000        # events kept per worker; older ones answer with a reset
    max_input_bytes = 1048576
    max_body_bytes = 2097152

    [[profile]]
    name = "example-agent"
    description = "The example agent of fixtures/agents"
    command = ["python3", "fixtures/agents/example_agent.py"]
    stop_grace_seconds = 5.0

    [[profile]]
    name = "burst-1000"
    builtin = "burst"               # a named variant of a builtin with its own options
    options = { count = 1000 }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_runtime.ids import is_valid_id

BUILTIN_KINDS = ("echo", "burst")
MAX_TRANSCRIPT_PAGE = 256
DEFAULT_MAX_INPUT_BYTES = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_EVENT_RETENTION = 100_000


class ConfigError(ValueError):
    """The runtime config file is invalid; the message names the key at fault."""


@dataclass(frozen=True)
class ProfileSpec:
    """What a worker runs: a builtin executor (``builtin``) or a subprocess (``command``)."""

    name: str
    description: str
    builtin: str | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stop_grace_seconds: float = 5.0
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, str]:
        """How the runtime summary lists the profile (never its command line)."""
        return {"name": self.name, "description": self.description}


BUILTIN_PROFILES: tuple[ProfileSpec, ...] = (
    ProfileSpec(
        name="builtin:echo",
        description="Answers every input with an echo, streamed in chunks.",
        builtin="echo",
        options={"delay_ms": 10},
    ),
    ProfileSpec(
        name="builtin:burst",
        description="Emits `count` events per input as fast as it can (or at `rate` per second).",
        builtin="burst",
        options={"count": 100, "rate": 0},
    ),
)


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything a runtime is configured with besides its id and store."""

    display_name: str = "Reference runtime"
    default_profile: str = "builtin:echo"
    event_retention: int = DEFAULT_EVENT_RETENTION
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_transcript_page: int = MAX_TRANSCRIPT_PAGE
    profiles: tuple[ProfileSpec, ...] = BUILTIN_PROFILES

    def profile(self, name: str) -> ProfileSpec | None:
        """The profile of that name, if configured."""
        return next((p for p in self.profiles if p.name == name), None)


def _positive_int(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a positive integer")
    return value


def _parse_profile(index: int, table: Any) -> ProfileSpec:
    where = f"profile[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    name = table.get("name")
    if not is_valid_id(name) or str(name).startswith("builtin:"):
        raise ConfigError(f"{where}: name must be an id ([A-Za-z0-9_:-], not starting with builtin:)")
    assert isinstance(name, str)
    where = f"profile {name!r}"
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description must be a string")
    builtin, command = table.get("builtin"), table.get("command")
    if (builtin is None) == (command is None):
        raise ConfigError(f"{where}: give exactly one of builtin or command")
    if builtin is not None and builtin not in BUILTIN_KINDS:
        raise ConfigError(f"{where}: builtin must be one of {', '.join(BUILTIN_KINDS)}")
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command)
    ):
        raise ConfigError(f"{where}: command must be a non-empty list of strings")
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where}: env must be a table of strings")
    cwd = table.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(f"{where}: cwd must be a string")
    grace = table.get("stop_grace_seconds", 5.0)
    if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 < grace <= 300:
        raise ConfigError(f"{where}: stop_grace_seconds must be a number in (0, 300]")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: options must be a table")
    base = next((p.options for p in BUILTIN_PROFILES if p.builtin == builtin), {})
    return ProfileSpec(
        name=name,
        description=description,
        builtin=builtin,
        command=tuple(command or ()),
        env=dict(env),
        cwd=cwd,
        stop_grace_seconds=float(grace),
        options={**base, **options},
    )


def parse_config(data: dict[str, Any]) -> RuntimeConfig:
    """Validate a parsed TOML document into a RuntimeConfig."""
    display_name = data.get("display_name", RuntimeConfig.display_name)
    if not isinstance(display_name, str) or not display_name.strip():
        raise ConfigError("display_name must be a non-empty string")
    raw_profiles = data.get("profile", [])
    if not isinstance(raw_profiles, list):
        raise ConfigError("profile must be an array of tables ([[profile]])")
    named = [_parse_profile(i, table) for i, table in enumerate(raw_profiles)]
    names = [p.name for p in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"profile names must be unique: {', '.join(duplicates)}")
    profiles = BUILTIN_PROFILES + tuple(named)
    default_profile = data.get("default_profile", RuntimeConfig.default_profile)
    if not any(p.name == default_profile for p in profiles):
        raise ConfigError(f"default_profile {default_profile!r} is not a configured profile")
    return RuntimeConfig(
        display_name=display_name,
        default_profile=default_profile,
        event_retention=_positive_int(data, "event_retention", DEFAULT_EVENT_RETENTION, "runtime"),
        max_input_bytes=_positive_int(data, "max_input_bytes", DEFAULT_MAX_INPUT_BYTES, "runtime"),
        max_body_bytes=_positive_int(data, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, "runtime"),
        profiles=profiles,
    )


def load_config(path: Path | str) -> RuntimeConfig:
    """Read and validate a runtime config file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file is not valid TOML: {exc}") from exc
    return parse_config(data)
