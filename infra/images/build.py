#!/usr/bin/env python3
"""Build the image catalogue without any registry: each image is ``base`` plus Debian packages.

    sudo python3 infra/images/build.py --all        # base, then every recipe; prints one ref per line
    sudo python3 infra/images/build.py go java      # these (and what they are built from)
    sudo python3 infra/images/build.py --check      # validate every recipe, build nothing

A recipe is a folder ``infra/images/<name>/`` holding ``image.json``::

    {"from": "base", "packages": ["golang-go"], "env": {"CGO_ENABLED": "0"},
     "version_command": "go env GOVERSION | sed s/^go//",
     "description": "...", "language": "Go", "run": "go run {file}", "extensions": [".go"],
     "smoke": {"file": "main.go", "stdout": "..."}}

and the smoke program it names (run by the tests and by ``manage.py image-build``
under the platform's own container configuration).  ``base`` is the exception:
``base/build.sh`` makes it with ``debootstrap``; its ``image.json`` only
describes it.

A layer is built the way ``base`` is, with the host's network and never a
registry: the parent image's root filesystem is exported into a folder,
``apt-get install --no-install-recommends`` runs in a ``chroot`` of it (with
``/proc`` mounted and a handful of device nodes made, nothing of the host's
bind-mounted but the apt cache), docs and caches are stripped, and the folder is
``docker import``-ed with the recipe's ``ENV``, ``WORKDIR /sandbox`` and
``CMD``, and labels that describe it (``org.opendevelop.version`` is measured
in the chroot by ``version_command``; ``manage.py`` and ``make dev`` register
images from these labels).  Tags: ``opendevelop/<name>:<recipe hash>`` and
``:latest``, where the hash covers the builder's files (``recipes.BUILDER_FILES``), the recipe's folder and the
parent's own recipe hash, so editing a recipe (or ``base``) rebuilds what
depends on it, and running again unchanged is a few ``docker inspect`` calls.

Downloaded packages and apt's lists are kept in ``/var/cache/opendevelop/apt``
(``OPENDEVELOP_APT_CACHE``; empty: none), so a rebuild downloads only what
changed.  ``OPENDEVELOP_FORCE_REBUILD=1`` rebuilds even when the tag exists.
``OPENDEVELOP_IMAGE_RECIPES`` points at another folder of recipes (tests).

Needs root (chroot, mount), Python 3.11's standard library only (it runs on a
fresh host before any virtualenv exists) and a running Docker engine.  Progress
goes to stderr; stdout gets one image reference per built image.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # run as a script, on a host without the virtualenv
    sys.path.insert(0, str(HERE.parents[1]))

# The steps, each in its own module (see docs/architecture.md); the names callers use, from here.
from infra.images.chroot import Interrupted, locked  # noqa: E402
from infra.images.docker_cli import BuildError, docker, inspect, log  # noqa: E402
from infra.images.layer import build_layer  # noqa: E402
from infra.images.recipes import (  # noqa: E402
    BASE,
    LABEL,
    REPO,
    TEXT_FIELDS,
    RecipeError,
    catalogue,
    check_metadata,
    labels_for,
    load,
    recipe_hash,
    recipes_dir,
)

__all__ = [
    "BASE",
    "LABEL",
    "REPO",
    "TEXT_FIELDS",
    "BuildError",
    "RecipeError",
    "build",
    "catalogue",
    "check_metadata",
    "describe_image",
    "ensure_base",
    "inspect",
    "labels_for",
    "load",
    "main",
    "prune",
    "recipe_hash",
    "recipes_dir",
]


def describe_image(ref: str) -> dict[str, Any] | None:
    """What an image built here says of itself (its labels), or None when it is absent or not ours."""
    info = inspect(ref)
    if info is None:
        return None
    labels = info["labels"]
    out: dict[str, Any] = {key: labels.get(f"{LABEL}.{key}", "") for key in TEXT_FIELDS}
    for key, empty in (("extensions", "[]"), ("run_by_extension", "{}")):
        try:
            out[key] = json.loads(labels.get(f"{LABEL}.{key}") or empty)
        except ValueError:
            out[key] = json.loads(empty)
    out["recipe"] = labels.get(f"{LABEL}.recipe", "")
    out["size"] = info["size"]
    return out


@functools.cache
def ensure_base() -> str:
    """``base`` as ``base/build.sh`` makes it (a no-op when built); its reference."""
    out = subprocess.run(["bash", str(HERE / BASE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise BuildError("the base image build failed (see above)")
    return out.stdout.strip().splitlines()[-1]


def build(name: str, directory: Path | None = None, force: bool = False) -> str:
    """Build recipe ``name`` unless its tag exists (building what it is built from first); its reference."""
    if name == BASE:
        return ensure_base()
    recipe = load(name, directory)
    parent = recipe["from"]
    build(parent)  # a no-op when built
    parent_ref = f"{REPO}/{parent}:latest"
    parent_info = inspect(parent_ref)
    if parent_info is None:
        raise BuildError(f"{parent_ref} is missing after building it")
    parent_tag = parent_info["labels"].get(f"{LABEL}.recipe", "") or parent_info["id"]
    tag = recipe_hash(name, parent_tag, directory)
    ref = f"{REPO}/{name}:{tag}"
    force = force or os.environ.get("OPENDEVELOP_FORCE_REBUILD") == "1"
    info = None if force else inspect(ref)
    if info is None:
        with locked(name):
            info = None if force else inspect(ref)
            if info is None:
                build_layer(name, recipe, ref, tag, parent_ref, parent_tag, directory)
                info = inspect(ref)
                if info is None:
                    raise BuildError(f"{ref} is missing after importing it")
    if f"{REPO}/{name}:latest" not in info["tags"]:
        docker("tag", ref, f"{REPO}/{name}:latest")
    return ref


def prune() -> list[str]:
    """Remove the tags of earlier builds of each recipe (``opendevelop/<name>:<other hash>``); the removed tags.

    Not done after every build: two checkouts with different recipes on one engine would then
    rebuild each other's images on every run.
    """
    keep = set()
    for name in catalogue():
        info = inspect(f"{REPO}/{name}:latest")
        if info is not None:
            keep.update(info["tags"])
    out = docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"{REPO}/*")
    removed = []
    for tag in out.splitlines():
        name, _, version = tag.partition(":")
        if tag in keep or not re.fullmatch(r"[0-9a-f]{12}", version) or name.split("/", 1)[1] not in catalogue():
            continue
        if subprocess.run(["docker", "rmi", tag], capture_output=True).returncode == 0:
            removed.append(tag)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/images/build.py", description="Build the image catalogue.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="recipes to build (with what they are built from)")
    parser.add_argument("--all", action="store_true", help="base and every recipe")
    parser.add_argument("--check", action="store_true", help="validate the recipes; build nothing")
    parser.add_argument("--force", action="store_true", help="rebuild the named images even if built")
    parser.add_argument("--prune", action="store_true", help="remove earlier builds' tags of every recipe")
    args = parser.parse_args(argv)
    try:
        names = catalogue()
        if args.prune:
            for tag in prune():
                print(f"removed {tag}")
            return 0
        if args.check:
            for name in names:
                load(name)
            print("\n".join(names))
            return 0
        wanted = names if args.all else args.names
        if not wanted:
            parser.error("name the recipes to build, or --all")
        failed = []
        for name in wanted:
            try:
                print(build(name, force=args.force), flush=True)
            except BuildError as e:
                log(f"{name}: {e}")
                failed.append(name)
        if failed:
            log(f"not built: {', '.join(failed)}")
            return 1
        return 0
    except RecipeError as e:
        log(f"recipe: {e}")
        return 2
    except Interrupted as e:
        log(f"interrupted ({e})")
        return 130
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
