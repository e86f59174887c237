"""The API described as an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

The document is built here from what the code enforces, so the two cannot
drift apart unnoticed:

* the request fields are ``validation.TEXT_FIELDS`` and the limits
  ``validation.LIMIT_FIELDS``, each with the minimum, default and ceiling of
  the ``Settings`` in force (the global ceilings; an app may have lower ones);
* the query parameters are ``params.QUERY``, the table the API parses them by;
* the sandbox's statuses are ``models.SANDBOX_STATES``; the error codes are
  the ``errors`` classes' own;
* ``tests/functional/test_openapi.py`` checks that every route of ``app.py``
  is described and every described operation is routed, that the sandbox
  schema's properties are exactly the keys ``sandboxes.to_json`` writes, and
  that the document is valid OpenAPI.
"""

from __future__ import annotations

from typing import Any

from chalicelib.artifacts import MAX_DEPTH
from chalicelib.output import DOWNLOADS
from chalicelib.params import QUERY
from chalicelib.settings import Settings

OPENAPI_VERSION = "3.1.0"


def artifact_path(depth: int) -> str:
    """The route of an artifact ``depth`` parts deep (app.py has one per depth: no greedy path locally)."""
    return "/api/sandboxes/{sandbox_id}/artifacts/" + "/".join(f"{{p{i}}}" for i in range(1, depth + 1))


API_VERSION = "1.0.0"

# The operations the API serves: (path, method) -> the statuses it may answer with.
# The functional tests hold this table and app.py's routes to each other.
# Every call may be a 400 (an unknown query parameter) and a 415 (Chalice refuses a body-less call
# whose Content-Type is not JSON).
OPERATIONS: dict[tuple[str, str], tuple[int, ...]] = {
    ("/", "GET"): (200, 400, 415),
    ("/api/openapi.json", "GET"): (200, 400, 415),
    ("/api/images", "GET"): (200, 400, 401, 415, 503),
    ("/api/images/{name}", "GET"): (200, 400, 401, 404, 415, 503),
    ("/api/usage", "GET"): (200, 400, 401, 415, 503),
    ("/api/sandboxes", "GET"): (200, 400, 401, 415, 503),
    ("/api/sandboxes", "POST"): (201, 400, 401, 413, 415, 429, 503),
    ("/api/sandboxes/batch", "POST"): (201, 207, 400, 401, 413, 415, 429, 503),
    ("/api/sandboxes/{sandbox_id}", "GET"): (200, 400, 401, 404, 415, 503),
    ("/api/sandboxes/{sandbox_id}", "DELETE"): (200, 400, 401, 404, 409, 415, 503),
    ("/api/sandboxes/{sandbox_id}/logs", "GET"): (200, 400, 401, 404, 410, 415, 503),
    ("/api/sandboxes/{sandbox_id}/stdout", "GET"): (200, 206, 307, 400, 401, 404, 410, 415, 416, 503),
    ("/api/sandboxes/{sandbox_id}/stderr", "GET"): (200, 206, 307, 400, 401, 404, 410, 415, 416, 503),
    ("/api/sandboxes/{sandbox_id}/artifacts", "GET"): (200, 307, 400, 401, 404, 409, 410, 415, 503),
    **{
        (artifact_path(depth), "GET"): (200, 206, 307, 400, 401, 404, 409, 410, 415, 416, 503)
        for depth in range(1, MAX_DEPTH + 1)
    },
}


def _query_parameters(path: str, method: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "schema": dict(param.schema), "description": param.description}
        for name, param in QUERY[(path, method)].items()
    ]


from chalicelib.openapi_schemas import (  # noqa: E402 - the schemas live beside, the operations here
    _error_response,
    _image_schema,
    _json,
    _request_body,
    _sandbox_id_parameter,
    _sandbox_schema,
    _usage_schema,
)
from chalicelib.openapi_webhooks import IDS_DOC, batch_operation, webhooks_section  # noqa: E402


