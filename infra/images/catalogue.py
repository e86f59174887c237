"""The image catalogue from the operator's side: build a recipe, prove it runs as the platform runs it, register it.

``manage.py image-build`` and ``make dev`` (``infra/local/stack.py``) use
these; the building itself is ``infra/images/build.py`` (standard library only,
so a fresh host runs it before any virtualenv exists).

An image is registered from what the built image says of itself (its
``org.opendevelop.*`` labels: description, language, the version measured at
build time, run template, extensions), falling back to the recipe's
``image.json`` (``base``, made by ``base/build.sh``, has no such labels).  It is
registered as ``opendevelop/<name>:latest``, the tag every host's build
moves, so a rebuilt recipe needs no new registration; dispatchers report the
tags their engine has and the scheduler sends work where the image is.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from chalicelib import admin, image_meta
from chalicelib.errors import InvalidInput, OpenDevelopError
from chalicelib.files import UploadedFile, bundle
from chalicelib.models import Image
from chalicelib.settings import Settings
from infra.images import build

DOCKER_URL = "unix:///var/run/docker.sock"


def ref(name: str) -> str:
    return f"{build.REPO}/{name}:latest"


def recipe_meta(name: str) -> dict[str, Any]:
    """The recipe's description of the image (``image.json``), checked."""
    return build.load(name)


def local_images(docker_url: str = DOCKER_URL) -> dict[str, dict[str, str]]:
    """``opendevelop/*`` tags on the local engine -> their labels, in one call to the engine."""
    import docker

    client = docker.APIClient(base_url=docker_url, timeout=30)
    try:
        found: dict[str, dict[str, str]] = {}
        for image in client.images(name=f"{build.REPO}/*"):
            for tag in image.get("RepoTags") or []:
                found[tag] = image.get("Labels") or {}
        return found
    finally:
        client.close()


