"""Schema fuzzing: schemathesis against a running Backend (daphne), over every operation of /api/schema/.

The Backend runs as a real process with its own SQLite database and data dir, and three runtimes registered
through ``sync_runtimes``: ``embedded``, ``remote`` (a real ``yoi-runtime`` process) and ``dead`` (a refused
port). Generated path ids are sometimes swapped for those runtimes and for workers that exist on them, so
the success paths are exercised as well as the 400/404 ones.

Every response must conform to the schema (status code, content type, body), and no response may be a
5xx other than the mapped upstream failures of docs/api.md's error table (502/503/504 with one of their
codes) of the dead runtime.

One test per operation and generation mode (valid data / data invalid in one place), each a Hypothesis test
over the operation's schemathesis strategy. (``schemathesis.pytest.from_fixture`` would be the shorter way,
but its lazy loader sets ``Function._nodeid``, which pytest 9.2 no longer has.)

Opt-in (``YOI_RUN_FUZZ=1``; ``.ci/run`` sets it). ``YOI_FUZZ_MAX_EXAMPLES`` (default 25 per operation and
mode) and ``YOI_FUZZ_BUDGET_SECONDS`` (default 240, the whole run) bound it. A failure prints the Hypothesis
seed that reproduces it (``--hypothesis-seed=N``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from django.urls import URLPattern
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.backend_process import BackendProcess, backend_env, free_port, manage, start_backend
from tests.runtime_process import RuntimeProcess, kill_spawned_since, spawned_count, start_runtime
from workers.schema import MAPPED_UPSTREAM_CODES
from workers.urls import urlpatterns as worker_urlpatterns

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.skipif(os.environ.get("YOI_RUN_FUZZ") != "1", reason="schema fuzzing runs with YOI_RUN_FUZZ=1"),
    pytest.mark.timeout(900),
]

MAX_EXAMPLES = int(os.environ.get("YOI_FUZZ_MAX_EXAMPLES", "25"))
BUDGET_SECONDS = float(os.environ.get("YOI_FUZZ_BUDGET_SECONDS", "240"))
HTTP_TIMEOUT = 20.0
USERNAME = "fuzzer"
REMOTE_TOKEN_ENV = "YOI_RUNTIME_TOKEN_FUZZ_REMOTE"
DEAD_RUNTIME_ID = "dead"
CREATE_OPERATION = "POST /api/v1/runtimes/{runtime_id}/workers/"
KNOWN_PROFILES = ("builtin:echo", "builtin:burst")
SETUP_SCRIPT = f"""
from django.contrib.auth import get_user_model
get_user_model().objects.create_user({USERNAME!r}, password=None)
"""


@dataclass
class FuzzBackend:
    """The Backend under test, with the ids a fuzzed request may be pointed at."""

    base_url: str
    token: str
    log_path: Path
    runtime_ids: list[str]
    workers: list[tuple[str, str]]
    started: float = field(default_factory=time.monotonic)
    # "METHOD /path (mode)" -> status -> requests
    counts: dict[str, Counter[int]] = field(default_factory=dict)
    skipped: int = 0

    def api(self, method: str, path: str, body: Any = None) -> requests.Response:
        """One authenticated API call."""
        headers = {"Authorization": f"Token {self.token}"}
        return requests.request(
            method, self.base_url + path, json=body, headers=headers, timeout=HTTP_TIMEOUT, allow_redirects=False
        )


def runtimes_toml(remote: RuntimeProcess) -> str:
    """The runtimes file: embedded, a live remote, a dead remote (nothing listens on its port)."""
    return f"""
[[runtime]]
runtime_id = "embedded"
display_name = "Fuzz embedded"
kind = "embedded"

[[runtime]]
runtime_id = "remote"
display_name = "Fuzz remote"
kind = "remote"
base_url = {json.dumps(remote.base_url)}
token_ref = "env:{REMOTE_TOKEN_ENV}"
connect_timeout = 2.0
read_timeout = 10.0

