"""The OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/): complete, valid, envelope everywhere, no CDN."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

import workers.exceptions
from runtimes.errors import RuntimeRejected, YoiError
from runtimes.models import Runtime
from workers import schema as api_schema
from workers.urls import urlpatterns as worker_urlpatterns

API_PREFIX = "/api/v1/"
ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The generated schema, as the API serves it."""
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return schema


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(path, method, operation)`` of every operation in the schema."""
    return [
        (path, method, operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def routed_operations() -> set[tuple[str, str]]:
    """``(path, method)`` of every route of workers/urls.py, in OpenAPI path syntax."""
    found: set[tuple[str, str]] = set()
    for pattern in worker_urlpatterns:
        assert isinstance(pattern, URLPattern)
        regex = str(pattern.pattern.regex.pattern).lstrip("^").rstrip("$")
        path = API_PREFIX + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex)
        # DRF adds "head" to a ViewSet's actions at its first GET; OpenAPI has no separate HEAD operation.
        for method in pattern.callback.actions:  # type: ignore[attr-defined]
            if method != "head":
                found.add((path, method))
    return found


def test_schema_generates_valid_without_warnings(tmp_path: Path) -> None:
    GENERATOR_STATS.reset()
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.read_text("utf-8").startswith("openapi: 3.")


def test_schema_validates_against_the_openapi_spec(openapi: dict[str, Any]) -> None:
    validate_schema(openapi)
    assert openapi["info"]["title"] == "Yoi Workspace Backend API"


def test_schema_lists_every_route_with_its_methods(openapi: dict[str, Any]) -> None:
    documented = {(path, method) for path, method, _ in operations(openapi)}
    routed = routed_operations()
    assert len(routed) == 11
    assert documented == routed


def test_every_operation_has_a_unique_id_tag_and_summary(openapi: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(openapi)]
    assert len(ids) == len(set(ids))
    for _, _, operation in operations(openapi):
        assert operation["tags"] and operation["summary"]
        assert {"cookieAuth": []} in operation["security"] and {"tokenAuth": []} in operation["security"]


def test_every_operation_documents_the_error_envelope(openapi: dict[str, Any]) -> None:
    for path, method, operation in operations(openapi):
        responses = operation["responses"]
        errors = {int(status) for status in responses if int(status) >= 400}
        assert {401, 403, 500} <= errors, (method, path)
        for status in errors:
            content = responses[str(status)]["content"]["application/json"]
            assert content["schema"] == {"$ref": ENVELOPE_REF}, (method, path, status)
            example_codes = {example["value"]["error"]["code"] for example in content["examples"].values()}
            assert example_codes == set(api_schema.codes_for_status(status)), (method, path, status)
        if "{runtime_id}" in path and "workers" in path:
            # Every worker route reaches a runtime: the mapped upstream failures are documented.
            assert {404, 409, 422, 501, 502, 503, 504} <= errors, (method, path)
        if method == "post" and "requestBody" in operation:
            # Commands: a body (over the cap, not JSON) and the per-user command rate.
            assert {413, 415, 429} <= errors, (method, path)
        else:
            assert not {413, 429} & errors, (method, path)
        if 503 in errors:
            assert "runtime_busy" in api_schema.codes_for_status(503)
        if {429, 503} & errors:
            headers = {name for status in ("429", "503") for name in responses.get(status, {}).get("headers", {})}
            assert "Retry-After" in headers, (method, path)


def test_success_responses_and_bodies_reference_components(openapi: dict[str, Any]) -> None:
    expected = {
        ("/api/v1/runtimes/", "get"): ("200", "RuntimeList"),
        ("/api/v1/runtimes/{runtime_id}/", "get"): ("200", "Runtime"),
        ("/api/v1/runtimes/{runtime_id}/probe/", "post"): ("200", "Runtime"),
        ("/api/v1/runtimes/{runtime_id}/workers/", "get"): ("200", "WorkerList"),
        ("/api/v1/runtimes/{runtime_id}/workers/", "post"): ("201", "Worker"),
        ("/api/v1/runtimes/{runtime_id}/workers/{worker_id}/", "get"): ("200", "Worker"),
        ("/api/v1/runtimes/{runtime_id}/workers/{worker_id}/input/", "post"): ("202", "Ack"),
        ("/api/v1/runtimes/{runtime_id}/workers/{worker_id}/stop/", "post"): ("200", "Ack"),
        ("/api/v1/runtimes/{runtime_id}/workers/{worker_id}/cancel/", "post"): ("200", "Ack"),
        ("/api/v1/runtimes/{runtime_id}/workers/{worker_id}/transcript/", "get"): ("200", "TranscriptPage"),
        ("/api/v1/workers/", "get"): ("200", "WorkerListAll"),
    }
    for path, method, operation in operations(openapi):
        status, component = expected[(path, method)]
        successes = [code for code in operation["responses"] if int(code) < 400]
        assert successes == [status], (method, path)
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{component}"}, (method, path)
    bodies = {
        path.rsplit("/", 2)[-2]: operation.get("requestBody")
        for path, method, operation in operations(openapi)
        if method == "post"
    }
    assert bodies["workers"]["content"]["application/json"]["schema"]["$ref"].endswith("/WorkerCreateRequest")
    assert bodies["input"]["required"] is True
    assert "required" not in bodies["stop"] and "required" not in bodies["cancel"]  # the body is optional
    assert "required" not in bodies["workers"]  # every key of CreateWorker is optional


def test_ids_and_transcript_query_are_documented(openapi: dict[str, Any]) -> None:
    for path, _, operation in operations(openapi):
        params = {(p["in"], p["name"]): p for p in operation.get("parameters", [])}
        for name in ("runtime_id", "worker_id"):
            if "{" + name + "}" in path:
                assert params[("path", name)]["schema"]["pattern"] == "^[A-Za-z0-9_:-]{1,120}$"
        if path.endswith("/transcript/"):
            start = params[("query", "start")]["schema"]
            limit = params[("query", "limit")]["schema"]
            assert (start["minimum"], start["default"]) == (0, 0)
            assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 200, 50)


def test_the_four_commands_document_the_idempotency_key_header(openapi: dict[str, Any]) -> None:
    with_key = set()
    for _, _, operation in operations(openapi):
        params = {(p["in"], p["name"]): p for p in operation.get("parameters", [])}
        header = params.get(("header", "Idempotency-Key"))
        if header is not None:
            assert not header.get("required") and header["schema"]["pattern"] == r"^[\x21-\x7e]{1,255}$"
            assert "idempotency_key_reused" in str(operation["responses"]["422"])
            with_key.add(operation["operationId"])
    assert with_key == {
        "runtime_workers_create",
        "runtime_workers_input",
        "runtime_workers_stop",
        "runtime_workers_cancel",
    }
    worker = openapi["components"]["schemas"]["Worker"]["properties"]["epoch"]
    assert (worker["type"], worker["nullable"]) == ("string", True)


def test_optional_output_keys_are_not_required(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    worker, ack = components["Worker"], components["Ack"]
    assert {"created_at", "updated_at", "reason", "exit_code"}.isdisjoint(worker["required"])
    assert {"runtime_id", "worker_id", "status", "profile", "intent"} <= set(worker["required"])
    assert {"transcript_sequence", "event_id"}.isdisjoint(ack["required"])
    runtime = components["Runtime"]["properties"]
    assert runtime["status"] == {"$ref": "#/components/schemas/RuntimeStatus"}
    assert runtime["capabilities"] == {"$ref": "#/components/schemas/Capabilities"}
    assert "base_url" not in runtime and "token_ref" not in runtime


def test_error_code_enum_is_the_closed_vocabulary(openapi: dict[str, Any]) -> None:
    enum = openapi["components"]["schemas"]["ErrorCodeEnum"]["enum"]
    assert set(enum) == set(api_schema.ERROR_CODES)
    typed = api_schema.yoi_error_classes()
    source = Path(workers.exceptions.__file__).read_text("utf-8")
    api_codes = set(re.findall(r'error_body\(\s*"(\w+)"', source))
    assert set(enum) == set(typed) | api_codes
    for code, cls in typed.items():
        if cls is not RuntimeRejected:
            assert api_schema.ERROR_CODES[code][0] == cls.status, code
    rejected = {RuntimeRejected(upstream_code="x", upstream_status=s).http_status for s in (400, 409, 413)}
    assert rejected == {409, 422}
    assert "runtime_rejected" in api_schema.codes_for_status(409)
    assert api_schema.codes_for_status(422) == ["runtime_rejected", "idempotency_key_reused"]
    assert YoiError().code == "internal_error" and api_schema.ERROR_CODES["internal_error"][0] == 500


def test_schema_endpoint_needs_authentication(anon_client: APIClient, api_client: APIClient) -> None:
    anon = anon_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert anon.status_code == 401
    assert anon.json()["error"]["code"] == "not_authenticated"
    served = api_client.get("/api/schema/?format=json")
    assert served.status_code == 200
    body = served.json()
    assert body["openapi"].startswith("3.") and "/api/v1/runtimes/" in body["paths"]
    assert "/api/schema/" not in body["paths"] and "/api/docs/" not in body["paths"]


class _Links(HTMLParser):
    """Collects every src/href of a page and the text of inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def test_docs_page_needs_a_login(db: None) -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 302
    assert "next=/api/docs/" in response["Location"]


