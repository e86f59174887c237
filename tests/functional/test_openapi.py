"""GET /api/openapi.json: the API described, held to the code so the two cannot drift apart.

Every route of app.py is described and every described operation is routed;
the sandbox schema has exactly the fields ``sandboxes.to_json`` writes; the
request fields are the ones validation takes; the limits are the settings';
real answers of the API (successes and errors) match what the document says.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

import app as api
from chalicelib import openapi, params, sandboxes
from chalicelib.models import Sandbox, utcnow
from chalicelib.validation import LIMIT_FIELDS, TEXT_FIELDS

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def served(world: Any) -> dict[str, Any]:
    response = world.client.http.get("/api/openapi.json")  # no credentials
    assert response.status_code == 200, response.body
    doc: dict[str, Any] = response.json_body
    return doc


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item if method in METHODS}


def conforms(doc: dict[str, Any], path: str, method: str, response: Any) -> None:
    """The response's status is documented for the operation and its JSON body matches the schema."""
    documented = doc["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, f"{method} {path}: {response.status_code} is not documented"
    schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": doc["components"]})
    errors = [e.message for e in validator.iter_errors(response.json_body)]
    assert not errors, f"{method} {path} {response.status_code}: {errors}"


def finished_sandbox() -> Sandbox:
    now = utcnow()
    return Sandbox(
        "0123456789abcdef",
        app_id="app",
        image="base",
        docker_image="opendevelop/base:latest",
        cmd=["python test.py"],
        limits={"timeout": 10.0, "memory_mb": 256, "cpus": 1.0, "pids": 128, "disk_mb": 64, "output_kb": 64},
        status="terminated",
        server="local",
        created_at=now - timedelta(seconds=2),
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        return_code=0,
        stdout="hi\n",
        stderr="",
        logs="hi\n",
        file_count=1,
    )


# The document and the code


def test_the_document_is_valid_openapi_3_1(world):
    doc = served(world)

    validate_spec(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["basicAuth"] == {
        "type": "http",
        "scheme": "basic",
        "description": doc["components"]["securitySchemes"]["basicAuth"]["description"],
    }


def test_every_route_is_described_and_every_described_operation_is_routed(world):
    routed = {(path, method) for path, methods in api.app.routes.items() for method in methods}

    assert operations(served(world)) == routed
    assert set(openapi.OPERATIONS) == routed


def test_the_document_is_served_without_credentials_and_every_other_call_needs_them(world):
    doc = served(world)

    open_calls = {("/api/openapi.json", "GET"), ("/", "GET")}  # the document, and the playground page
    for path, method in open_calls:
        assert doc["paths"][path][method.lower()]["security"] == []
    assert doc["security"] == [{"basicAuth": []}]
    for path, method in operations(doc) - open_calls:
        operation = doc["paths"][path][method.lower()]
        assert "security" not in operation, f"{method} {path} overrides the default security"
        assert "401" in operation["responses"], f"{method} {path}"


def test_the_sandbox_schema_has_exactly_the_fields_to_json_writes(world):
    schema = served(world)["components"]["schemas"]["Sandbox"]
    queued = world.post_json({"image": "base", "cmd": ["true"]}).json_body
    finished = sandboxes.to_json(finished_sandbox())

    assert set(schema["properties"]) == set(finished) == set(queued)
    assert set(schema["required"]) == set(finished)
    validator = Draft202012Validator(schema)
    for instance in (queued, finished):
        assert not [e.message for e in validator.iter_errors(instance)], instance
    assert schema["properties"]["status"]["enum"] == ["queued", "running", "terminated", "error", "cancelled"]


def test_the_request_fields_are_the_ones_validation_takes(world):
    content = served(world)["paths"]["/api/sandboxes"]["post"]["requestBody"]["content"]

    form = content["multipart/form-data"]["schema"]
    urlencoded = content["application/x-www-form-urlencoded"]["schema"]
    as_json = content["application/json"]["schema"]
    assert set(form["properties"]) == {*TEXT_FIELDS, "file"}
    assert set(urlencoded["properties"]) == set(TEXT_FIELDS)
    assert set(as_json["properties"]) == {*TEXT_FIELDS, "files"}
    for schema in (form, urlencoded, as_json):
        assert schema["required"] == ["image", "cmd"]
        assert schema["additionalProperties"] is False  # unknown fields are refused


def test_the_limits_are_the_settings_defaults_minimums_and_ceilings(world):
    world.monkeypatch.setenv("OPENDEVELOP_MEMORY_MB_MAX", "512")
    world.monkeypatch.setenv("OPENDEVELOP_TIMEOUT_DEFAULT", "5")
    settings = world.reload_settings()

    doc = served(world)

    for content_type in ("multipart/form-data", "application/json", "application/x-www-form-urlencoded"):
        fields = doc["paths"]["/api/sandboxes"]["post"]["requestBody"]["content"][content_type]["schema"]["properties"]
        for name in LIMIT_FIELDS:
            limit = settings.limit(name)
            assert (fields[name]["minimum"], fields[name]["default"], fields[name]["maximum"]) == (
                limit.minimum,
                limit.default,
                limit.ceiling,
            ), f"{content_type} {name}"
        assert fields["memory_mb"]["maximum"] == 512
        assert fields["timeout"]["default"] == 5


# What the API answers, against what the document says


def test_successful_answers_match_the_document(world):
    doc = served(world)
    created = world.post_json({"image": "base", "cmd": ["python test.py"], "timeout": 5})
    sandbox_id = created.json_body["id"]

    conforms(doc, "/api/sandboxes", "POST", created)
    conforms(doc, "/api/images", "GET", world.get("/api/images"))
    conforms(doc, "/api/sandboxes", "GET", world.get("/api/sandboxes?limit=1"))
    conforms(doc, "/api/sandboxes/{sandbox_id}", "GET", world.get(f"/api/sandboxes/{sandbox_id}?wait=0"))
    conforms(
        doc,
        "/api/sandboxes/{sandbox_id}",
        "DELETE",
        world.client.http.delete(f"/api/sandboxes/{sandbox_id}", headers=world.auth),
    )
    assert created.headers["Location"] == f"/api/sandboxes/{sandbox_id}"
    assert "Location" in doc["paths"]["/api/sandboxes"]["post"]["responses"]["201"]["headers"]


def test_error_answers_match_the_document(world):
    doc = served(world)
    finished = world.post_json({"image": "base", "cmd": ["true"]}).json_body["id"]
    Sandbox.get(finished).update(actions=[Sandbox.status.set("terminated")])
    one = "/api/sandboxes/{sandbox_id}"

    cases = [
        ("/api/images", "GET", world.get("/api/images", headers={})),  # 401
        ("/api/sandboxes", "GET", world.get("/api/sandboxes?limit=0")),  # 400
        (one, "GET", world.get("/api/sandboxes/0000000000000000")),  # 404
        (one, "GET", world.get(f"/api/sandboxes/{finished}?wait=99")),  # 400
        (one, "DELETE", world.client.http.delete(f"/api/sandboxes/{finished}", headers=world.auth)),  # 409
        ("/api/sandboxes", "POST", world.post(b"{}", "text/csv")),  # 415
        ("/api/sandboxes", "POST", world.post_json({"image": "base", "cmd": "true", "timout": 5})),  # 400
    ]
    for path, method, response in cases:
        assert response.status_code >= 400
        conforms(doc, path, method, response)
    assert [r.status_code for _, _, r in cases] == [401, 400, 404, 400, 409, 415, 400]


@pytest.mark.parametrize(
    "path",
    ["/api/sandboxes?wiat=20", "/api/images?limit=5", "/api/sandboxes/0123456789abcdef?wait=1&x=1"],
)
def test_an_unknown_query_parameter_is_refused_naming_it(world, path):
    response = world.get(path)

    assert response.status_code == 400
    assert response.json_body["Code"] == "BadRequestError"
    name = "wiat" if "wiat" in path else "limit" if "images" in path else "x"
    assert response.json_body["Message"].startswith(f"{name}: unknown query parameter")


def test_the_documented_query_parameters_are_taken(world):
    assert world.get("/api/sandboxes?limit=5&cursor=").status_code == 200  # an empty cursor is the first page
    assert world.get("/api/sandboxes/0123456789abcdef?wait=0").status_code == 404
    documented = {
        (path, method.upper()): sorted(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
        for path, item in served(world)["paths"].items()
        for method, op in item.items()
    }
    assert {k: v for k, v in documented.items() if v} == {k: sorted(v) for k, v in params.QUERY.items()}
