"""Turning a POST body into a ``SandboxRequest``, or a 4xx naming what is wrong.

Both bodies the API takes are handled here:

* ``multipart/form-data``, as the original OpenDevelop: every part with a
  filename is an uploaded file (the filename may hold sub-folders); the other
  parts are fields (``image``, ``cmd``, ``timeout``, ...), all strings.
* ``application/json``: ``{"image", "cmd", "timeout", "files": [{"name",
  "content", "encoding": "utf-8"|"base64"}], ...}``.

Unknown fields are refused rather than ignored, so a typo (``timout``) is a
clear 400 instead of a silently default run.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import multipart

from chalicelib import webhook_targets
from chalicelib.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from chalicelib.files import UploadedFile, check_tree, clean_name
from chalicelib.settings import Settings

LIMIT_FIELDS = ("timeout", "memory_mb", "cpus", "pids", "disk_mb", "output_kb", "artifacts_kb")
TEXT_FIELDS = ("image", "cmd", "stdin", "env", "network", "callback_url", *LIMIT_FIELDS)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENV = 64
MAX_ENV_BYTES = 32 * 1024


@dataclass
class SandboxRequest:
    image: str
    cmd: list[str]
    limits: dict[str, float] = field(default_factory=dict)  # only what the client asked for
    files: list[UploadedFile] = field(default_factory=list)
    stdin: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    callback_url: str | None = None


def check_text(field: str, value: str) -> str:
    """``value``, or ``InvalidInput`` when it holds a lone surrogate (text that has no UTF-8 form)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field, "is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def load_json(field: str, text: str | bytes) -> Any:
    """``json.loads``, with malformed or too deeply nested JSON a 400 naming ``field``.

    The decoder recurses once per nesting level: ``[[[...]]]`` thousands deep
    raises ``RecursionError``, which is the sender's fault, not ours.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput(field, "JSON nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError is one
        raise InvalidInput(field, f"malformed JSON: {e}") from None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_request(content_type: str | None, body: bytes, settings: Settings) -> SandboxRequest:
    if len(body) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"body: {len(body)} bytes is more than the limit of {settings.max_upload_bytes}")
    kind = media_type(content_type)
    if kind not in ("multipart/form-data", "application/json", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(
            f"Content-Type: {kind or 'none'} is not supported; "
            "send multipart/form-data, application/json or application/x-www-form-urlencoded"
        )
    if not body.strip():
        raise InvalidInput("body", "empty; expected the sandbox's image, cmd and files")
    if kind == "multipart/form-data":
        fields, files = _parse_multipart(content_type or "", body, settings.max_files + len(TEXT_FIELDS))
    elif kind == "application/x-www-form-urlencoded":
        fields, files = _parse_urlencoded(body), []
    else:
        fields, files = _parse_json(body)
    return _build(fields, files, settings)


def _parse_multipart(content_type: str, body: bytes, max_parts: int) -> tuple[dict[str, Any], list[UploadedFile]]:
    _, options = multipart.parse_options_header(content_type)
    boundary = options.get("boundary")
    if not boundary:
        raise InvalidInput("Content-Type", "multipart/form-data without a boundary")
    fields: dict[str, Any] = {}
    files: list[UploadedFile] = []
    try:
        parser = multipart.MultipartParser(
            io.BytesIO(body),
            boundary,
            content_length=len(body),
            # Every part costs time to parse: no more than the files and fields a request may hold.
            part_limit=max_parts,
            memory_limit=len(body) + 1,
            spool_limit=len(body) + 1,
            disk_limit=0,
            header_limit=16,
        )
        for part in parser:
            if part.filename is not None:
                files.append(UploadedFile(clean_name(part.filename or None), part.raw))
                continue
            name = part.name
            if not name:
                raise InvalidInput("body", "a form part has neither a field name nor a file name")
            if name in fields:
                raise InvalidInput(name, "given more than once")
            check_text("body", name)
            try:
                fields[name] = part.raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(name, "is not valid UTF-8") from None
            check_text(name, fields[name])
    except multipart.MultipartError as e:
        raise InvalidInput("body", f"malformed multipart/form-data: {e}") from None
    return fields, files


def _parse_urlencoded(body: bytes) -> dict[str, Any]:
    from urllib.parse import parse_qsl

    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("body", "malformed application/x-www-form-urlencoded data") from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        check_text("body", name)
        check_text(name, value)
        if name in fields:
            raise InvalidInput(name, "given more than once")
        fields[name] = value
    return fields


def _parse_json(body: bytes) -> tuple[dict[str, Any], list[UploadedFile]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("body", "is not valid UTF-8") from None
    data = load_json("body", text)
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    return _json_fields(data)


def from_json(data: Any, settings: Settings, where: str = "") -> SandboxRequest:
    """One create's JSON body, already decoded (a batch's item): a ``SandboxRequest`` or ``InvalidInput``."""
    if not isinstance(data, dict):
        raise InvalidInput(where or "body", "must be a JSON object")
    fields, files = _json_fields(dict(data))
    return _build(fields, files, settings)


def _json_fields(data: dict[str, Any]) -> tuple[dict[str, Any], list[UploadedFile]]:
    for key in data:
        check_text("body", key)
    raw_files = data.pop("files", [])
    if not isinstance(raw_files, list):
        raise InvalidInput("files", "must be a list of {name, content, encoding}")
    files = [_json_file(i, f) for i, f in enumerate(raw_files)]
    return data, files


def _json_file(i: int, f: Any) -> UploadedFile:
    where = f"files[{i}]"
    if not isinstance(f, dict):
        raise InvalidInput(where, "must be an object {name, content, encoding}")
    unknown = set(f) - {"name", "content", "encoding", "executable"}
    if unknown:
        raise InvalidInput(where, f"unknown key(s) {', '.join(sorted(unknown))}")
    name = f.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{where}.name", "is required and must be a string")
    content = f.get("content", "")
    if not isinstance(content, str):
        raise InvalidInput(f"{where}.content", "must be a string")
    encoding = f.get("encoding", "utf-8")
    if encoding in ("utf-8", "utf8", "text"):
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{where}.content", "is not valid UTF-8 text (it holds a lone surrogate)") from None
    elif encoding == "base64":
        if not content.isascii():
            raise InvalidInput(f"{where}.content", "is not valid base64")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{where}.content", "is not valid base64") from None
    else:
        raise InvalidInput(f"{where}.encoding", f"{encoding!r} is not 'utf-8' or 'base64'")
    executable = f.get("executable", False)
    if not isinstance(executable, bool):
        raise InvalidInput(f"{where}.executable", "must be true or false")
    return UploadedFile(clean_name(name, f"{where}.name"), data, executable)


def _build(fields: dict[str, Any], files: list[UploadedFile], settings: Settings) -> SandboxRequest:
    unknown = set(fields) - set(TEXT_FIELDS)
    if unknown:
        raise InvalidInput(sorted(unknown)[0], f"unknown field; known fields are {', '.join(TEXT_FIELDS)}, files")
    image = fields.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidInput("image", "is required (see GET /api/images)")
    check_text("image", image)
    if len(image) > 256:
        raise InvalidInput("image", "is longer than 256 characters (see GET /api/images)")
    check_tree(files, settings.max_files)
    return SandboxRequest(
        image=image.strip(),
        cmd=parse_cmd(fields.get("cmd"), settings.max_cmd_bytes),
        limits={name: parse_limit(name, fields[name], settings) for name in LIMIT_FIELDS if name in fields},
        files=files,
        stdin=_parse_stdin(fields.get("stdin"), settings.max_stdin_bytes),
        env=_parse_env(fields.get("env")),
        network=_parse_bool("network", fields.get("network", False)),
        callback_url=_parse_callback(fields.get("callback_url"), settings),
    )


def _parse_callback(raw: Any, settings: Settings) -> str | None:
    """``callback_url``: where the settled sandbox is POSTed (see ``chalicelib.webhook_targets``)."""
    if raw is None or raw == "":
        return None
    return webhook_targets.check(raw, webhook_targets.Policy.from_settings(settings))


def parse_cmd(raw: Any, max_bytes: int) -> list[str]:
    """``cmd``: a JSON list of shell command lines, or one command line."""
    if raw is None:
        raise InvalidInput("cmd", 'is required, e.g. ["python test.py"]')
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise InvalidInput("cmd", "is empty")
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except RecursionError:
                raise InvalidInput("cmd", "JSON nested too deeply") from None
            except ValueError:
                raise InvalidInput("cmd", 'starts with "[" but is not a JSON list of strings') from None
        else:
            raw = [text]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("cmd", 'must be a non-empty JSON list of strings, e.g. ["python test.py"]')
    lines = []
    for i, line in enumerate(raw):
        if not isinstance(line, str):
            raise InvalidInput("cmd", f"item {i} is not a string")
        if not line.strip():
            raise InvalidInput("cmd", f"item {i} is empty")
        if "\x00" in line:
            raise InvalidInput("cmd", f"item {i} contains a NUL character")
        check_text("cmd", line)
        lines.append(line)
    if sum(len(line.encode("utf-8")) for line in lines) > max_bytes:
        raise InvalidInput("cmd", f"is longer than {max_bytes} bytes")
    return lines


def parse_limit(name: str, raw: Any, settings: Settings) -> float:
    limit = settings.limit(name)
    kind = "a whole number" if limit.integer else "a number"
    if isinstance(raw, bool) or raw is None:
        raise InvalidInput(name, f"must be {kind}")
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value: float = int(text) if limit.integer else float(text)
        except ValueError:
            raise InvalidInput(name, f"{raw!r} is not {kind}") from None
    elif isinstance(raw, (int, float)):
        value = raw
    else:
        raise InvalidInput(name, f"must be {kind}")
    if not math.isfinite(value):
        raise InvalidInput(name, f"{raw!r} is not {kind}")
    if limit.integer and value != int(value):
        raise InvalidInput(name, f"{raw!r} is not {kind}")
    if value <= 0:
        raise InvalidInput(name, f"must be more than 0 (got {raw!r})")
    if value < limit.minimum:
        raise InvalidInput(name, f"{value:g} is below the minimum of {limit.minimum:g}")
    return int(value) if limit.integer else float(value)


def resolve_limits(
    requested: Mapping[str, float], app_ceilings: Mapping[str, Any], settings: Settings
) -> dict[str, float]:
    """Defaults filled in; anything above the app's or the global ceiling is a 400."""
    out: dict[str, float] = {}
    for name in LIMIT_FIELDS:
        limit = settings.limit(name)
        ceiling = min(limit.ceiling, float(app_ceilings.get(name, limit.ceiling)))
        value = requested.get(name)
        if value is None:
            value = min(limit.default, ceiling)
        elif value > ceiling:
            raise InvalidInput(name, f"{value:g} is above the ceiling of {ceiling:g}")
        out[name] = int(value) if limit.integer else float(value)
    return out


