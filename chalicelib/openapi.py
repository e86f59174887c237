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

from chalicelib import errors
from chalicelib.files import MAX_NAME_BYTES
from chalicelib.models import SANDBOX_STATES
from chalicelib.params import QUERY
from chalicelib.settings import Settings
from chalicelib.validation import ENV_NAME, LIMIT_FIELDS, MAX_ENV, TEXT_FIELDS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"

# The operations the API serves: (path, method) -> the statuses it may answer with.
# The functional tests hold this table and app.py's routes to each other.
# Every call may be a 400 (an unknown query parameter) and a 415 (Chalice refuses a body-less call
# whose Content-Type is not JSON).
OPERATIONS: dict[tuple[str, str], tuple[int, ...]] = {
    ("/api/openapi.json", "GET"): (200, 400, 415),
    ("/api/images", "GET"): (200, 400, 401, 415, 503),
    ("/api/usage", "GET"): (200, 400, 401, 415, 503),
    ("/api/sandboxes", "GET"): (200, 400, 401, 415, 503),
    ("/api/sandboxes", "POST"): (201, 400, 401, 413, 415, 429, 503),
    ("/api/sandboxes/{sandbox_id}", "GET"): (200, 400, 401, 404, 415, 503),
    ("/api/sandboxes/{sandbox_id}", "DELETE"): (200, 400, 401, 404, 409, 415, 503),
}


def _query_parameters(path: str, method: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "schema": dict(param.schema), "description": param.description}
        for name, param in QUERY[(path, method)].items()
    ]


_ERRORS: dict[int, tuple[type[errors.OpenDevelopError], str]] = {
    400: (errors.InvalidInput, "Bad input; the message names the field and says why. Nothing was stored or queued."),
    401: (errors.Unauthorized, "Missing or wrong credentials."),
    404: (errors.NotFound, "No such sandbox, or one that belongs to another app."),
    409: (errors.Conflict, "The sandbox has already finished: there is nothing left to cancel."),
    413: (errors.PayloadTooLarge, "The request body is larger than the platform takes."),
    415: (errors.UnsupportedMediaType, "The Content-Type is not one this call takes."),
    429: (
        errors.QuotaExceeded,
        "The app is over a quota (`concurrency`, `rate` or `daily_seconds`); the message names it, its limit "
        "and when it frees, and `Retry-After` gives the seconds to wait. Nothing was stored or queued.",
    ),
    503: (errors.Unavailable, "No server can take work, or a backend is down; try again shortly."),
}

_LIMIT_DOCS = {
    "timeout": "Wall-clock seconds before the program is killed (`timed_out`).",
    "memory_mb": "Memory in MiB (swap equal to it); over it the program is killed (`oom_killed`).",
    "cpus": "CPU quota, in CPUs.",
    "pids": "Most processes and threads at once.",
    "disk_mb": "Size of the working folder (a tmpfs), in MiB.",
    "output_kb": "Output kept per stream, in KiB; beyond it the output is cut (`output_truncated`).",
}

_CMD_DOC = (
    "Shell command lines, run in order (joined with `&&`) under `/bin/sh -c` in the folder holding "
    'the files. A JSON list of strings (`["python test.py"]`) or one command line.'
)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema["type"]
    return {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}


def _limit_schema(settings: Settings, name: str, also_string: bool) -> dict[str, Any]:
    limit = settings.limit(name)
    kind = "integer" if limit.integer else "number"

    def num(value: float) -> float:
        return int(value) if limit.integer or value == int(value) else value

    schema: dict[str, Any] = {
        "type": [kind, "string"] if also_string else kind,
        "minimum": num(limit.minimum),
        "maximum": num(limit.ceiling),
        "default": num(limit.default),
        "description": (
            f"{_LIMIT_DOCS.get(name, name)} Default {limit.default:g}, at least {limit.minimum:g}, "
            f"at most {limit.ceiling:g} (or the app's own, lower ceiling)."
        ),
    }
    if also_string:
        schema["description"] += " A string holding the number is taken too."
    return schema


