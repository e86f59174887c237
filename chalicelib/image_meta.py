"""What an image says of itself: its language, version, run template and the file extensions it claims.

Checked in one place for every way an image gets described: a recipe's
``image.json`` (``infra/images/build.py``), ``manage.py image-create`` and
``image-build``.  Standard library only: ``infra/images/build.py`` imports this
module on a Docker host before any virtualenv exists.

A run template is one shell command line that runs one file: ``{file}`` is the
file's path as uploaded (shell-quoted when filled in) and ``{stem}`` its name
without folder or extension (``javac -d . {file} && java {stem}``).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from chalicelib.errors import InvalidInput

TEXT_FIELDS = ("description", "language", "version", "run")
PLACEHOLDERS = ("file", "stem")
EXTENSION = re.compile(r"^\.[a-z0-9_+-]{1,16}$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
MAX_TEXT = 500


def _one_line(field: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > MAX_TEXT:
        raise InvalidInput(field, f"must be one line of text of at most {MAX_TEXT} characters")
    return value.strip()


def check_template(field: str, template: Any) -> str:
    """A run template: one command line naming the file as ``{file}`` or ``{stem}``, and nothing else in braces."""
    template = _one_line(field, template)
    if not template:
        raise InvalidInput(field, "must be a command line such as 'python {file}'")
    names = _PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise InvalidInput(field, f"unknown placeholder {{{unknown[0]}}}; a template may use {{file}} and {{stem}}")
    if not names:
        raise InvalidInput(field, "must name the program's file as {file}, e.g. 'python {file}'")
    return template


def parse_extensions(field: str, value: Any) -> list[str]:
    """``[".cpp", ".cc"]`` from a list or from text such as ``".cpp,.cc"`` or ``"cpp cc"``; lower case, dot first."""
    if value is None:
        return []
    items = re.split(r"[\s,]+", value) if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise InvalidInput(field, "must be a list of file extensions such as .cpp,.cc")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(field, "must be a list of file extensions such as .cpp,.cc")
        if not item.strip():
            continue
        ext = item.strip().lower()
        ext = ext if ext.startswith(".") else "." + ext
        if not EXTENSION.match(ext):
            raise InvalidInput(field, f"{item!r} is not a file extension such as .cpp (letters, digits, _+-)")
        if ext not in out:
            out.append(ext)
    return out


def check(data: dict[str, Any]) -> dict[str, Any]:
    """The description fields of ``data``, checked and normalised; absent ones are empty."""
    out: dict[str, Any] = {name: _one_line(name, data.get(name)) for name in TEXT_FIELDS}
    if out["run"]:
        out["run"] = check_template("run", out["run"])
    out["extensions"] = parse_extensions("extensions", data.get("extensions"))
    by_ext = data.get("run_by_extension") or {}
    if not isinstance(by_ext, dict):
        raise InvalidInput("run_by_extension", "must map a file extension to a run template")
    out["run_by_extension"] = {}
    for ext, template in by_ext.items():
        (key,) = parse_extensions("run_by_extension", [ext]) or [""]
        if key not in out["extensions"]:
            raise InvalidInput("run_by_extension", f"{ext!r} is not one of the image's extensions")
        out["run_by_extension"][key] = check_template(f"run_by_extension {key}", template)
    if out["extensions"] and not out["run"]:
        raise InvalidInput("run", "an image that claims file extensions needs a run template")
    return out


def fill(template: str, file: str) -> str:
    """The command line that runs ``file`` (a path as uploaded, with ``/``) with ``template``."""
    name = file.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return _PLACEHOLDER.sub(lambda m: shlex.quote(file if m.group(1) == "file" else stem), template)


def template_for(meta: dict[str, Any], file: str) -> str:
    """The image's run template for ``file``: the one for its extension, else the image's own."""
    name = file.rsplit("/", 1)[-1].lower()
    ext = "." + name.rsplit(".", 1)[1] if "." in name.lstrip(".") else ""
    return str((meta.get("run_by_extension") or {}).get(ext) or meta.get("run") or "")
