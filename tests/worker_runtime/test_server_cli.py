"""``yoi-runtime serve`` as a process: startup line, refusals, locked store, clean shutdown, token hygiene."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.runtime_process import (
    DEFAULT_TOKEN,
    READY_RE,
    REPO_ROOT,
    TOKEN_ENV,
    RuntimeProcess,
    api_get,
    api_post,
    create_worker,
    example_config,
    open_events,
    runtime_env,
    runtime_summary,
    wait_until,
    worker_detail,
)


def run_cli(args: list[str], *, token: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``python -m worker_runtime`` expecting it to exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "worker_runtime", *args],
        cwd=REPO_ROOT,
        env=runtime_env(token),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def serve_args(tmp_path: Path, *extra: str, bind: str = "127.0.0.1:0") -> list[str]:
    return ["serve", "--bind", bind, "--store", str(tmp_path / "store"), "--runtime-id", "rt-cli", *extra]


def test_startup_line_names_the_real_port_and_never_the_token(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    assert rt.port > 0 and rt.base_url == f"http://127.0.0.1:{rt.port}"
    assert rt.stdout is not None
    assert rt.stdout.lines == [f"yoi-runtime: runtime rt-test listening on {rt.base_url} (store: fs_store)"]
    assert rt.stop() == 0
    assert DEFAULT_TOKEN not in rt.stdout.text() and DEFAULT_TOKEN not in rt.stderr_text()


def test_sigterm_with_open_streams_and_a_subprocess_worker_exits_cleanly(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    echo = create_worker(rt)["worker_id"]
    agent = create_worker(rt, {"intent": {"kind": "task"}, "profile": {"kind": "named", "value": "example-agent"}})
    streams = [open_events(rt, echo) for _ in range(3)]
    wait_until(lambda: runtime_summary(rt)["event_streams_open"] == 3)
    started = time.monotonic()
    assert rt.stop(timeout=15) == 0
    assert time.monotonic() - started < 5
    for stream in streams:
        assert stream.next_frame() is None
    assert "Traceback" not in rt.stderr_text()
    restarted = rt.restart()
    assert worker_detail(restarted, echo)["status"] == "running"
    agent_detail = worker_detail(restarted, agent["worker_id"])
    assert (agent_detail["status"], agent_detail["reason"]) == ("failed", "runtime_shutdown")


def test_sigint_exits_cleanly(runtime_process: RuntimeProcess) -> None:
    runtime_process.proc.send_signal(signal.SIGINT)
    assert runtime_process.proc.wait(10) == 0


def test_refuses_to_start_without_a_token_source(tmp_path: Path) -> None:
    result = run_cli(serve_args(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "yoi-runtime: refusing to start without a token: give --token-env NAME or --token-file PATH"
    ]
    assert result.stdout == "" and not (tmp_path / "store").exists()


@pytest.mark.parametrize("auth", [[], ["--insecure-no-auth"]])
def test_refuses_a_non_loopback_bind_without_a_token(tmp_path: Path, auth: list[str]) -> None:
    result = run_cli(serve_args(tmp_path, *auth, bind="0.0.0.0:0"))
    assert result.returncode == 2 and "refusing" in result.stderr
    assert result.stdout == ""


def test_empty_token_variable_is_refused(tmp_path: Path) -> None:
    result = run_cli(serve_args(tmp_path, "--token-env", TOKEN_ENV), token="  ")
    assert result.returncode == 2
    assert f"environment variable {TOKEN_ENV} is not set or empty" in result.stderr


def test_insecure_no_auth_on_loopback_serves_without_a_token(runtime_factory: Any) -> None:
    rt = runtime_factory(token=None)
    response = requests.get(rt.url("/v1/runtime"), timeout=10)
    assert response.status_code == 200 and response.json()["runtime"]["runtime_id"] == "rt-test"


def test_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-value\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker_runtime", *serve_args(tmp_path, "--token-file", str(token_file))],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = READY_RE.match(proc.stdout.readline().rstrip("\n"))
        assert match is not None and "file-token-value" not in match.group(0)
        url = f"http://127.0.0.1:{match.group(4)}/v1/runtime"
        assert (
            requests.get(url, headers={"Authorization": "Bearer file-token-value"}, timeout=10).status_code == 200
        )
        assert requests.get(url, headers={"Authorization": "Bearer other"}, timeout=10).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    token_file.write_text("\n")
    result = run_cli(serve_args(tmp_path, "--token-file", str(token_file)))
    assert result.returncode == 2 and "the token file is empty" in result.stderr


def test_a_locked_store_is_refused(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    result = run_cli(
        ["serve", "--bind", "127.0.0.1:0", "--store", str(rt.store), "--runtime-id", "rt-test",
         "--token-env", TOKEN_ENV],
        token=DEFAULT_TOKEN,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot open the store" in result.stderr and "locked by another process" in result.stderr
    assert result.stdout == ""
    assert runtime_summary(rt)["status"] == "running"


def test_a_store_of_another_runtime_is_refused(runtime_process: RuntimeProcess) -> None:
    rt = runtime_process
    assert rt.stop() == 0
    result = run_cli(
        ["serve", "--bind", "127.0.0.1:0", "--store", str(rt.store), "--runtime-id", "someone-else",
         "--insecure-no-auth"]
    )  # fmt: skip
    assert result.returncode == 2 and "belongs to runtime 'rt-test'" in result.stderr


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("this is = = not toml", "config file is not valid TOML"),
        ("event_retention = -1", "event_retention must be a positive integer"),
        ('default_profile = "missing"', "default_profile 'missing' is not a configured profile"),
    ],
)
def test_config_errors_exit_2_with_one_line(tmp_path: Path, config_text: str, message: str) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text(config_text)
    result = run_cli(serve_args(tmp_path, "--insecure-no-auth", "--config", str(config)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yoi-runtime: invalid config: ") and message in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "127.0.0.1"], "--bind must be HOST:PORT"),
        (["--bind", "127.0.0.1:99999"], "--bind must be HOST:PORT"),
        (["--runtime-id", "bad id"], "--runtime-id must match"),
        (["--ping-interval", "0"], "--ping-interval must be positive"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--bind": "127.0.0.1:0", "--runtime-id": "rt", "--store": str(tmp_path / "s")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["serve", "--insecure-no-auth", *[x for pair in base.items() for x in pair]]
    result = run_cli(argv)
    assert result.returncode == 2 and message in result.stderr


def test_memory_store(runtime_factory: Any) -> None:
    rt = runtime_factory(extra_args=("--memory",))
    assert rt.stdout.lines[0].endswith("(store: memory)")
    assert runtime_summary(rt)["backend"] == "memory"


def test_agents_do_not_inherit_the_token(runtime_factory: Any, tmp_path: Path) -> None:
    agent = tmp_path / "env_agent.py"
    agent.write_text(
        "import json, os, sys\n"
        "for line in sys.stdin:\n"
        f"    leaked = any({DEFAULT_TOKEN!r} in v for v in os.environ.values()) or {TOKEN_ENV!r} in os.environ\n"
        "    print(json.dumps({'event': 'text_done', 'data': {'text': 'leaked' if leaked else 'clean'}}))\n"
        "    sys.stdout.flush()\n"
    )
    extra = f'[[profile]]\nname = "env-agent"\ncommand = ["{sys.executable}", "{agent}"]\n'
    rt = runtime_factory(config_text=example_config() + extra)
    worker = create_worker(rt, {"intent": {"kind": "task"}, "profile": {"kind": "named", "value": "env-agent"}})
    api_post(rt, f"/v1/workers/{worker['worker_id']}/input", {"content": "check"})
    wait_until(lambda: worker_detail(rt, worker["worker_id"])["transcript_len"] == 2)
    items = api_get(rt, f"/v1/workers/{worker['worker_id']}/transcript").json()["transcript"]["items"]
    assert items[-1]["content"] == "clean"


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "yoi-runtime"
    if not script.exists():
        pytest.skip("the console script is not installed in this interpreter's bin dir")
    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and "--token-env" in result.stdout


def test_a_taken_port_is_refused_before_the_store_is_touched(
    runtime_process: RuntimeProcess, tmp_path: Path
) -> None:
    result = run_cli(serve_args(tmp_path, "--insecure-no-auth", bind=f"127.0.0.1:{runtime_process.port}"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"yoi-runtime: cannot listen on 127.0.0.1:{runtime_process.port}: Address already in use"
    )
    assert not (tmp_path / "store").exists()


def test_head_on_events_answers_without_subscribing(runtime_process: RuntimeProcess) -> None:
    worker_id = create_worker(runtime_process)["worker_id"]
    url = runtime_process.url(f"/v1/workers/{worker_id}/events")
    response = requests.head(url, headers=runtime_process.headers(), timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert (
        requests.head(url.replace(worker_id, "nobody"), headers=runtime_process.headers(), timeout=10).status_code
        == 404
    )
    assert runtime_summary(runtime_process)["event_streams_open"] == 0