def _parse_stdin(raw: Any, max_bytes: int) -> bytes:
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise InvalidInput("stdin", "must be a string")
    data = check_text("stdin", raw).encode("utf-8")
    if len(data) > max_bytes:
        raise InvalidInput("stdin", f"is longer than {max_bytes} bytes")
    return data


def _parse_env(raw: Any) -> dict[str, str]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except RecursionError:
            raise InvalidInput("env", "JSON nested too deeply") from None
        except ValueError:
            raise InvalidInput("env", 'must be a JSON object of strings, e.g. {"NAME": "value"}') from None
    if not isinstance(raw, dict):
        raise InvalidInput("env", 'must be an object of strings, e.g. {"NAME": "value"}')
    if len(raw) > MAX_ENV:
        raise InvalidInput("env", f"more than {MAX_ENV} variables")
    total = 0
    for name, value in raw.items():
        if not ENV_NAME.fullmatch(name):
            raise InvalidInput("env", f"{name!r} is not a valid variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInput("env", f"{name}: value must be a string without NUL characters")
        check_text("env", value)
        total += len(name) + len(value.encode("utf-8"))
    if total > MAX_ENV_BYTES:
        raise InvalidInput("env", f"is larger than {MAX_ENV_BYTES} bytes")
    return dict(raw)


def _parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
        return raw.strip().lower() in ("true", "1", "yes", "on")
    raise InvalidInput(name, "must be true or false")
