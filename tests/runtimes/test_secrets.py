"""Secret refs: confined where written and at use, resolved from env and files, failing without detail."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from runtimes.errors import RuntimeAuthFailed, RuntimeMisconfigured, YoiError
from runtimes.secrets import (
    SecretPolicy,
    check_secret_ref,
    resolve_secret,
    resolve_token,
    validate_secret_ref,
    validate_token_ref,
)

TOKEN = "tok-Zq8v-distinctive-4471"
ENV = "YOI_RUNTIME_TOKEN_TEST_SECRETS"


@pytest.fixture(autouse=True)
def _capture_all(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record with all its attributes (extra= included), not only the message."""
    return " ".join(str(value) for record in caplog.records for value in vars(record).values())


def assert_clean(text: str, *forbidden: str) -> None:
    for value in forbidden:
        if not value:
            continue
        assert value not in text, f"{value!r} leaked into {text!r}"


def assert_no_chain(error: YoiError) -> None:
    """No exception chain that could carry an OSError text with the path."""
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


def test_env_ref_resolves(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    assert resolve_token(f"env:{ENV}", runtime_id="rt-1") == TOKEN
    assert_clean(logged(caplog), TOKEN)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (TOKEN, TOKEN),
        (TOKEN + "\n", TOKEN),
        (TOKEN + "\r\n", TOKEN),
    ],
)
def test_file_ref_resolves_stripping_one_newline(
    secrets_dir: Path, caplog: pytest.LogCaptureFixture, content: str, expected: str
) -> None:
    path = secrets_dir / "token"
    path.write_bytes(content.encode())
    assert resolve_token(f"file:{path}", runtime_id="rt-1") == expected
    assert_clean(logged(caplog), TOKEN, str(path))


def test_symlink_inside_the_secrets_dir_resolves(secrets_dir: Path) -> None:
    (secrets_dir / "real").write_text(TOKEN)
    (secrets_dir / "alias").symlink_to(secrets_dir / "real")
    assert resolve_token(f"file:{secrets_dir / 'alias'}", runtime_id="rt-1") == TOKEN


# --- values that are within the rules but cannot be used: runtime_auth_failed -----------------------------