def _fields(settings: Settings, json_body: bool) -> dict[str, dict[str, Any]]:
    """The request's fields; in a form every value is text, in JSON some take richer types."""
    fields: dict[str, dict[str, Any]] = {
        "image": {
            "type": "string",
            "minLength": 1,
            "examples": ["base"],
            "description": "An image name from `GET /api/images`.",
        },
        "cmd": (
            {
                "type": ["array", "string"],
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "minLength": 1,
                "description": _CMD_DOC,
            }
            if json_body
            else {"type": "string", "minLength": 1, "description": _CMD_DOC}
        ),
        "stdin": {
            "type": ["string", "null"] if json_body else "string",
            "description": f"Text given to the program on its standard input (at most {settings.max_stdin_bytes} "
            "bytes of UTF-8).",
        },
        "env": {
            "type": ["object", "string", "null"] if json_body else "string",
            "description": f"Environment variables, a JSON object of strings (at most {MAX_ENV}); names match "
            f"`{ENV_NAME.pattern}`.",
            **({"additionalProperties": {"type": "string"}, "maxProperties": MAX_ENV} if json_body else {}),
        },
        "network": {
            "type": ["boolean", "string"] if json_body else "string",
            "description": "Give the sandbox network access (only an app and a server allowed to). In a form: "
            "`true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).",
            "default": False if json_body else "false",
        },
    }
    for name in LIMIT_FIELDS:
        fields[name] = _limit_schema(settings, name, also_string=json_body)
    missing = set(TEXT_FIELDS) ^ set(fields)
    if missing:  # a field added to validation and not described here (or the reverse)
        raise AssertionError(f"openapi: request fields out of step with validation.TEXT_FIELDS: {sorted(missing)}")
    return {name: fields[name] for name in TEXT_FIELDS}


def _request_body(settings: Settings) -> dict[str, Any]:
    form = _fields(settings, json_body=False)
    files_doc = (
        "Any part with a filename is an uploaded file, whatever its field name; the filename may hold "
        f"sub-folders (`lib/util.py`), relative, without `..`, at most {MAX_NAME_BYTES} bytes. "
        f"At most {settings.max_files} files."
    )
    multipart = {
        "type": "object",
        "required": ["image", "cmd"],
        "properties": {
            **form,
            "file": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "maxItems": settings.max_files,
                "description": files_doc,
            },
        },
        "additionalProperties": False,
    }
    urlencoded = {
        "type": "object",
        "required": ["image", "cmd"],
        "properties": form,
        "additionalProperties": False,
    }
    json_file = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "Relative path, may hold sub-folders."},
            "content": {"type": "string", "default": ""},
            "encoding": {"type": "string", "enum": ["utf-8", "base64"], "default": "utf-8"},
            "executable": {"type": "boolean", "default": False},
        },
        "additionalProperties": False,
    }
    json_body = {
        "type": "object",
        "required": ["image", "cmd"],
        "properties": {
            **_fields(settings, json_body=True),
            "files": {"type": "array", "items": json_file, "maxItems": settings.max_files},
        },
        "additionalProperties": False,
    }
    return {
        "required": True,
        "description": f"The files, the command and its limits; at most {settings.max_upload_bytes} bytes.",
        "content": {
            "multipart/form-data": {
                "schema": multipart,
                "encoding": {"file": {"contentType": "application/octet-stream"}},
            },
            "application/json": {"schema": json_body},
            "application/x-www-form-urlencoded": {"schema": urlencoded},
        },
    }


