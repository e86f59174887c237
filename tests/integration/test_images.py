"""The image catalogue through the real stack: every image's smoke programs, sent over HTTP like a user's.

Each smoke program runs with its image's own run template, under the
platform's hardened container (read-only root, uid 1000, HOME=/sandbox on a
tmpfs, no network, the default limits: 256 MiB, 1 CPU, 10 s), so a compiler
that needs a writable cache or more memory than a sandbox has fails here.
``make host`` builds the catalogue (``infra/images/build.py --all``) and the
stack's bootstrap registers what it built, as ``make dev`` does.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib import image_meta
from infra.images import build, catalogue

from .helpers import ROOT, Client, RunningStack

CATALOGUE = build.catalogue()
SMOKE = [(name, program) for name in CATALOGUE for program in build.load(name).get("smoke", [])]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def built(docker_client: Any) -> dict[str, dict[str, str]]:
    """The catalogue as this engine has it; fails saying how to build it when an image is missing."""
    present = catalogue.local_images()
    missing = [name for name in CATALOGUE if catalogue.ref(name) not in present]
    if missing:
        pytest.fail(
            f"catalogue images not built here: {', '.join(missing)}; run `make host` (infra/images/build.py --all)",
            pytrace=False,
        )
    return present


def test_a_fresh_install_lists_every_catalogue_image(client: Client, built: dict[str, Any]) -> None:
    response = client.get("/api/images")

    assert response.status_code == 200
    assert response.json() == sorted(CATALOGUE)
    assert len(CATALOGUE) == 9


def test_each_image_says_what_it_runs_and_the_version_its_build_measured(
    client: Client, built: dict[str, dict[str, str]]
) -> None:
    described = {i["name"]: i for i in client.get("/api/images", params={"detail": "true"}).json()}

    for name in CATALOGUE:
        recipe = build.load(name)
        image = described[name]
        assert (image["language"], image["run"], image["extensions"]) == (
            recipe["language"],
            recipe["run"],
            recipe["extensions"],
        ), name
        labels = built[catalogue.ref(name)]
        assert image["version"] == labels.get("org.opendevelop.version", recipe.get("version")), name
        assert image["version"][:1].isdigit(), f"{name}: version {image['version']!r}"
    assert client.get("/api/images/go").json() == described["go"]
    assert client.get("/api/images/cobol").status_code == 404


@pytest.mark.parametrize(("name", "program"), SMOKE, ids=[f"{n}-{p['file']}" for n, p in SMOKE])
def test_the_smoke_program_compiles_and_runs_in_the_hardened_sandbox(
    client: Client, built: Any, name: str, program: dict[str, str]
) -> None:
    recipe = build.load(name)
    source = (build.recipes_dir() / name / program["file"]).read_bytes()
    cmd = image_meta.fill(image_meta.template_for(recipe, program["file"]), program["file"])

    sandbox_id = client.submit([cmd], {program["file"]: source}, image=name)  # the default limits
    done = client.wait_done(sandbox_id, timeout=90)

    assert (done["status"], done["return_code"], done["stdout"]) == ("terminated", 0, program["stdout"]), done
    assert not done["timed_out"] and not done["oom_killed"]


def test_opendevelop_run_picks_the_image_from_the_files_extension(stack: RunningStack, built: Any, tmp_path: Path):
    (tmp_path / "main.go").write_bytes((build.recipes_dir() / "go" / "main.go").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDEVELOP_")}
    env.update(
        OPENDEVELOP_URL=stack.stack.api_url,
        OPENDEVELOP_APP_ID=stack.demo["app_id"],
        OPENDEVELOP_SECRET=stack.demo["secret"],
    )

    run = subprocess.run(
        [str(VENV_BIN / "opendevelop"), "run", "main.go"], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert (run.returncode, run.stdout) == (0, "hello from go1.19: 5050\n"), run.stderr
    version = client_version(stack, "go")
    assert run.stderr == f"opendevelop: running main.go with image go (Go {version}): go run main.go\n"


def client_version(stack: RunningStack, name: str) -> str:
    response = stack.client.get(f"/api/images/{name}")
    assert response.status_code == 200
    return str(response.json()["version"])


def test_image_build_makes_a_new_image_from_packages_and_registers_it(
    stack: RunningStack, built: Any, tmp_path: Path, docker_client: Any
) -> None:
    """``manage.py image-build --name N --packages "jq" --from base``: built here, registered, runnable."""
    name = f"it-jq-{secrets.token_hex(3)}"
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "base").symlink_to(ROOT / "infra" / "images" / "base")  # what it is built from
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENDEVELOP_", "AWS_"))}
    env.update(stack.stack.env(), OPENDEVELOP_IMAGE_RECIPES=str(recipes))
    try:
        run = subprocess.run(
            [
                str(VENV_BIN / "python"),
                str(ROOT / "manage.py"),
                "image-build",
                f"--name={name}",
                "--packages=jq",
                "--from=base",
                "--description=jq on Debian 12",
                "--language=jq",
                "--run=jq -n -f {file}",
                "--extensions=.jq",
                "--json",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout)
        assert (report["registered"], report["docker_image"]) == (True, f"opendevelop/{name}:latest")
        assert report["version"][:1].isdigit()  # jq's Debian version, measured in the build
        recipe = json.loads((recipes / name / "image.json").read_text())
        assert recipe["packages"] == ["jq"] and recipe["from"] == "base"

        described = stack.client.get(f"/api/images/{name}").json()
        assert (described["language"], described["run"], described["extensions"]) == ("jq", "jq -n -f {file}", [".jq"])
        # The dispatcher runs it as soon as the engine has it (its image report catches up later).
        sandbox_id = stack.client.submit(["jq -n -f sum.jq"], {"sum.jq": "[range(1;101)] | add\n"}, image=name)
        done = stack.client.wait_done(sandbox_id, timeout=60)
        assert (done["status"], done["return_code"], done["stdout"]) == ("terminated", 0, "5050\n"), done

        again = subprocess.run(
            [str(VENV_BIN / "python"), str(ROOT / "manage.py"), "image-build", f"--name={name}", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads(again.stdout)["built"] is False  # cached by recipe hash
    finally:
        for image in docker_client.images.list(name=f"opendevelop/{name}"):
            for tag in image.tags:
                docker_client.images.remove(tag, force=True)
