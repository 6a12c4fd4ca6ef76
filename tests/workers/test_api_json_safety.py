"""Free-form JSON in a create body (``intent``, ``options``) that no runtime could carry is a 400, not a 500.

Found while fuzzing the schema: a lone surrogate failed to encode in the store or the client, and a number
too large for a float (``1e400``) created the worker and then broke rendering its JSON.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from runtimes.models import Runtime

URL = "/api/v1/runtimes/local/workers/"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"intent": {"kind": "task", "note": "\\ud800"}}', "intent"),
        (b'{"intent": {"kind": "task", "\\udfff": 1}}', "intent"),
        (b'{"intent": {"kind": "task", "x": [1, {"y": 1e400}]}}', "intent"),
        (b'{"intent": {"kind": "task", "x": -1e999}}', "intent"),
        (b'{"options": {"x": ["\\ud800"]}}', "options"),
        (b'{"options": {"count": 1e400}}', "options"),
    ],
)
def test_create_refuses_json_a_runtime_cannot_carry(
    api_client: APIClient, embedded_runtime: Runtime, raw: bytes, field: str
) -> None:
    response = api_client.post(URL, data=raw, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and field in error["fields"]


def test_create_keeps_ordinary_nested_json(api_client: APIClient, embedded_runtime: Runtime) -> None:
    intent = {"kind": "task", "x": [1, 2.5, None, True, {"y": "a\u0000é😀"}], "big": 10**30}
    response = api_client.post(URL, {"intent": intent}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["intent"] == intent