[[runtime]]
runtime_id = "{DEAD_RUNTIME_ID}"
display_name = "Fuzz dead"
kind = "remote"
base_url = "http://127.0.0.1:{free_port()}"
token_ref = "env:{REMOTE_TOKEN_ENV}"
connect_timeout = 1.0
read_timeout = 2.0
"""


def seed_workers(backend: FuzzBackend) -> None:
    """A running and a stopped echo worker on each live runtime, for fuzzed ids to point at."""
    for runtime_id in ("embedded", "remote"):
        for end in (None, "stop"):
            created = backend.api("POST", f"/api/v1/runtimes/{runtime_id}/workers/", {"profile": "builtin:echo"})
            assert created.status_code == 201, created.text
            worker_id = created.json()["worker_id"]
            worker_url = f"/api/v1/runtimes/{runtime_id}/workers/{worker_id}/"
            said = backend.api("POST", worker_url + "input/", {"content": "hi"})
            assert said.status_code == 202, said.text
            if end:
                ended = backend.api("POST", worker_url + f"{end}/")
                assert ended.status_code == 200, ended.text
            backend.workers.append((runtime_id, worker_id))


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[FuzzBackend]:
    """A Backend under daphne with three runtimes, a user and an API token; stopped (and summarized) after."""
    tmp = tmp_path_factory.mktemp("fuzz")
    marker = spawned_count()
    daphne: BackendProcess | None = None
    fuzz: FuzzBackend | None = None
    try:
        remote_token = secrets.token_urlsafe(24)
        remote = start_runtime(tmp / "runtime", runtime_id="remote", token=remote_token)
        data_dir = tmp / "data"
        data_dir.mkdir()
        env = backend_env(
            secret_key=secrets.token_urlsafe(32),
            data_dir=data_dir,
            database_url=f"sqlite:///{data_dir / 'db.sqlite3'}",
            extra={
                "YOI_LOG_LEVEL": "WARNING",
                "YOI_REGISTRY_REFRESH_SECONDS": "1",
                REMOTE_TOKEN_ENV: remote_token,
            },
        )
        config = tmp / "runtimes.toml"
        config.write_text(runtimes_toml(remote), "utf-8")
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("sync_runtimes", "--file", str(config), env=env)
        manage("shell", "-c", SETUP_SCRIPT, env=env)
        token = manage("drf_create_token", USERNAME, env=env).split()[2]

        daphne = start_backend(env=env, log_path=tmp / "daphne.log")
        fuzz = FuzzBackend(
            base_url=daphne.base_url,
            token=token,
            log_path=daphne.log_path,
            runtime_ids=["embedded", "remote", DEAD_RUNTIME_ID],
            workers=[],
        )
        seed_workers(fuzz)
        yield fuzz
    finally:
        if daphne is not None:
            daphne.stop(15)
        kill_spawned_since(marker)
        if fuzz is not None:
            report(request, fuzz)


def report(request: pytest.FixtureRequest, fuzz: FuzzBackend) -> None:
    """Print how many requests each operation got and the status codes seen (shown even with -q)."""
    total: Counter[int] = Counter()
    lines = []
    for label, statuses in sorted(fuzz.counts.items()):
        total.update(statuses)
        by_status = " ".join(f"{status}:{n}" for status, n in sorted(statuses.items()))
        lines.append(f"  {statuses.total():4d}  {label:75s} {by_status}")
    elapsed = time.monotonic() - fuzz.started
    lines.insert(
        0, f"schema fuzzing: {total.total()} requests in {elapsed:.0f}s (per operation and mode: statuses)"
    )
    lines.append("  statuses: " + " ".join(f"{status}:{n}" for status, n in sorted(total.items())))
    if fuzz.skipped:
        lines.append(f"  {fuzz.skipped} generated cases not sent: the {BUDGET_SECONDS:.0f}s budget ran out")
    lines.append(f"  Backend log: {fuzz.log_path}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines), flush=True)


@pytest.fixture(scope="module")
def api_schema(backend: FuzzBackend) -> Any:
    """The Backend's own schema, loaded over HTTP, with auth and bounds applied."""
    loaded = schemathesis.openapi.from_url(
        backend.base_url + "/api/schema/?format=json",
        headers={"Authorization": f"Token {backend.token}"},
        timeout=HTTP_TIMEOUT,
    )
    loaded.config.update(
        base_url=backend.base_url,
        headers={"Authorization": f"Token {backend.token}"},
        request_timeout=HTTP_TIMEOUT,
    )
    loaded.config.generation.update(
        max_examples=MAX_EXAMPLES, database="none", with_security_parameters=False, allow_x00=True
    )

    pairs = [{"runtime_id": rid, "worker_id": wid} for rid, wid in backend.workers]
    runtimes = [{"runtime_id": rid} for rid in backend.runtime_ids]

    @loaded.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        """Keep the generated ids, or point the request at a runtime / worker that exists."""
        if not path_parameters:
            return st.just(path_parameters)
        known = pairs if "worker_id" in path_parameters else runtimes
        return st.one_of(st.just(path_parameters), st.sampled_from([{**path_parameters, **ids} for ids in known]))

    @loaded.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        """Keep a generated create body, or ask for a profile the runtimes have (with the generated options)."""
        if context.operation.label != CREATE_OPERATION or not isinstance(body, dict):
            return st.just(body)
        return st.one_of(st.just(body), st.sampled_from([{**body, "profile": name} for name in KNOWN_PROFILES]))

    return loaded


