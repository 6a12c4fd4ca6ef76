"""The runtimes config file: every validation rule, with entry, key and line in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.config import RuntimeConfigError, RuntimeEntry, load_runtime_config, parse_runtime_config

EXAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "runtimes.example.toml"

GOOD_EMBEDDED = """\
[[runtime]]
runtime_id = "embedded"
display_name = "Embedded runtime"
kind = "embedded"
"""

REMOTE_HEAD = """\
[[runtime]]
runtime_id = "build-1"
display_name = "Build host 1"
kind = "remote"
"""


def remote(**overrides: str) -> str:
    """A remote entry (after one embedded entry) with some keys replaced by raw TOML value text."""
    keys = {
        "base_url": '"http://127.0.0.1:38800"',
        "token_ref": '"env:YOI_RUNTIME_TOKEN_BUILD_1"',
        "connect_timeout": "2.0",
        "read_timeout": "10.0",
        "enabled": "true",
    }
    keys.update(overrides)
    body = "".join(f"{key} = {value}\n" for key, value in keys.items() if value != "<absent>")
    return GOOD_EMBEDDED + "\n" + REMOTE_HEAD + body


def test_example_fixture_is_valid() -> None:
    entries = load_runtime_config(EXAMPLE)
    assert entries == [
        RuntimeEntry(runtime_id="embedded", display_name="Embedded runtime", kind="embedded"),
        RuntimeEntry(
            runtime_id="local",
            display_name="Local reference runtime",
            kind="remote",
            base_url="http://127.0.0.1:38800",
            token_ref="env:YOI_RUNTIME_TOKEN_LOCAL",
            connect_timeout=2.0,
            read_timeout=10.0,
            enabled=True,
        ),
    ]


def test_valid_file_round_trip_with_defaults_and_extra_keys(tmp_path: Path, secrets_dir: Path) -> None:
    text = """\
owner = "ops"  # top-level keys beyond [[runtime]] are allowed

[[runtime]]
runtime_id = "a:b_c-1"
display_name = "  Padded name  "
kind = "remote"
base_url = "https://runtime.example.internal:8443/prefix"
token_ref = "file:SECRETS/a"
connect_timeout = 1
read_timeout = 300
enabled = false
notes = "ignored"

[runtime.labels]
zone = "eu"