def _sandbox_schema(settings: Settings) -> dict[str, Any]:
    time_ = {"type": "string", "format": "date-time"}
    limits = {
        name: {"type": "integer" if settings.limit(name).integer else "number", "description": _LIMIT_DOCS[name]}
        for name in LIMIT_FIELDS
    }
    properties: dict[str, Any] = {
        "id": {"type": "string", "pattern": "^[0-9a-f]+$"},
        "status": {
            "type": "string",
            "enum": list(SANDBOX_STATES),
            "description": "queued → running → terminated (the program ended), or error (the platform "
            "failed; see `error`), or cancelled.",
        },
        "image": {"type": "string"},
        "cmd": {"type": "string", "description": 'The command lines as a JSON-encoded list: `["python test.py"]`.'},
        "return_code": _nullable({"type": "integer", "description": "The program's exit status, once terminated."}),
        "logs": _nullable({"type": "string", "description": "stdout and stderr as they interleaved."}),
        "stdout": _nullable({"type": "string"}),
        "stderr": _nullable({"type": "string"}),
        "timeout": _nullable({"type": "number", "description": "The run's timeout in seconds."}),
        "limits": {"type": "object", "properties": limits, "description": "The limits this run got."},
        "timed_out": {"type": "boolean"},
        "oom_killed": {"type": "boolean"},
        "output_truncated": {"type": "boolean"},
        "error": _nullable({"type": "string", "description": "Why the platform failed (status `error`)."}),
        "files": {"type": "integer", "minimum": 0, "description": "How many files were uploaded."},
        "created_at": time_,
        "started_at": _nullable(time_),
        "finished_at": _nullable(time_),
        "duration_ms": _nullable({"type": "integer"}),
        "server": _nullable({"type": "string", "description": "The Docker server it was sent to."}),
    }
    return {"type": "object", "required": list(properties), "properties": properties}


def _error_response(status: int) -> dict[str, Any]:
    cls, description = _ERRORS[status]
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {"properties": {"Code": {"examples": [cls.code]}}},
                    ]
                }
            }
        },
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "schema": {"type": "integer", "minimum": 1},
                "required": True,
                "description": "Seconds until the quota frees (for `concurrency`, a guess: when a sandbox ends).",
            }
        }
    return response


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _sandbox_id_parameter() -> dict[str, Any]:
    return {
        "name": "sandbox_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The sandbox's id, as `POST /api/sandboxes` returned it.",
    }


def _usage_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {
        "type": "object",
        "required": ["running", "queued", "today", "limits"],
        "properties": {
            "running": {**count, "description": "Sandboxes running now."},
            "queued": {**count, "description": "Sandboxes waiting to run."},
            "today": {
                "type": "object",
                "required": ["sandboxes", "run_seconds"],
                "properties": {"sandboxes": count, "run_seconds": count},
                "description": "Created today (UTC), and the seconds they ran.",
            },
            "limits": {
                "type": "object",
                "required": ["concurrency", "rate", "daily_seconds"],
                "properties": {
                    "concurrency": {**count, "description": "Sandboxes queued or running at once."},
                    "rate": {**count, "description": "Sandboxes created per minute."},
                    "daily_seconds": {
                        **count,
                        "description": "Run seconds per UTC day; each sandbox reserves its timeout until it ends.",
                    },
                },
            },
        },
    }


def _operations(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    sandbox = {"$ref": "#/components/schemas/Sandbox"}
    return {
        ("/api/openapi.json", "GET"): {
            "operationId": "getOpenApi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": _json({"type": "object"})}},
        },
        ("/api/images", "GET"): {
            "operationId": "listImages",
            "summary": "The enabled image names",
            "responses": {
                "200": {
                    "description": "Image names, sorted.",
                    "content": _json({"type": "array", "items": {"type": "string"}, "examples": [["base"]]}),
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
        ("/api/sandboxes", "GET"): {
            "operationId": "listSandboxes",
            "summary": "The app's sandboxes, newest first, a page at a time",
            "parameters": _query_parameters("/api/sandboxes", "GET"),
            "responses": {
                "200": {
                    "description": "One page; `next` is the cursor of the following page, or null after the last.",
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
    }


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of the API under ``settings`` (its limits and sizes)."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in _operations(settings).items():
        statuses = OPERATIONS[(path, method)]
        responses = dict(operation["responses"])
        for status in statuses:
            if status >= 400:
                responses[str(status)] = _error_response(status)
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
                "Error": {
                    "type": "object",
                    "required": ["Code", "Message"],
                    "properties": {"Code": {"type": "string"}, "Message": {"type": "string"}},
                },
            },
        },
    }
