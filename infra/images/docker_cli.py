"""The image builder's side of Docker: the ``docker`` command, image inspection, and the build's errors and log.

Standard library only (``build.py`` runs on a fresh host before any virtualenv exists).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


class BuildError(RuntimeError):
    """The build failed (a command, the mirror, the engine); the message says which step."""


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def docker(*args: str, stdin: Any = None, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], stdin=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BuildError(f"docker {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def inspect(ref: str) -> dict[str, Any] | None:
    """The image's id, tags and labels, or None when the engine does not have it."""
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{json .}}", ref], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return {
        "id": data["Id"],
        "tags": data.get("RepoTags") or [],
        "labels": (data.get("Config") or {}).get("Labels") or {},
        "size": data.get("Size", 0),
    }


def dockerfile_quote(value: str) -> str:
    """A value for a ``--change 'LABEL k=...'``/``ENV`` line: quoted, with what Dockerfiles expand escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