def not_a_server_error_unless_mapped(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except the mapped upstream failures (502/503/504 with their §5 codes in the envelope) of the
    runtime that is down on purpose: from the embedded or the live remote runtime even those are findings."""
    mapped = MAPPED_UPSTREAM_CODES.get(response.status_code)
    if mapped is not None:
        try:
            error = json.loads(response.content)["error"]
            code, runtime_id = error["code"], error.get("runtime_id")
        except (ValueError, KeyError, TypeError):
            code = runtime_id = None
        if code in mapped and runtime_id == DEAD_RUNTIME_ID:
            return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_unless_mapped,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def routed_operations() -> list[str]:
    """``METHOD /path`` of every route of workers/urls.py, in OpenAPI path syntax (what the schema must list)."""
    labels = []
    for pattern in worker_urlpatterns:
        assert isinstance(pattern, URLPattern)
        regex = str(pattern.pattern.regex.pattern).lstrip("^").rstrip("$")
        path = "/api/v1/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex)
        actions = pattern.callback.actions  # type: ignore[attr-defined]
        # DRF adds "head" to a ViewSet's actions at its first GET; OpenAPI has no separate HEAD operation.
        labels += [f"{method.upper()} {path}" for method in actions if method != "head"]
    return sorted(labels)


OPERATIONS = routed_operations()


def test_served_schema_lists_every_route(api_schema: Any) -> None:
    served = sorted(result.ok().label for result in api_schema.get_all_operations())
    assert served == OPERATIONS


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_its_schema(
    label: str, mode: GenerationMode, api_schema: Any, backend: FuzzBackend
) -> None:
    """Generated requests (valid, or invalid in one place) get documented, conforming answers; no unmapped 5xx."""
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    definition = operation.definition.raw
    if mode is GenerationMode.NEGATIVE and not (definition.get("parameters") or definition.get("requestBody")):
        pytest.skip("no parameters and no body: there is nothing to make invalid")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        if time.monotonic() - backend.started > BUDGET_SECONDS:
            backend.skipped += 1
            return
        response = case.call()
        backend.counts.setdefault(f"{label} ({mode})", Counter())[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    run()