def describe(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """The image's description: its labels where it has them, else its recipe's."""
    try:
        recipe = recipe_meta(name)
    except build.RecipeError:
        recipe = {}
    out: dict[str, Any] = {}
    for key in (*build.TEXT_FIELDS, "extensions", "run_by_extension"):
        raw = labels.get(f"{build.LABEL}.{key}")
        if raw and key in ("extensions", "run_by_extension"):
            try:
                out[key] = json.loads(raw)
                continue
            except ValueError:
                pass
        empty: Any = [] if key == "extensions" else {} if key == "run_by_extension" else ""
        out[key] = raw or recipe.get(key, empty)
    return out


def register_image(name: str, labels: dict[str, str], overrides: dict[str, Any] | None = None) -> Image:
    """Register (or bring up to date) image ``name`` as described; keeps an existing row's ``enabled``."""
    meta = {**describe(name, labels), **(overrides or {})}
    enabled = True
    try:
        enabled = bool(Image.get(name).enabled)
    except Image.DoesNotExist:
        pass
    return admin.image_create(
        name,
        ref(name),
        meta.pop("description"),
        enabled=enabled,
        replace=True,
        **meta,
    )


def register_built(docker_url: str = DOCKER_URL) -> list[str]:
    """Register ``base`` and every catalogue image the local engine has built (``make dev``); their names."""
    present = local_images(docker_url)
    names = []
    for name in build.catalogue():
        labels = present.get(ref(name))
        if labels is None and name != build.BASE:
            continue  # not built here: nothing could run it
        register_image(name, labels or {})
        names.append(name)
    return names


def new_recipe(name: str, packages: list[str], parent: str, meta: dict[str, Any], replace: bool = False) -> Path:
    """Write ``infra/images/<name>/image.json`` for an image of ``parent`` plus Debian ``packages``."""
    folder = build.recipes_dir() / name
    recipe: dict[str, Any] = {"from": parent, "packages": packages}
    recipe.update({k: v for k, v in meta.items() if v})
    text = json.dumps(recipe, indent=2) + "\n"
    path = folder / "image.json"
    if path.exists() and path.read_text() != text and not replace:
        raise InvalidInput(
            "packages", f"{path} already holds another recipe; edit it and run without --packages, or pass --replace"
        )
    if name == build.BASE:
        raise InvalidInput("name", "base is made by infra/images/base/build.sh, not from packages")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        build.load(name)
    except build.RecipeError as e:
        path.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
        raise InvalidInput("recipe", str(e)) from None
    return path


def run_smoke(name: str, settings: Settings, docker_url: str = DOCKER_URL) -> list[dict[str, Any]]:
    """Run the recipe's smoke programs in the image exactly as a sandbox runs (the dispatcher's runner, the
    default limits), with its run template; one result per program, ``ok`` when its stdout is as expected."""
    import docker

    from dispatcher.runner import Runner, RunSpec

    recipe = recipe_meta(name)
    folder = build.recipes_dir() / name
    runner = Runner(docker.APIClient(base_url=docker_url, timeout=60), server="image-build", pool_size=0)
    results = []
    try:
        for program in recipe.get("smoke", []):
            file = program["file"]
            template = image_meta.template_for(recipe, file)
            cmd = image_meta.fill(template, file)
            tar = bundle([UploadedFile(file, (folder / file).read_bytes())])
            spec = RunSpec(
                sandbox_id=f"imagebuild{os.getpid()}",
                docker_image=ref(name),
                cmd=[cmd],
                timeout_s=settings.limit("timeout").default,
                memory_mb=int(settings.limit("memory_mb").default),
                cpus=settings.limit("cpus").default,
                pids=int(settings.limit("pids").default),
                disk_mb=int(settings.limit("disk_mb").default),
                output_bytes=int(settings.limit("output_kb").default) * 1024,
                files_bytes=len(tar),
            )
            result = runner.run(spec, tar)
            stdout = result.stdout.decode(errors="replace")
            results.append(
                {
                    "file": file,
                    "cmd": cmd,
                    "ok": result.return_code == 0 and stdout == program["stdout"] and not result.timed_out,
                    "return_code": result.return_code,
                    "timed_out": result.timed_out,
                    "seconds": round(result.duration_s, 2),
                    "stdout": stdout[-2000:],
                    "stderr": result.stderr.decode(errors="replace")[-2000:],
                }
            )
    finally:
        runner.api.close()
    return results


def image_build(
    settings: Settings,
    name: str,
    packages: str | None = None,
    parent: str = "base",
    description: str | None = None,
    meta: dict[str, Any] | None = None,
    replace: bool = False,
    force: bool = False,
    register: bool = True,
    smoke: bool = True,
) -> dict[str, Any]:
    """``manage.py image-build``: build recipe ``name`` on the local engine (writing the recipe first when
    ``packages`` are given), run its smoke programs as a sandbox would, then register it.  An image whose
    smoke program fails is not registered."""
    meta = dict(meta or {})
    try:
        if packages is not None:
            names = packages.split()
            if not names:
                raise InvalidInput("packages", "name at least one Debian package")
            new_recipe(name, names, parent, {"description": description or "", **meta}, replace=replace)
        recipe = recipe_meta(name)
        started = time.monotonic()
        cached = not force and name != build.BASE and _is_built(name)
        built_ref = build.build(name, force=force)
    except build.RecipeError as e:
        raise InvalidInput("name", str(e)) from None
    except build.BuildError as e:
        raise OpenDevelopError(f"building {name}: {e}") from None
    info = build.inspect(built_ref) or {"labels": {}, "size": 0}
    report: dict[str, Any] = {
        "name": name,
        "image": built_ref,
        "docker_image": ref(name),
        "built": not cached,
        "seconds": round(time.monotonic() - started, 1),
        "size_mb": round(info["size"] / 1e6),
        "smoke": [],
        "registered": False,
    }
    if smoke and recipe.get("smoke"):
        report["smoke"] = results = run_smoke(name, settings)
        failed = [r for r in results if not r["ok"]]
        if failed:
            first = failed[0]
            raise OpenDevelopError(
                f"{name}: the smoke program {first['file']} did not run as expected under the sandbox's limits "
                f"(`{first['cmd']}` exited {first['return_code']}{', timed out' if first['timed_out'] else ''}; "
                f"stdout {first['stdout'][-300:]!r}, stderr {first['stderr'][-500:]!r}); not registered"
            )
    if register:
        overrides = {k: v for k, v in {**meta, "description": description}.items() if v}
        image = register_image(name, info["labels"], overrides)
        report["registered"] = True
        report["version"] = image.version
        report["run"] = image.run
        report["extensions"] = list(image.extensions or [])
    return report


def _is_built(name: str) -> bool:
    """Whether the recipe as it stands is built (one ``docker inspect`` of its parent, one of its tag)."""
    recipe = recipe_meta(name)
    parent = build.inspect(ref(recipe["from"]))
    if parent is None:
        return False
    parent_tag = parent["labels"].get(f"{build.LABEL}.recipe", "") or parent["id"]
    return build.inspect(f"{build.REPO}/{name}:{build.recipe_hash(name, parent_tag)}") is not None


def report_text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['name']}: {report['image']} ({report['size_mb']} MB), "
        + (f"built in {report['seconds']:g} s" if report["built"] else "already built")
    ]
    for result in report["smoke"]:
        lines.append(f"  smoke {result['file']}: `{result['cmd']}` ok in {result['seconds']:g} s")
    if report["registered"]:
        lines.append(
            f"registered as {report['name']} ({report['docker_image']}): version {report.get('version') or '?'}, "
            f"run `{report.get('run') or '-'}`, extensions {' '.join(report.get('extensions') or []) or '-'}"
        )
    return "\n".join(lines)
