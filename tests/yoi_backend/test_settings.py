"""Settings from the environment and a .env file (django-environ): the environment wins, bad values fail fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.runtime_process import REPO_ROOT

READ_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "stale": s.YOI_STATUS_STALE_SECONDS, "threads": s.YOI_HTTP_THREADS, "log_format": s.YOI_LOG_FORMAT,
    "metrics_token": s.YOI_METRICS_TOKEN, "hosts": s.ALLOWED_HOSTS, "debug": s.DEBUG,
    "monitor": s.YOI_HEALTH_MONITOR_SECONDS,
}))
"""


def read_settings(tmp_path: Path, env_file: str | None, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "YOI_")) and k != "DATABASE_URL"}
    env.update({"DJANGO_SETTINGS_MODULE": "yoi_backend.settings", "YOI_DATA_DIR": str(tmp_path / "data")})
    env["YOI_ENV_FILE"] = str(tmp_path / ".env")
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file, "utf-8")
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-c", READ_SETTINGS], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = (
        "YOI_STATUS_STALE_SECONDS=12\n"
        "YOI_HTTP_THREADS=16\n"
        "YOI_LOG_FORMAT=json\n"
        "YOI_METRICS_TOKEN=$not-a-variable-name\n"
        "DJANGO_ALLOWED_HOSTS=a.example, b.example\n"
        "YOI_HEALTH_MONITOR_SECONDS=0\n"
    )
    done = read_settings(tmp_path, dotenv, YOI_STATUS_STALE_SECONDS="7")
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout.strip().splitlines()[-1])
    assert values["stale"] == 7.0  # the environment over the file
    assert (values["threads"], values["log_format"], values["monitor"]) == (16, "json", 0.0)
    assert values["metrics_token"] == "$not-a-variable-name"  # a secret is taken as it is
    assert values["hosts"] == ["a.example", "b.example"]


def test_without_a_dotenv_the_defaults_hold(tmp_path: Path) -> None:
    done = read_settings(tmp_path, None)
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout.strip().splitlines()[-1])
    assert (values["stale"], values["threads"], values["log_format"], values["debug"]) == (
        30.0,
        128,
        "plain",
        True,
    )
    assert values["metrics_token"] == "" and values["monitor"] == 1.0


def test_a_malformed_value_in_the_file_fails_fast(tmp_path: Path) -> None:
    for line, message in (
        ("DJANGO_DEBUG=banana", "DJANGO_DEBUG must be a boolean"),
        ("YOI_STATUS_STALE_SECONDS=-3", "YOI_STATUS_STALE_SECONDS must be positive"),
        ("YOI_LOG_FORMAT=xml", "YOI_LOG_FORMAT must be plain or json"),
    ):
        done = read_settings(tmp_path, line + "\n")
        assert done.returncode != 0 and message in done.stderr, (line, done.stderr[-500:])
