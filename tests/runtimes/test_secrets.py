"""Token refs: resolution from env and files, and failures that reveal neither path nor value."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runtimes.errors import RuntimeAuthFailed
from runtimes.secrets import resolve_token, validate_token_ref

TOKEN = "tok-Zq8v-distinctive-4471"


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


def test_env_ref_resolves(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("YOI_TEST_TOKEN_A", TOKEN)
    assert resolve_token("env:YOI_TEST_TOKEN_A", runtime_id="rt-1") == TOKEN
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
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, expected: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content.encode())
    assert resolve_token(f"file:{path}", runtime_id="rt-1") == expected
    assert_clean(logged(caplog), TOKEN, str(path))


def _missing_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("YOI_TEST_TOKEN_MISSING", raising=False)
    return "env:YOI_TEST_TOKEN_MISSING"


def _empty_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("YOI_TEST_TOKEN_EMPTY", "")
    return "env:YOI_TEST_TOKEN_EMPTY"


def _newline_only_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("YOI_TEST_TOKEN_NL", "\n")
    return "env:YOI_TEST_TOKEN_NL"


def _missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return f"file:{tmp_path / 'secret-dir' / 'nope'}"


def _empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "empty-secret"
    path.write_text("")
    return f"file:{path}"


def _newline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "newline-secret"
    path.write_text("\n")
    return f"file:{path}"


def _directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return f"file:{tmp_path}"


def _unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "locked-secret"
    path.write_text(TOKEN)
    path.chmod(0)
    if os.access(path, os.R_OK):  # running as root: simulate by pointing at something unreadable
        return f"file:{tmp_path}"
    return f"file:{path}"


def _multiline_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "two-lines"
    path.write_text(TOKEN + "\nX-Injected: 1\n")
    return f"file:{path}"


def _padded_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("YOI_TEST_TOKEN_PADDED", f" {TOKEN} ")
    return "env:YOI_TEST_TOKEN_PADDED"


def _binary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "binary-secret"
    path.write_bytes(b"\xff\xfe" + TOKEN.encode())
    return f"file:{path}"


def _invalid_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return TOKEN  # a raw token pasted where a ref belongs


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
        _invalid_ref,
    ],
)
def test_unresolvable_ref_raises_auth_failed_without_detail(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_ref: Callable[[Path, pytest.MonkeyPatch], str],
) -> None:
    ref = make_ref(tmp_path, monkeypatch)
    with pytest.raises(RuntimeAuthFailed) as info:
        resolve_token(ref, runtime_id="rt-9")
    error = info.value
    assert error.runtime_id == "rt-9"
    assert error.code == "runtime_auth_failed"
    assert str(error) == "credential for runtime rt-9 is not configured"
    # No exception chain that could carry an OSError text with the path.
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None
    rendered = " ".join([str(error), repr(error), str(error.to_json()), logged(caplog)])
    ref_value = ref.partition(":")[2]
    assert_clean(rendered, TOKEN, str(tmp_path), ref_value, "X-Injected")
    assert "runtimes.secret.unresolved" in logged(caplog)


@pytest.mark.parametrize("ref", ["env:A", "env:_x1", "env:YOI_RUNTIME_TOKEN_LOCAL", "file:/run/secrets/build-1"])
def test_validate_token_ref_accepts(ref: str) -> None:
    validate_token_ref(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "env:",
        "env:1A",
        "env:A-B",
        "env:A B",
        "file:",
        "file:relative",
        "file: /x",
        "vault:x",
        "raw-token",
        "x" * 600,
    ],
)
def test_validate_token_ref_rejects_without_echoing(ref: str) -> None:
    with pytest.raises(ValueError, match="token_ref") as info:
        validate_token_ref(ref)
    if ref and ref not in {"env:", "file:"}:
        assert ref not in str(info.value)
