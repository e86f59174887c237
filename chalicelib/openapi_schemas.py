"""The OpenAPI document's schemas: request fields, the sandbox, the image, errors (see ``openapi``)."""

from __future__ import annotations

from typing import Any

from chalicelib import errors
from chalicelib.files import MAX_NAME_BYTES
from chalicelib.models import SANDBOX_STATES
from chalicelib.openapi_webhooks import callback_schema, callback_url_field
from chalicelib.settings import Settings
from chalicelib.validation import ENV_NAME, LIMIT_FIELDS, MAX_ENV, TEXT_FIELDS

_ERRORS: dict[int, tuple[type[errors.OpenDevelopError], str]] = {
    400: (errors.InvalidInput, "Bad input; the message names the field and says why. Nothing was stored or queued."),
    401: (errors.Unauthorized, "Missing or wrong credentials."),
    404: (errors.NotFound, "No such sandbox, or one that belongs to another app."),
    409: (errors.Conflict, "The sandbox has already finished: there is nothing left to cancel."),
    410: (errors.Gone, "The sandbox is there, but its stored output has expired or was deleted (`output_gone`)."),
    416: (errors.RangeNotSatisfiable, "The `Range` asked lies beyond the end of the stream."),
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
    "artifacts_kb": "Content kept of the files the program leaves in `out/`, in KiB; files beyond it are "
    "dropped (`artifacts_truncated`).",
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
        "callback_url": callback_url_field(),
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
        "logs": _nullable(
            {"type": "string", "description": "stdout and stderr as they interleaved: the first 64 KiB, as text."}
        ),
        "stdout": _nullable(
            {"type": "string", "description": "The first 64 KiB as text (UTF-8, invalid bytes replaced)."}
        ),
        "stderr": _nullable(
            {"type": "string", "description": "The first 64 KiB as text (UTF-8, invalid bytes replaced)."}
        ),
        "timeout": _nullable({"type": "number", "description": "The run's timeout in seconds."}),
        "limits": {"type": "object", "properties": limits, "description": "The limits this run got."},
        "timed_out": {"type": "boolean"},
        "oom_killed": {"type": "boolean"},
        "output_truncated": {
            "type": "boolean",
            "description": "A stream reached `output_kb` and was cut there.",
        },
        "stdout_bytes": {"type": "integer", "minimum": 0, "description": "The stored stdout's full size."},
        "stderr_bytes": {"type": "integer", "minimum": 0, "description": "The stored stderr's full size."},
        "logs_bytes": {"type": "integer", "minimum": 0, "description": "The interleaved output's full size."},
        "inline_truncated": {
            "type": "boolean",
            "description": "Some of `stdout`, `stderr`, `logs` is shorter than its stream (a list page shows "
            "4 KiB of each, one sandbox 64 KiB): the whole is at `/stdout` and `/stderr`.",
        },
        "output_gone": {
            "type": "boolean",
            "description": "The stored output has expired or was deleted; the downloads answer 410.",
        },
        "artifacts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "size"],
                "properties": {"name": {"type": "string"}, "size": {"type": "integer", "minimum": 0}},
            },
            "description": "The files the program left in `out/` (regular files only, names relative to `out/`): "
            "the first 100 (10 in a list page) of `artifacts_count`. Each is at `/artifacts/{name}`, all of "
            "them at `/artifacts` as one tar.",
        },
        "artifacts_count": {"type": "integer", "minimum": 0, "description": "How many files were kept."},
        "artifacts_bytes": {"type": "integer", "minimum": 0, "description": "Their total size."},
        "artifacts_truncated": {
            "type": "boolean",
            "description": "Files were dropped: `artifacts_kb` or the 10,000 files were reached (or the tar was "
            "cut at the deadline).",
        },
        "artifacts_skipped": {
            "type": "integer",
            "minimum": 0,
            "description": "Entries of `out/` not kept because they are not regular files (symlinks, hard "
            "links, devices, fifos) or their names are not allowed (as for uploads; at most 8 parts, like "
            "`a/b/c/d/e/f/g/h.txt`).",
        },
        "error": _nullable({"type": "string", "description": "Why the platform failed (status `error`)."}),
        "files": {"type": "integer", "minimum": 0, "description": "How many files were uploaded."},
        "created_at": time_,
        "started_at": _nullable(time_),
        "finished_at": _nullable(time_),
        "duration_ms": _nullable({"type": "integer"}),
        "server": _nullable({"type": "string", "description": "The Docker server it was sent to."}),
        "callback": callback_schema(),
    }
    return {"type": "object", "required": list(properties), "properties": properties}


def _image_schema() -> dict[str, Any]:
    text = {"type": "string"}
    properties: dict[str, Any] = {
        "name": {**text, "examples": ["go"]},
        "description": text,
        "language": {**text, "examples": ["Go"], "description": "The language it runs; empty if it does not say."},
        "version": {**text, "examples": ["1.19.8"], "description": "The language's version in the image."},
        "run": {
            **text,
            "examples": ["go run {file}", "g++ -O2 -o main {file} && ./main"],
            "description": "A command line that runs one file: `{file}` is the file's path as uploaded, "
            "`{stem}` its name without folder or extension. Empty if the image does not say.",
        },
        "extensions": {
            "type": "array",
            "items": {"type": "string", "pattern": "^\\.[a-z0-9_+-]+$"},
            "examples": [[".cpp", ".cc"]],
            "description": "The file extensions it claims: a client may pick this image for such a file.",
        },
        "run_by_extension": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "examples": [{".c": "gcc -O2 -o main {file} -lm && ./main"}],
            "description": "Run templates for some of its extensions, where `run` does not fit.",
        },
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
