"""Image recipes: ``infra/images/<name>/image.json`` read and checked, ordered, hashed, and described as labels.

Standard library only (``build.py`` runs on a fresh host before any virtualenv exists).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # run as a script, on a host without the virtualenv
    sys.path.insert(0, str(HERE.parents[1]))

from chalicelib import image_meta  # noqa: E402 - standard library only
from chalicelib.errors import InvalidInput  # noqa: E402

REPO = "opendevelop"
BASE = "base"
LABEL = "org.opendevelop"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TEXT_FIELDS = image_meta.TEXT_FIELDS
RECIPE_KEYS = {
    "from",
    "packages",
    "env",
    "version_command",
    "version",
    "description",
    "language",
    "run",
    "run_by_extension",
    "extensions",
    "smoke",
}


class RecipeError(ValueError):
    """A recipe that cannot be built as written; the message names the file and the field."""


# The builder's own files: the recipe hash covers them, so a change to how images are built rebuilds them.
BUILDER_FILES = ("build.py", "recipes.py", "docker_cli.py", "chroot.py", "layer.py")


# Recipes


def recipes_dir() -> Path:
    return Path(os.environ.get("OPENDEVELOP_IMAGE_RECIPES") or HERE)


def check_metadata(where: str, data: dict[str, Any]) -> dict[str, Any]:
    """The fields that describe the image, checked as ``image-create`` checks them."""
    try:
        return image_meta.check(data)
    except InvalidInput as e:
        raise RecipeError(f"{where}: {e.message}") from None


def load(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The recipe ``name`` (from ``directory``, else the recipes folder), checked."""
    if not NAME.match(name):
        raise RecipeError(f"{name!r}: an image name is 1-63 lower-case letters, digits, '.', '_' or '-'")
    folder = directory or recipes_dir() / name
    path = folder / "image.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"no recipe {name!r} (no {path})") from None
    except ValueError as e:
        raise RecipeError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: must hold a JSON object")
    unknown = sorted(set(data) - RECIPE_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown field {unknown[0]!r}; known: {', '.join(sorted(RECIPE_KEYS))}")
    data.update(check_metadata(str(path), data))
    if name == BASE:
        if data.get("from") or data.get("packages"):
            raise RecipeError(f"{path}: base is made by base/build.sh; its image.json only describes it")
    else:
        parent = data.get("from")
        if not isinstance(parent, str) or not NAME.match(parent) or parent == name:
            raise RecipeError(f"{path}: 'from' must name the image this one is built on, e.g. 'base'")
        packages = data.get("packages")
        if not isinstance(packages, list) or not packages or not all(isinstance(p, str) for p in packages):
            raise RecipeError(f"{path}: 'packages' must be a non-empty list of Debian package names")
        bad = [p for p in packages if not PACKAGE.match(p)]
        if bad:
            raise RecipeError(f"{path}: {bad[0]!r} is not a Debian package name")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, str) and not any(ord(c) < 32 for c in v)
        for k, v in env.items()
    ):
        raise RecipeError(f"{path}: 'env' must map variable names to one-line strings")
    if "PATH" in env or "HOME" in env:
        raise RecipeError(f"{path}: 'env' may not set PATH or HOME (the platform sets them)")
    smoke = data.get("smoke", [])
    if not isinstance(smoke, list):
        raise RecipeError(f"{path}: 'smoke' must be a list of {{'file': ..., 'stdout': ...}}")
    for program in smoke:
        if not isinstance(program, dict) or not isinstance(program.get("file"), str) or "stdout" not in program:
            raise RecipeError(f"{path}: 'smoke' must be a list of {{'file': ..., 'stdout': ...}}")
        if not (folder / program["file"]).is_file():
            raise RecipeError(f"{path}: the smoke program {program['file']!r} is not in {folder}")
    return data


def catalogue(directory: Path | None = None) -> list[str]:
    """Every recipe's name, each after the one it is built from (``base`` first)."""
    root = directory or recipes_dir()
    names = sorted(p.parent.name for p in root.glob("*/image.json"))
    parents = {n: load(n, root / n).get("from") for n in names}
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise RecipeError(f"recipes build on each other in a loop: {' -> '.join((*path, name))}")
        parent = parents.get(name)
        if parent:
            if parent not in parents:
                raise RecipeError(f"recipe {name!r} is built from {parent!r}, which has no recipe")
            visit(parent, (*path, name))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


def recipe_hash(name: str, parent_recipe: str, directory: Path | None = None) -> str:
    """12 hex digits over the builder's files, every file of the recipe's folder and the parent's own hash."""
    folder = directory or recipes_dir() / name
    digest = hashlib.sha256()
    for builder in BUILDER_FILES:
        digest.update((HERE / builder).read_bytes())
    digest.update(f"\0{name}\0{parent_recipe}\0".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def labels_for(name: str, recipe: dict[str, Any], tag: str, parent_tag: str, version: str) -> dict[str, str]:
    return {
        f"{LABEL}.image": name,
        f"{LABEL}.recipe": tag,
        f"{LABEL}.from": parent_tag,
        f"{LABEL}.version": version,
        f"{LABEL}.description": recipe.get("description", ""),
        f"{LABEL}.language": recipe.get("language", ""),
        f"{LABEL}.run": recipe.get("run", ""),
        f"{LABEL}.extensions": json.dumps(recipe.get("extensions", [])),
        f"{LABEL}.run_by_extension": json.dumps(recipe.get("run_by_extension", {}), sort_keys=True),
    }
