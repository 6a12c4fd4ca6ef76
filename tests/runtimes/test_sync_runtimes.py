"""``manage.py sync_runtimes``: upsert by runtime_id, prune by disabling, all-or-nothing on bad input."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from runtimes.models import AuditEvent, Runtime
from tests.runtimes.conftest import refused_refs

pytestmark = pytest.mark.django_db

EXAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "runtimes.example.toml"

BASE = """\
[[runtime]]
runtime_id = "embedded"
display_name = "Embedded runtime"
kind = "embedded"

[[runtime]]
runtime_id = "build-1"
display_name = "Build host 1"
kind = "remote"
base_url = "http://127.0.0.1:38801"
token_ref = "env:YOI_RUNTIME_TOKEN_BUILD_1"

[[runtime]]
runtime_id = "build-2"
display_name = "Build host 2"
kind = "remote"
base_url = "http://127.0.0.1:38802"
token_ref = "file:/run/secrets/build-2"
connect_timeout = 1.5
read_timeout = 30
"""


@pytest.fixture(autouse=True)
def _secrets_dir(settings: Any) -> None:
    """The file: refs of these files point into /run/secrets (nothing is read: the files need not exist)."""
    settings.YOI_SECRETS_DIR = Path("/run/secrets")


def write(tmp_path: Path, text: str, name: str = "runtimes.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sync(*args: str) -> list[str]:
    out = StringIO()
    call_command("sync_runtimes", *args, stdout=out)
    return out.getvalue().splitlines()


def snapshot() -> list[dict[str, Any]]:
    return [dict(row) for row in Runtime.objects.order_by("runtime_id").values()]


def mark_online(runtime_id: str) -> None:
    now = timezone.now()
    Runtime.objects.filter(runtime_id=runtime_id).update(
        status=Runtime.Status.ONLINE,
        capabilities={"protocol_version": "1", "profiles": [{"name": "builtin:echo", "description": ""}]},
        last_seen_at=now,
        checked_at=now,
        consecutive_failures=0,
    )


def test_first_sync_creates_every_runtime(tmp_path: Path) -> None:
    assert sync("--file", str(write(tmp_path, BASE))) == [
        "embedded: created",
        "build-1: created",
        "build-2: created",
    ]
    build_2 = Runtime.objects.get(runtime_id="build-2")
    assert build_2.kind == "remote"
    assert build_2.base_url == "http://127.0.0.1:38802"
    assert build_2.token_ref == "file:/run/secrets/build-2"
    assert (build_2.connect_timeout, build_2.read_timeout) == (1.5, 30.0)
    assert build_2.enabled is True
    assert build_2.status == Runtime.Status.CONFIGURED
    embedded = Runtime.objects.get(runtime_id="embedded")
    assert (embedded.base_url, embedded.token_ref) == ("", "")
    assert (embedded.connect_timeout, embedded.read_timeout) == (2.0, 10.0)


def test_rerun_is_unchanged_and_touches_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    sync("--file", str(path))
    before = snapshot()
    assert sync("--file", str(path)) == ["embedded: unchanged", "build-1: unchanged", "build-2: unchanged"]
    assert snapshot() == before


def test_changed_connection_field_updates_and_resets_status_cache(tmp_path: Path) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    mark_online("build-1")
    mark_online("build-2")
    before = {row.runtime_id: row for row in Runtime.objects.all()}

    changed = BASE.replace("http://127.0.0.1:38801", "http://127.0.0.1:39901").replace(
        '"Build host 2"', '"Build host two"'
    )
    assert sync("--file", str(write(tmp_path, changed))) == [
        "embedded: unchanged",
        "build-1: updated",
        "build-2: updated",
    ]
    build_1 = Runtime.objects.get(runtime_id="build-1")
    assert build_1.base_url == "http://127.0.0.1:39901"
    # The cache described the old target.
    assert build_1.status == Runtime.Status.CONFIGURED
    assert build_1.capabilities == {}
    assert build_1.last_seen_at is None and build_1.checked_at is None
    assert build_1.updated_at > before["build-1"].updated_at

    # A display-only change keeps the cache: the target is the same.
    build_2 = Runtime.objects.get(runtime_id="build-2")
    assert build_2.display_name == "Build host two"
    assert build_2.status == Runtime.Status.ONLINE
    assert build_2.capabilities["protocol_version"] == "1"
    assert build_2.updated_at > before["build-2"].updated_at

    embedded = Runtime.objects.get(runtime_id="embedded")
    assert embedded.updated_at == before["embedded"].updated_at


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('token_ref = "env:YOI_RUNTIME_TOKEN_BUILD_1"', 'token_ref = "env:YOI_RUNTIME_TOKEN_OTHER"'),
        ('base_url = "http://127.0.0.1:38801"', 'base_url = "http://127.0.0.1:38801"\nconnect_timeout = 3.0'),
        ('base_url = "http://127.0.0.1:38801"', 'base_url = "http://127.0.0.1:38801"\nread_timeout = 3.0'),
        ('base_url = "http://127.0.0.1:38801"', 'base_url = "http://127.0.0.1:38801"\nenabled = false'),
    ],
)
def test_every_connection_field_resets_the_cache(tmp_path: Path, old: str, new: str) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    mark_online("build-1")
    assert "build-1: updated" in sync("--file", str(write(tmp_path, BASE.replace(old, new))))
    assert Runtime.objects.get(runtime_id="build-1").status == Runtime.Status.CONFIGURED


def test_kind_change_updates(tmp_path: Path) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    remote_keys = 'kind = "remote"\nbase_url = "http://127.0.0.1:1"\ntoken_ref = "env:YOI_RUNTIME_TOKEN_T"\n'
    as_remote = BASE.replace('kind = "embedded"\n', remote_keys, 1)
    assert "embedded: updated" in sync("--file", str(write(tmp_path, as_remote)))
    row = Runtime.objects.get(runtime_id="embedded")
    assert (row.kind, row.base_url, row.token_ref) == ("remote", "http://127.0.0.1:1", "env:YOI_RUNTIME_TOKEN_T")


def test_prune_disables_missing_runtimes_and_keeps_their_audit_history(tmp_path: Path) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    mark_online("build-2")
    Runtime.objects.create(runtime_id="admin-made", display_name="Made in admin", kind="embedded")
    Runtime.objects.create(runtime_id="already-off", display_name="Off", kind="embedded", enabled=False)
    AuditEvent.objects.create(
        username="alice", runtime_id="build-2", worker_id="w-1", action="create", outcome="ok", latency_ms=3.2
    )
    without_build_2 = BASE.split('\n[[runtime]]\nruntime_id = "build-2"')[0]

    # Without --prune, a runtime missing from the file is left alone.
    assert sync("--file", str(write(tmp_path, without_build_2))) == ["embedded: unchanged", "build-1: unchanged"]
    assert Runtime.objects.get(runtime_id="build-2").enabled is True

    assert sync("--file", str(write(tmp_path, without_build_2)), "--prune") == [
        "embedded: unchanged",
        "build-1: unchanged",
        "admin-made: disabled",
        "already-off: unchanged",
        "build-2: disabled",
    ]
    build_2 = Runtime.objects.get(runtime_id="build-2")
    assert build_2.enabled is False
    assert build_2.status == Runtime.Status.CONFIGURED
    assert Runtime.objects.count() == 5  # nothing deleted
    assert AuditEvent.objects.filter(runtime_id="build-2").count() == 1

    # Putting it back in the file re-enables it.
    assert "build-2: updated" in sync("--file", str(write(tmp_path, BASE)))
    assert Runtime.objects.get(runtime_id="build-2").enabled is True


def test_invalid_file_changes_nothing_and_names_the_key(tmp_path: Path) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    mark_online("build-1")
    before = snapshot()
    # build-1 is valid and changed; build-2 is invalid: the whole file must be refused.
    bad = BASE.replace("38801", "39901").replace("read_timeout = 30", "read_timeout = -1")
    bad += '\n[[runtime]]\nruntime_id = "new-one"\ndisplay_name = "New"\nkind = "embedded"\n'
    with pytest.raises(CommandError) as info:
        sync("--file", str(write(tmp_path, bad)), "--prune")
    message = str(info.value)
    assert "runtime entry 3 (runtime_id 'build-2', line 20): key 'read_timeout'" in message
    assert snapshot() == before
    assert not Runtime.objects.filter(runtime_id="new-one").exists()


def test_cli_exit_status_and_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.management import ManagementUtility
    from django.db import connections

    # run_from_argv closes every connection on its way out, the test's own included (fatal on PostgreSQL).
    monkeypatch.setattr(connections, "close_all", lambda: None)

    path = write(tmp_path, BASE.replace('kind = "remote"', 'kind = "nope"', 1))
    with pytest.raises(SystemExit) as info:
        ManagementUtility(["manage.py", "sync_runtimes", "--skip-checks", "--file", str(path)]).execute()
    assert info.value.code == 1
    assert "key 'kind'" in capsys.readouterr().err
    assert Runtime.objects.count() == 0


def test_duplicate_ids_change_nothing(tmp_path: Path) -> None:
    dup = BASE + '\n[[runtime]]\nruntime_id = "build-1"\ndisplay_name = "Again"\nkind = "embedded"\n'
    with pytest.raises(CommandError) as info:
        sync("--file", str(write(tmp_path, dup)))
    message = str(info.value)
    assert "runtime entry 4 (runtime_id 'build-1', line 23): key 'runtime_id'" in message
    assert "duplicate" in message
    assert Runtime.objects.count() == 0


def test_specific_ids_only(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert sync("--file", str(path), "build-2", "embedded") == ["embedded: created", "build-2: created"]
    assert set(Runtime.objects.values_list("runtime_id", flat=True)) == {"embedded", "build-2"}
    assert sync("--file", str(path), "build-1") == ["build-1: created"]


def test_unknown_id_is_an_error_before_any_change(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="runtime ids not in the config file: ghost"):
        sync("--file", str(write(tmp_path, BASE)), "build-1", "ghost")
    assert Runtime.objects.count() == 0


def test_prune_with_ids_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--prune"):
        sync("--file", str(write(tmp_path, BASE)), "build-1", "--prune")
    assert Runtime.objects.count() == 0


def test_no_file_is_an_error(tmp_path: Path) -> None:
    with override_settings(YOI_RUNTIMES_CONFIG=""), pytest.raises(CommandError, match="--file"):
        sync()
    with pytest.raises(CommandError, match="cannot read the runtimes config file"):
        sync("--file", str(tmp_path / "missing.toml"))


def test_file_defaults_to_the_setting(tmp_path: Path) -> None:
    with override_settings(YOI_RUNTIMES_CONFIG=str(EXAMPLE)):
        assert sync() == ["embedded: created", "local: created"]
    local = Runtime.objects.get(runtime_id="local")
    assert (local.base_url, local.token_ref) == ("http://127.0.0.1:38800", "env:YOI_RUNTIME_TOKEN_LOCAL")


def test_runtime_repr_shows_only_the_id(tmp_path: Path) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    row = Runtime.objects.get(runtime_id="build-1")
    for text in (repr(row), str(row), repr([row]), repr(Runtime.objects.filter(runtime_id="build-1"))):
        assert "build-1" in text
        assert "127.0.0.1" not in text and "38801" not in text
        assert "YOI_RUNTIME_TOKEN_BUILD_1" not in text


# --------------------------------------------------------------------------------------------- confined refs


@pytest.mark.parametrize("key", ["token_ref", "tls_client_key_ref"])
def test_a_refused_ref_fails_the_whole_sync_naming_entry_key_and_line(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    secrets_dir = (tmp_path / "secrets").resolve()
    secrets_dir.mkdir()
    settings.YOI_SECRETS_DIR = secrets_dir
    base = BASE.replace("/run/secrets", str(secrets_dir))
    sync("--file", str(write(tmp_path, base)))
    before = snapshot()
    for name, ref in refused_refs(secrets_dir, monkeypatch).items():
        if key == "token_ref":
            text = base.replace('token_ref = "env:YOI_RUNTIME_TOKEN_BUILD_1"', f'token_ref = "{ref}"')
            line = 11
        else:
            text = base.replace(
                'base_url = "http://127.0.0.1:38801"',
                'base_url = "https://127.0.0.1:38801"\ntls_client_cert_file = "/etc/yoi/backend.pem"\n'
                f'tls_client_key_ref = "{ref}"',
            )
            line = 12
        with pytest.raises(CommandError) as info:
            sync("--file", str(write(tmp_path, text)))
        message = str(info.value)
        assert f"runtime entry 2 (runtime_id 'build-1', line {line}): key '{key}'" in message, (name, message)
        value = ref.partition(":")[2]
        assert value == "YOI_RUNTIME_TOKEN_" or value not in message, (name, message)
        assert snapshot() == before, name


def test_tls_keys_sync_and_reset_the_cache(tmp_path: Path) -> None:
    sync("--file", str(write(tmp_path, BASE)))
    mark_online("build-1")
    text = BASE.replace(
        'base_url = "http://127.0.0.1:38801"',
        'base_url = "https://127.0.0.1:38801"\ntls_ca_file = "/etc/yoi/ca.pem"\n'
        'tls_client_cert_file = "/etc/yoi/backend.pem"\ntls_client_key_ref = "file:/run/secrets/backend.key"',
    )
    assert "build-1: updated" in sync("--file", str(write(tmp_path, text)))
    row = Runtime.objects.get(runtime_id="build-1")
    assert (row.tls_ca_file, row.tls_client_cert_file, row.tls_client_key_ref) == (
        "/etc/yoi/ca.pem",
        "/etc/yoi/backend.pem",
        "file:/run/secrets/backend.key",
    )
    assert row.status == Runtime.Status.CONFIGURED


def test_plain_http_to_a_remote_host_needs_allow_insecure_http(tmp_path: Path) -> None:
    remote_http = BASE.replace("http://127.0.0.1:38801", "http://build-1.internal:38801")
    with pytest.raises(CommandError) as info:
        sync("--file", str(write(tmp_path, remote_http)))
    assert "runtime entry 2 (runtime_id 'build-1', line 10): key 'base_url'" in str(info.value)
    assert "allow_insecure_http" in str(info.value)
    assert Runtime.objects.count() == 0
    allowed = remote_http.replace(
        'base_url = "http://build-1.internal:38801"',
        'base_url = "http://build-1.internal:38801"\nallow_insecure_http = true',
    )
    assert "build-1: created" in sync("--file", str(write(tmp_path, allowed)))
    assert Runtime.objects.get(runtime_id="build-1").allow_insecure_http is True