def test_docs_page_loads_only_local_static_files(user: User) -> None:
    client = Client()
    client.force_login(user)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode("utf-8")
    links = _Links()
    links.feed(html)
    # favicon, css, bundle, standalone preset, our css (drf-spectacular's inline style), the init script.
    assert len(links.urls) >= 6
    static = [url for url in links.urls if url.startswith("/static/")]
    assert links.urls[-1] == "/api/docs/?script="  # the init script is a file too: the page runs under the CSP
    for url in static:
        assert url.startswith(("/static/drf_spectacular_sidecar/swagger-ui-dist/", "/static/workers/")), url
        assert finders.find(url.removeprefix("/static/").split("?")[0]) is not None, url
    assert "<style" not in html and "<script>" not in html and " style=" not in html
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    # Nothing on the page or in its script points at another host (a CDN).
    for text in (html, script.content.decode("utf-8")):
        assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", text)
    assert '"/api/schema/"' in script.content.decode("utf-8")


def test_request_bodies_document_what_validation_refuses(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    content = components["WorkerInputRequest"]["properties"]["content"]
    assert components["WorkerInputRequest"]["required"] == ["content"]
    for text, accepted in [("hi", True), (" hi ", True), ("", False), (" \n\t", False), ("a\x00b", False)]:
        assert (re.search(content["pattern"], text) is not None and len(text) >= content["minLength"]) is accepted
    create = components["WorkerCreateRequest"]["properties"]
    assert create["intent"]["properties"]["kind"]["enum"] == ["assistant", "task", "role"]
    assert create["worker_id"]["pattern"] == "^[A-Za-z0-9_:-]{1,120}$"
    assert (create["profile"]["maxLength"], create["profile"]["nullable"]) == (200, True)
    assert components["WorkerEndRequest"]["properties"]["reason"]["maxLength"] == 500


def request_example(operation: dict[str, Any]) -> dict[str, Any]:
    """The first example of an operation's JSON body: what Swagger's "Try it out" pre-fills."""
    examples = operation["requestBody"]["content"]["application/json"].get("examples") or {}
    assert examples, f"{operation['operationId']} has no request body example"
    value: dict[str, Any] = next(iter(examples.values()))["value"]
    return value


def path_example(operation: dict[str, Any], name: str) -> str:
    """The example of a path parameter."""
    (parameter,) = [p for p in operation["parameters"] if p["in"] == "path" and p["name"] == name]
    value: str = next(iter(parameter["examples"].values()))["value"]
    return value


def test_every_request_body_carries_an_example_the_schema_accepts(openapi: dict[str, Any]) -> None:
    bodies = [(path, op) for path, _, op in operations(openapi) if "requestBody" in op]
    assert len(bodies) == 4  # create, input, stop, cancel
    for _path, operation in bodies:
        example = request_example(operation)
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        component = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(example) <= set(component["properties"]), (operation["operationId"], example)
        for key in component.get("required", []):
            assert key in example, (operation["operationId"], key)
        for key, value in example.items():
            pattern = component["properties"][key].get("pattern")
            if pattern and isinstance(value, str):
                assert re.search(pattern, value), (operation["operationId"], key, value)


def test_swaggers_examples_succeed_as_shipped(
    api_client: APIClient, embedded_runtime: Runtime, openapi: dict[str, Any]
) -> None:
    """What "Try it out" sends unchanged: create answers 201, then input 202, stop and cancel 200."""
    paths = openapi["paths"]
    create = paths["/api/v1/runtimes/{runtime_id}/workers/"]["post"]
    runtime_id = path_example(create, "runtime_id")
    response = api_client.post(f"/api/v1/runtimes/{runtime_id}/workers/", request_example(create), format="json")
    assert response.status_code == 201, response.content
    worker = response.json()
    assert worker["profile"] == "builtin:echo"
    base = f"/api/v1/runtimes/{runtime_id}/workers/{worker['worker_id']}/"
    for action, status in (("input", 202), ("stop", 200), ("cancel", 200)):
        operation = paths[f"/api/v1/runtimes/{{runtime_id}}/workers/{{worker_id}}/{action}/"]["post"]
        answer = api_client.post(f"{base}{action}/", request_example(operation), format="json")
        assert answer.status_code == status, (action, answer.content)
    assert api_client.get(base).json()["status"] == "stopped"