def _missing_env(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(ENV + "_MISSING", raising=False)
    return f"env:{ENV}_MISSING"


def _empty_env(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV + "_EMPTY", "")
    return f"env:{ENV}_EMPTY"


def _newline_only_env(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV + "_NL", "\n")
    return f"env:{ENV}_NL"


def _missing_file(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return f"file:{secrets_dir / 'sub' / 'nope'}"


def _empty_file(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = secrets_dir / "empty-secret"
    path.write_text("")
    return f"file:{path}"


def _newline_file(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = secrets_dir / "newline-secret"
    path.write_text("\n")
    return f"file:{path}"


def _directory(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (secrets_dir / "a-dir").mkdir()
    return f"file:{secrets_dir / 'a-dir'}"


def _unreadable_file(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = secrets_dir / "locked-secret"
    path.write_text(TOKEN)
    path.chmod(0)
    if os.access(path, os.R_OK):  # running as root: simulate by pointing at something unreadable
        return _directory(secrets_dir, monkeypatch)
    return f"file:{path}"


def _multiline_value(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = secrets_dir / "two-lines"
    path.write_text(TOKEN + "\nX-Injected: 1\n")
    return f"file:{path}"


def _padded_value(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV + "_PADDED", f" {TOKEN} ")
    return f"env:{ENV}_PADDED"


def _binary_file(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = secrets_dir / "binary-secret"
    path.write_bytes(b"\xff\xfe" + TOKEN.encode())
    return f"file:{path}"


@pytest.mark.parametrize(
    "make_ref",
    [
        _missing_env,
        _empty_env,
        _newline_only_env,
        _missing_file,
        _empty_file,
        _newline_file,
        _directory,
        _unreadable_file,
        _multiline_value,
        _padded_value,
        _binary_file,
    ],
)
def test_unresolvable_ref_raises_auth_failed_without_detail(
    secrets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_ref: Callable[[Path, pytest.MonkeyPatch], str],
) -> None:
    ref = make_ref(secrets_dir, monkeypatch)
    with pytest.raises(RuntimeAuthFailed) as info:
        resolve_token(ref, runtime_id="rt-9")
    error = info.value
    assert (error.runtime_id, error.code) == ("rt-9", "runtime_auth_failed")
    assert str(error) == "credential for runtime rt-9 is not configured"
    assert_no_chain(error)
    rendered = " ".join([str(error), repr(error), str(error.to_json()), logged(caplog)])
    assert_clean(rendered, TOKEN, str(secrets_dir), ref.partition(":")[2], "X-Injected")
    assert "runtimes.secret.unresolved" in logged(caplog)


# --- refs the rules refuse: refused where written (ValueError) and at use (runtime_misconfigured) ---------


def _django_secret_key(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return "env:DJANGO_SECRET_KEY"


def _database_url(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:hunter2-db@127.0.0.1/x")
    return "env:DATABASE_URL"


def _bare_prefix(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("YOI_RUNTIME_TOKEN_", TOKEN)
    return "env:YOI_RUNTIME_TOKEN_"


def _relative_file(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return "file:../x"


def _dot_dot_out(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (secrets_dir.parent / "outside").write_text(TOKEN)
    return f"file:{secrets_dir}/../outside"


def _file_outside(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = secrets_dir.parent / "elsewhere"
    path.write_text(TOKEN)
    return f"file:{path}"


def _symlink_out(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    target = secrets_dir.parent / "hostname"
    target.write_text(TOKEN)
    (secrets_dir / "link").symlink_to(target)
    return f"file:{secrets_dir / 'link'}"


def _the_dir_itself(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return f"file:{secrets_dir}"


def _raw_token(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return TOKEN  # a raw token pasted where a ref belongs


REFUSED = [
    _django_secret_key,
    _database_url,
    _bare_prefix,
    _relative_file,
    _dot_dot_out,
    _file_outside,
    _symlink_out,
    _the_dir_itself,
    _raw_token,
]


@pytest.mark.parametrize("make_ref", REFUSED)
def test_refused_ref_at_use_is_misconfigured_and_reads_nothing(
    secrets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_ref: Callable[[Path, pytest.MonkeyPatch], str],
) -> None:
    ref = make_ref(secrets_dir, monkeypatch)
    for resolve in (
        lambda: resolve_token(ref, runtime_id="rt-9"),
        lambda: resolve_secret(ref, runtime_id="rt-9", key="token_ref"),
        lambda: check_secret_ref(ref, runtime_id="rt-9", key="token_ref"),
    ):
        with pytest.raises(RuntimeMisconfigured) as info:
            resolve()
        error = info.value
        assert (error.code, error.http_status, error.reason) == ("runtime_misconfigured", 503, "token_ref")
        assert_no_chain(error)
        rendered = " ".join([str(error), repr(error), str(error.to_json()), logged(caplog)])
        assert_clean(rendered, TOKEN, str(secrets_dir), ref.partition(":")[2], "hunter2-db")
    assert "runtimes.secret.refused" in logged(caplog)


@pytest.mark.parametrize("make_ref", [*REFUSED, _empty_env, _empty_file, _newline_file, _directory])
@pytest.mark.parametrize("key", ["token_ref", "tls_client_key_ref"])
def test_refused_where_written_naming_the_key_never_the_value(
    secrets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_ref: Callable[[Path, pytest.MonkeyPatch], str],
    key: str,
) -> None:
    ref = make_ref(secrets_dir, monkeypatch)
    with pytest.raises(ValueError, match=key) as info:
        validate_secret_ref(ref, key=key)
    value = ref.partition(":")[2] or ref
    # The message may name the allowed prefix (the bare-prefix ref is exactly that), never anything else.
    assert_clean(str(info.value), "" if value == "YOI_RUNTIME_TOKEN_" else value, str(secrets_dir), TOKEN)


def test_not_yet_there_is_accepted_where_written(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable set only for the server, or a file provisioned later, fails at use instead."""
    monkeypatch.delenv(ENV + "_LATER", raising=False)
    validate_token_ref(f"env:{ENV}_LATER")
    validate_token_ref(f"file:{secrets_dir / 'later'}")


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "env:",
        "env:1A",
        "env:A-B",
        "env:A B",
        "env:A",
        "file:",
        "file:relative",
        "file: /x",
        "vault:x",
        "raw-token",
        "x" * 600,
    ],
)
def test_validate_token_ref_rejects_malformed_without_echoing(secrets_dir: Path, ref: str) -> None:
    with pytest.raises(ValueError, match="token_ref") as info:
        validate_token_ref(ref)
    if ref and ref not in {"env:", "file:"}:
        assert ref not in str(info.value)


def test_the_prefix_is_a_setting(settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.YOI_TOKEN_ENV_PREFIX = "ACME_TOKEN_"
    monkeypatch.setenv("ACME_TOKEN_BUILD", TOKEN)
    monkeypatch.setenv(ENV, TOKEN)
    assert SecretPolicy.from_settings().env_prefix == "ACME_TOKEN_"
    assert resolve_token("env:ACME_TOKEN_BUILD", runtime_id="rt-1") == TOKEN
    with pytest.raises(RuntimeMisconfigured):
        resolve_token(f"env:{ENV}", runtime_id="rt-1")


def test_a_rotated_file_token_is_read_at_each_use(secrets_dir: Path) -> None:
    path = secrets_dir / "rotating"
    path.write_text("tok-first-value-1")
    assert resolve_token(f"file:{path}", runtime_id="rt-1") == "tok-first-value-1"
    path.write_text("tok-second-value-2")
    assert resolve_token(f"file:{path}", runtime_id="rt-1") == "tok-second-value-2"