def _operations(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    sandbox = {"$ref": "#/components/schemas/Sandbox"}
    return {
        ("/", "GET"): {
            "operationId": "getPlayground",
            "summary": "The playground: a page that signs in, runs code and shows the app's history, in the browser",
            "security": [],
            "parameters": _query_parameters("/", "GET"),
            "responses": {
                "200": {
                    "description": "The page (HTML with its script and style; it calls this API from the browser).",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        },
        ("/api/openapi.json", "GET"): {
            "operationId": "getOpenApi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": _json({"type": "object"})}},
        },
        ("/api/images", "GET"): {
            "operationId": "listImages",
            "summary": "The enabled image names; with `detail=true`, each image described",
            "parameters": _query_parameters("/api/images", "GET"),
            "responses": {
                "200": {
                    "description": "Image names, sorted; with `detail=true`, the images described, by name.",
                    "content": _json(
                        {
                            "oneOf": [
                                {"type": "array", "items": {"type": "string"}, "examples": [["base", "go"]]},
                                {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                            ]
                        }
                    ),
                }
            },
        },
        ("/api/usage", "GET"): {
            "operationId": "getUsage",
            "summary": "The app's own use and quotas",
            "responses": {
                "200": {
                    "description": "Now, today (UTC) and the limits (0: no limit).",
                    "content": _json(_usage_schema()),
                }
            },
        },
        ("/api/images/{name}", "GET"): {
            "operationId": "getImage",
            "summary": "One image described: its language, version and how to run a file with it",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "An image name from `GET /api/images`.",
                }
            ],
            "responses": {
                "200": {"description": "The image.", "content": _json({"$ref": "#/components/schemas/Image"})},
                "404": {**_error_response(404), "description": "No such image, or a disabled one."},
            },
        },
        ("/api/sandboxes", "GET"): {
            "operationId": "listSandboxes",
            "summary": "The app's sandboxes, newest first, a page at a time; or many by id (`ids`)",
            "parameters": _query_parameters("/api/sandboxes", "GET"),
            "responses": {
                "200": {
                    "description": "One page; `next` is the cursor of the following page, or null after the last. "
                    + IDS_DOC,
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["sandboxes", "next"],
                            "properties": {
                                "sandboxes": {"type": "array", "items": sandbox},
                                "next": {"type": ["string", "null"]},
                            },
                        }
                    ),
                }
            },
        },
        ("/api/sandboxes", "POST"): {
            "operationId": "createSandbox",
            "summary": "Create a sandbox and queue it to run",
            "requestBody": _request_body(settings),
            "responses": {
                "201": {
                    "description": "Created and queued. A client that accepts only `text/plain` gets the bare id.",
                    "headers": {
                        "Location": {
                            "schema": {"type": "string"},
                            "required": True,
                            "description": "`/api/sandboxes/{id}`",
                        }
                    },
                    "content": {
                        "application/json": {"schema": sandbox},
                        "text/plain": {"schema": {"type": "string", "pattern": "^[0-9a-f]+$"}},
                    },
                    "links": {
                        "GetSandbox": {"operationId": "getSandbox", "parameters": {"sandbox_id": "$response.body#/id"}},
                        "CancelSandbox": {
                            "operationId": "cancelSandbox",
                            "parameters": {"sandbox_id": "$response.body#/id"},
                        },
                    },
                }
            },
        },
        ("/api/sandboxes/batch", "POST"): batch_operation(),
        ("/api/sandboxes/{sandbox_id}", "GET"): {
            "operationId": "getSandbox",
            "summary": "One sandbox; with `wait`, held until it settles",
            "parameters": [_sandbox_id_parameter(), *_query_parameters("/api/sandboxes/{sandbox_id}", "GET")],
            "responses": {"200": {"description": "The sandbox.", "content": _json(sandbox)}},
        },
        ("/api/sandboxes/{sandbox_id}", "DELETE"): {
            "operationId": "cancelSandbox",
            "summary": "Cancel a sandbox that has not finished",
            "parameters": [_sandbox_id_parameter()],
            "responses": {"200": {"description": "The sandbox, cancelled.", "content": _json(sandbox)}},
        },
        ("/api/sandboxes/{sandbox_id}/logs", "GET"): {
            "operationId": "tailLogs",
            "summary": "The live tail: the output from a byte offset, while the sandbox runs and after",
            "parameters": [_sandbox_id_parameter(), *_query_parameters("/api/sandboxes/{sandbox_id}/logs", "GET")],
            "responses": {
                "200": {
                    "description": "The text from byte `offset` (at most 64 KiB of bytes; never a cut character); "
                    "ask next from `next`; `done` once the sandbox has settled and all of it was answered.",
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["data", "offset", "next", "done"],
                            "properties": {
                                "data": {"type": "string"},
                                "offset": {"type": "integer", "minimum": 0},
                                "next": {"type": "integer", "minimum": 0},
                                "done": {"type": "boolean"},
                            },
                        }
                    ),
                }
            },
        },
        **{(f"/api/sandboxes/{{sandbox_id}}/{stream}", "GET"): _download_operation(stream) for stream in DOWNLOADS},
        **_artifact_operations(),
    }