[[runtime]]
runtime_id = "embedded"
display_name = "Embedded"
kind = "embedded"
base_url = ""
"""
    path = tmp_path / "runtimes.toml"
    path.write_text(text.replace("SECRETS", str(secrets_dir)))
    first, second = load_runtime_config(path)
    assert first == RuntimeEntry(
        runtime_id="a:b_c-1",
        display_name="Padded name",
        kind="remote",
        base_url="https://runtime.example.internal:8443/prefix",
        token_ref=f"file:{secrets_dir}/a",
        connect_timeout=1.0,
        read_timeout=300.0,
        enabled=False,
    )
    assert isinstance(first.connect_timeout, float)
    assert second == RuntimeEntry(runtime_id="embedded", display_name="Embedded", kind="embedded")
    assert second.connect_timeout == 2.0 and second.read_timeout == 10.0 and second.enabled is True


def test_max_in_flight_defaults_to_32_and_takes_an_integer() -> None:
    (_, default) = parse_runtime_config(remote())
    assert default.max_in_flight == 32
    (_, small) = parse_runtime_config(remote(max_in_flight="4"))
    assert small.max_in_flight == 4
    (embedded,) = parse_runtime_config(GOOD_EMBEDDED + "max_in_flight = 1\n")
    assert embedded.max_in_flight == 1


def test_entry_repr_hides_base_url() -> None:
    (_, entry) = parse_runtime_config(remote())
    for text in (repr(entry), str(entry), repr([entry]), repr({"x": (entry,)})):
        assert "127.0.0.1" not in text
        assert "38800" not in text
        assert "YOI_RUNTIME_TOKEN_BUILD_1" not in text
        assert "base_url=<backend-private>" in text
        assert "build-1" in text


# The remote entry is entry 2 and starts on line 6 (runtime_id on line 7, its keys from line 10 on).
@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        # runtime_id
        (remote().replace('"build-1"', '"bad id!"'), "runtime_id", 7),
        (remote().replace('"build-1"', '""'), "runtime_id", 7),
        (remote().replace('"build-1"', '"' + "x" * 121 + '"'), "runtime_id", 7),
        (remote().replace('"build-1"', "17"), "runtime_id", 7),
        (remote().replace('runtime_id = "build-1"\n', ""), "runtime_id", 6),
        # display_name
        (remote().replace('"Build host 1"', '""'), "display_name", 8),
        (remote().replace('"Build host 1"', '"   "'), "display_name", 8),
        (remote().replace('"Build host 1"', "true"), "display_name", 8),
        (remote().replace('display_name = "Build host 1"\n', ""), "display_name", 6),
        # kind
        (remote().replace('kind = "remote"', 'kind = "docker"'), "kind", 9),
        (remote().replace('kind = "remote"\n', ""), "kind", 6),
        # base_url
        (remote(base_url="<absent>"), "base_url", 6),
        (remote(base_url='"ftp://127.0.0.1:38800"'), "base_url", 10),
        (remote(base_url='"127.0.0.1:38800"'), "base_url", 10),
        (remote(base_url='"http://"'), "base_url", 10),
        (remote(base_url='"http:///v1"'), "base_url", 10),
        (remote(base_url='"http://user:secret@127.0.0.1:38800"'), "base_url", 10),
        (remote(base_url='"http://token@127.0.0.1:38800"'), "base_url", 10),
        (remote(base_url='"http://127.0.0.1:38800/?token=abc"'), "base_url", 10),
        (remote(base_url='"http://127.0.0.1:38800/#frag"'), "base_url", 10),
        (remote(base_url='"http://127.0.0.1:99999"'), "base_url", 10),
        (remote(base_url='"http://127.0.0.1:38800/a b"'), "base_url", 10),
        (remote(base_url="42"), "base_url", 10),
        # token_ref
        (remote(token_ref="<absent>"), "token_ref", 6),
        (remote(token_ref='"s3cr3t-raw-token"'), "token_ref", 11),
        (remote(token_ref='"env:"'), "token_ref", 11),
        (remote(token_ref='"env:1BAD"'), "token_ref", 11),
        (remote(token_ref='"env:BAD-NAME"'), "token_ref", 11),
        (remote(token_ref='"file:relative/path"'), "token_ref", 11),
        (remote(token_ref='"file:"'), "token_ref", 11),
        (remote(token_ref='"vault:secret/x"'), "token_ref", 11),
        (remote(token_ref="true"), "token_ref", 11),
        # timeouts
        (remote(connect_timeout="0"), "connect_timeout", 12),
        (remote(connect_timeout="-1.5"), "connect_timeout", 12),
        (remote(connect_timeout="301"), "connect_timeout", 12),
        (remote(connect_timeout="inf"), "connect_timeout", 12),
        (remote(connect_timeout="nan"), "connect_timeout", 12),
        (remote(connect_timeout='"2"'), "connect_timeout", 12),
        (remote(connect_timeout="true"), "connect_timeout", 12),
        (remote(read_timeout="0.0"), "read_timeout", 13),
        (remote(read_timeout="1e9"), "read_timeout", 13),
        # enabled
        (remote(enabled='"yes"'), "enabled", 14),
        (remote(enabled="1"), "enabled", 14),
        # max_in_flight (appended after enabled: line 15)
        (remote(max_in_flight="0"), "max_in_flight", 15),
        (remote(max_in_flight="-3"), "max_in_flight", 15),
        (remote(max_in_flight="10001"), "max_in_flight", 15),
        (remote(max_in_flight="1.5"), "max_in_flight", 15),
        (remote(max_in_flight='"32"'), "max_in_flight", 15),
        (remote(max_in_flight="true"), "max_in_flight", 15),
    ],
)
def test_invalid_entry_names_entry_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    message = str(info.value)
    assert "runtime entry 2" in message
    assert f"key {key!r}" in message
    assert f"line {line}" in message
    assert len(info.value.problems) == 1, message


@pytest.mark.parametrize("key", ["base_url", "token_ref"])
def test_embedded_entry_must_not_have_connection_keys(key: str) -> None:
    value = '"http://127.0.0.1:1"' if key == "base_url" else '"env:TOKEN"'
    text = GOOD_EMBEDDED + f"{key} = {value}\n"
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    message = str(info.value)
    assert "runtime entry 1 (runtime_id 'embedded', line 5)" in message
    assert f"key {key!r}" in message
    assert "not allowed for an embedded runtime" in message


def test_messages_never_echo_url_or_token_ref_values() -> None:
    text = remote(base_url='"http://user:hunter2@10.9.8.7:38800"', token_ref='"plain-token-value"')
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    message = str(info.value)
    assert "key 'base_url'" in message and "key 'token_ref'" in message
    for value in ("hunter2", "10.9.8.7", "plain-token-value"):
        assert value not in message


def test_every_problem_is_reported_at_once() -> None:
    text = remote(base_url='"ftp://x"', read_timeout="0").replace('kind = "embedded"', 'kind = "nope"')
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    assert len(info.value.problems) == 3
    message = str(info.value)
    assert "runtime entry 1 (runtime_id 'embedded', line 4): key 'kind'" in message
    assert "runtime entry 2 (runtime_id 'build-1', line 10): key 'base_url'" in message
    assert "runtime entry 2 (runtime_id 'build-1', line 13): key 'read_timeout'" in message


def test_duplicate_ids_are_rejected_naming_both_entries() -> None:
    text = GOOD_EMBEDDED + "\n" + GOOD_EMBEDDED.replace("Embedded runtime", "Again")
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    message = str(info.value)
    assert "runtime entry 2 (runtime_id 'embedded', line 7): key 'runtime_id'" in message
    assert "duplicate runtime_id: already used by entry 1" in message


def test_inline_array_entries_fall_back_to_the_runtime_id_line() -> None:
    text = 'runtime = [\n  { runtime_id = "a", display_name = "A", kind = "embedded" },\n'
    text += '  { runtime_id = "b", display_name = "B", kind = "remote" },\n]\n'
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    message = str(info.value)
    assert "runtime entry 2 (runtime_id 'b', line 3): key 'base_url'" in message
    assert "runtime entry 2 (runtime_id 'b', line 3): key 'token_ref'" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[runtime]]\nruntime_id = "a"\nkind = \n', "line 3"),
        ('[[runtime]]\nruntime_id = "a"\nruntime_id = "b"\n', "line 3"),
        ("", "no [[runtime]] entries"),
        ('title = "x"\n', "no [[runtime]] entries"),
        ("runtime = []\n", "non-empty array"),
        ('[runtime]\nruntime_id = "a"\n', "non-empty array"),
        ('runtime = ["a"]\n', "must be a table"),
    ],
)
def test_document_level_errors(text: str, expected: str) -> None:
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(text)
    assert expected in str(info.value)


def test_toml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(RuntimeConfigError) as info:
        parse_runtime_config(GOOD_EMBEDDED + 'enabled = "yes\n')
    message = str(info.value)
    assert message.startswith("invalid TOML:")
    assert "line 5" in message and "column" in message


def test_unreadable_or_non_utf8_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeConfigError, match="cannot read the runtimes config file"):
        load_runtime_config(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[[runtime]]\nruntime_id = "\xe9"\n')
    with pytest.raises(RuntimeConfigError, match="not valid UTF-8"):
        load_runtime_config(bad)
