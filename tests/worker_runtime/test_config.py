"""The runtime config file: defaults, profiles, and validation errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker_runtime.config import (
    BUILTIN_PROFILES,
    DEFAULT_EVENT_RETENTION,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INPUT_BYTES,
    MAX_TRANSCRIPT_PAGE,
    ConfigError,
    ProfileSpec,
    RuntimeConfig,
    load_config,
    parse_config,
)

EXAMPLE = """
display_name = "Build host 1"
default_profile = "example-agent"
event_retention = 500
max_input_bytes = 4096
max_body_bytes = 8192
unknown_key_is_allowed = true

[[profile]]
name = "example-agent"
description = "The example agent"
command = ["python3", "fixtures/agents/example_agent.py"]
env = { MODE = "test" }
cwd = "/srv/agents"
stop_grace_seconds = 2

[[profile]]
name = "burst-1000"
builtin = "burst"
options = { count = 1000 }
"""


def profile(**fields: Any) -> dict[str, Any]:
    return {"name": "agent", "command": ["run-agent"], **fields}


def test_an_empty_config_is_the_default() -> None:
    config = parse_config({})

    assert config == RuntimeConfig()
    assert config.display_name == "Reference runtime"
    assert config.default_profile == "builtin:echo"
    assert config.event_retention == DEFAULT_EVENT_RETENTION == 100_000
    assert config.max_input_bytes == DEFAULT_MAX_INPUT_BYTES == 1024 * 1024
    assert config.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 2 * 1024 * 1024
    assert config.max_transcript_page == MAX_TRANSCRIPT_PAGE == 256
    assert [p.name for p in config.profiles] == ["builtin:echo", "builtin:burst"]


def test_builtin_profiles_carry_their_default_options() -> None:
    config = RuntimeConfig()

    echo, burst = config.profile("builtin:echo"), config.profile("builtin:burst")

    assert echo is not None and burst is not None
    assert (echo.builtin, echo.options) == ("echo", {"delay_ms": 10})
    assert (burst.builtin, burst.options) == ("burst", {"count": 100, "rate": 0})
    assert config.profile("echo") is None


def test_load_config_reads_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "runtime.toml"
    path.write_text(EXAMPLE, "utf-8")

    config = load_config(path)

    assert config.display_name == "Build host 1"
    assert config.default_profile == "example-agent"
    assert (config.event_retention, config.max_input_bytes, config.max_body_bytes) == (500, 4096, 8192)
    assert config.profiles[:2] == BUILTIN_PROFILES
    assert config.profile("example-agent") == ProfileSpec(
        name="example-agent",
        description="The example agent",
        command=("python3", "fixtures/agents/example_agent.py"),
        env={"MODE": "test"},
        cwd="/srv/agents",
        stop_grace_seconds=2.0,
    )
    variant = config.profile("burst-1000")
    assert variant is not None
    # A builtin variant's options are layered over the builtin's own.
    assert (variant.builtin, variant.command, variant.options) == ("burst", (), {"count": 1000, "rate": 0})
    assert variant.stop_grace_seconds == 5.0


def test_a_profile_lists_only_its_name_and_description() -> None:
    config = parse_config({"profile": [profile(description="secret-free", env={"TOKEN": "s3cr3t"})]})
    spec = config.profile("agent")

    assert spec is not None
    assert spec.to_json() == {"name": "agent", "description": "secret-free"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"display_name": ""}, "display_name"),
        ({"display_name": 5}, "display_name"),
        ({"default_profile": "nope"}, "default_profile 'nope'"),
        ({"default_profile": 5}, "default_profile"),
        ({"event_retention": 0}, "event_retention"),
        ({"event_retention": "many"}, "event_retention"),
        ({"event_retention": True}, "event_retention"),
        ({"max_input_bytes": -1}, "max_input_bytes"),
        ({"max_body_bytes": 1.5}, "max_body_bytes"),
        ({"profile": {"name": "agent"}}, "profile must be an array"),
        ({"profile": ["agent"]}, r"profile\[0\]: must be a table"),
        ({"profile": [profile(name="")]}, r"profile\[0\]: name"),
        ({"profile": [profile(name="a/b")]}, r"profile\[0\]: name"),
        ({"profile": [profile(name="builtin:mine")]}, r"profile\[0\]: name"),
        ({"profile": [profile(description=5)]}, "profile 'agent': description"),
        ({"profile": [{"name": "agent"}]}, "profile 'agent': give exactly one of builtin or command"),
        ({"profile": [profile(builtin="echo")]}, "profile 'agent': give exactly one of builtin or command"),
        ({"profile": [{"name": "agent", "builtin": "shell"}]}, "profile 'agent': builtin must be one of"),
        ({"profile": [profile(command=[])]}, "profile 'agent': command"),
        ({"profile": [profile(command="run-agent")]}, "profile 'agent': command"),
        ({"profile": [profile(command=["run", ""])]}, "profile 'agent': command"),
        ({"profile": [profile(env={"A": 1})]}, "profile 'agent': env"),
        ({"profile": [profile(env=["A=1"])]}, "profile 'agent': env"),
        ({"profile": [profile(cwd=5)]}, "profile 'agent': cwd"),
        ({"profile": [profile(stop_grace_seconds=0)]}, "profile 'agent': stop_grace_seconds"),
        ({"profile": [profile(stop_grace_seconds=301)]}, "profile 'agent': stop_grace_seconds"),
        ({"profile": [profile(stop_grace_seconds=True)]}, "profile 'agent': stop_grace_seconds"),
        ({"profile": [profile(options=[1])]}, "profile 'agent': options"),
        ({"profile": [profile(), profile()]}, "profile names must be unique: agent"),
    ],
)
def test_parse_config_errors_name_the_key_at_fault(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_a_named_profile_may_be_the_default() -> None:
    config = parse_config({"default_profile": "agent", "profile": [profile(stop_grace_seconds=300)]})

    assert config.default_profile == "agent"
    spec = config.profile("agent")
    assert spec is not None and spec.stop_grace_seconds == 300.0


def test_load_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")


def test_load_config_reports_invalid_toml_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "runtime.toml"
    path.write_text('display_name = "ok"\nevent_retention = = 5\n', "utf-8")

    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(path)


def test_load_config_validates_what_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "runtime.toml"
    path.write_text('[[profile]]\nname = "x"\nbuiltin = "echo"\ncommand = ["y"]\n', "utf-8")

    with pytest.raises(ConfigError, match="profile 'x'"):
        load_config(path)