def _download_operation(stream: str) -> dict[str, Any]:
    octets = {
        "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    }
    return {
        "operationId": f"get{stream.capitalize()}",
        "summary": f"The program's {stream}: the exact bytes it wrote (so far, while it runs)",
        "parameters": [
            _sandbox_id_parameter(),
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-100`).",
            },
        ],
        "responses": {
            "200": {"description": "The whole stream.", "content": octets},
            "206": {"description": "The range asked for (`Content-Range`).", "content": octets},
            "307": {
                "description": "Stored outside the API: the `Location` is a short-lived URL of the bytes "
                "(it honours `Range` too). Send no credentials there.",
                "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
            },
        },
    }


def _artifact_operations() -> dict[tuple[str, str], dict[str, Any]]:
    not_yet = {"description": "The sandbox has not finished: artifacts are collected when its program ends."}
    tar = {
        "operationId": "getArtifacts",
        "summary": "The files the program left in out/, as one tar (names relative to out/)",
        "parameters": [_sandbox_id_parameter()],
        "responses": {
            "200": {
                "description": "A tar (an empty one when there are no artifacts).",
                "content": {
                    "application/x-tar": {"schema": {"type": "string", "contentMediaType": "application/x-tar"}}
                },
            },
            "307": {
                "description": "The `Location` is a short-lived URL of the stored tar. Send no credentials there.",
                "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
            },
            "409": {**_error_response(409), **not_yet},
        },
    }
    operations = {("/api/sandboxes/{sandbox_id}/artifacts", "GET"): tar}
    for depth in range(1, MAX_DEPTH + 1):
        one = _download_operation("artifact")
        parts = [
            {"name": f"p{i}", "in": "path", "required": True, "schema": {"type": "string"}, "description": ""}
            for i in range(1, depth + 1)
        ]
        for part in parts:
            part["description"] = "The artifact's name, one folder (or the file) per part: `out/a/b.txt` is `a/b.txt`."
        one["operationId"] = f"getArtifact{depth}"
        one["summary"] = f"One artifact's bytes ({depth} part{'s' if depth > 1 else ''} deep)"
        one["parameters"] = [one["parameters"][0], *parts, one["parameters"][1]]
        one["responses"] = {
            **one["responses"],
            "404": {**_error_response(404), "description": "No such sandbox, or it has no such artifact."},
            "409": {**_error_response(409), **not_yet},
        }
        operations[(artifact_path(depth), "GET")] = one
    return operations


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of the API under ``settings`` (its limits and sizes)."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in _operations(settings).items():
        statuses = OPERATIONS[(path, method)]
        responses = dict(operation["responses"])
        for status in statuses:
            if status >= 400:
                responses.setdefault(str(status), _error_response(status))
        missing = {str(s) for s in statuses} ^ set(responses)
        if missing:
            raise AssertionError(f"openapi: {method} {path} answers with statuses not described: {sorted(missing)}")
        paths.setdefault(path, {})[method.lower()] = {**operation, "responses": responses}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "OpenDevelop",
            "version": API_VERSION,
            "description": "Run code in fresh, locked-down Docker containers: one request carries the files and "
            "the command, and the result (status, return code, output) is kept to be read.",
        },
        "security": [{"basicAuth": []}],
        "paths": paths,
        "webhooks": webhooks_section(),
        "components": {
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The app's id as the user name and its secret as the password.",
                }
            },
            "schemas": {
                "Sandbox": _sandbox_schema(settings),
                "Image": _image_schema(),
                "Error": {
                    "type": "object",
                    "required": ["Code", "Message"],
                    "properties": {"Code": {"type": "string"}, "Message": {"type": "string"}},
                },
            },
        },
    }
