"""Production posture: `check --deploy` is clean with the production block of .env.example, every page sends
the CSP, and static files are collected before a production server listens."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles.finders import get_finders
from django.test import Client

from tests.runtime_process import REPO_ROOT
from yoi_backend.security import CONTENT_SECURITY_POLICY
from yoi_backend.static_collect import MANIFEST_NAME, collected_is_current, ensure_collected

ENV_EXAMPLE = REPO_ROOT / ".env.example"
PRODUCTION_HEADER = "# --- Production"


def production_block() -> dict[str, str]:
    """The commented ``# KEY=VALUE`` lines of .env.example's production block, as documented."""
    text = ENV_EXAMPLE.read_text("utf-8")
    block = text[text.index(PRODUCTION_HEADER) :]
    values: dict[str, str] = {}
    for line in block.splitlines():
        match = re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def check_deploy(tmp_path: Path, settings: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check --deploy`` in a fresh process with ``settings`` as its only Django/Yoi environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "YOI_"))}
    env.update(settings, DJANGO_SETTINGS_MODULE="yoi_backend.settings", YOI_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", *options],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_reports_nothing_with_the_documented_production_block(tmp_path: Path) -> None:
    values = production_block()
    assert values["DJANGO_DEBUG"] == "0" and values["DJANGO_SECRET_KEY"].startswith("<")
    values["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)  # the placeholder says how to make one
    values["DJANGO_STATIC_ROOT"] = str(tmp_path / "static")
    result = check_deploy(tmp_path, values, "--fail-level", "DEBUG")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_without_the_https_settings_check_deploy_does_complain(tmp_path: Path) -> None:
    # The test above can fail: the same check with only DEBUG off finds the HTTPS warnings.
    result = check_deploy(tmp_path, {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)})
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stdout + result.stderr


PAGES = ["/", "/admin/", "/admin/runtimes/runtime/", "/admin/runtimes/auditevent/", "/api/docs/"]
LOGIN_PAGES = ["/login/", "/admin/login/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", [*PAGES, *LOGIN_PAGES])
def test_every_page_sends_the_content_security_policy(path: str) -> None:
    client = Client()
    if path not in LOGIN_PAGES:  # a logged-in visitor is sent on from the login pages
        ops = User.objects.create_superuser("ops", "ops@example.invalid", "ops-pw-for-tests")
        client.force_login(ops)
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    # Nothing the policy would block in the markup we render: no inline script, no style attribute.
    html = response.content.decode()
    assert "<script>" not in html and " style=" not in html


def finder_paths() -> list[str]:
    from django.apps import apps

    ignore = apps.get_app_config("staticfiles").ignore_patterns  # type: ignore[attr-defined]
    return [path for finder in get_finders() for path, _ in finder.list(ignore)]


def test_collected_files_are_current_only_when_the_manifest_covers_every_source(tmp_path: Path) -> None:
    assert not collected_is_current(tmp_path)  # no manifest
    manifest = tmp_path / MANIFEST_NAME
    paths = finder_paths()
    manifest.write_text(json.dumps({"paths": {path: path for path in paths}, "version": "1.1"}))
    assert collected_is_current(tmp_path)
    manifest.write_text(json.dumps({"paths": {path: path for path in paths[1:]}, "version": "1.1"}))
    assert not collected_is_current(tmp_path)  # a file the manifest does not know (an upgrade added it)
    manifest.write_text(json.dumps({"paths": {path: path for path in paths}, "version": "1.1"}))
    os.utime(manifest, (0, 0))
    assert not collected_is_current(tmp_path)  # sources newer than the manifest
    manifest.write_text("not json")
    assert not collected_is_current(tmp_path)


def test_ensure_collected_does_nothing_with_debug_or_when_current(tmp_path: Path, settings: object) -> None:
    from django.conf import settings as django_settings

    assert django_settings.DEBUG is False or ensure_collected() is False
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text(json.dumps({"paths": {path: path for path in finder_paths()}, "version": "1.1"}))
    settings.DEBUG = False  # type: ignore[attr-defined]
    settings.STATIC_ROOT = tmp_path  # type: ignore[attr-defined]
    assert ensure_collected() is False  # current: no collectstatic
    settings.DEBUG = True  # type: ignore[attr-defined]
    manifest.unlink()
    assert ensure_collected() is False  # DEBUG serves from the finders
