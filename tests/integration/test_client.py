"""The Python client (``clients/python``, installed into the virtualenv) and its command line, against the real stack.

The README's two examples are run exactly as written; then the library's
calls, its errors, and the ``opendevelop`` command as a subprocess, as a
user's shell would run it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import opendevelop
import pytest
import requests

from chalicelib.artifacts import MAX_DEPTH
from chalicelib.openapi import artifact_path
from infra.local.stack import VENV_BIN

from .helpers import ROOT, RunningStack

pytestmark = pytest.mark.timeout(120)

TEST_PY = 'print("hello opendevelop!")\n'
HELLO = "hello opendevelop!\n"


@pytest.fixture(scope="module")
def app(stack: RunningStack) -> dict[str, str]:
    """An app of its own, so its listing holds only what these tests made."""
    from chalicelib import admin

    made, secret = admin.app_create(f"client-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings())
    return {
        "OPENDEVELOP_URL": stack.stack.api_url,
        "OPENDEVELOP_APP_ID": made.app_id,
        "OPENDEVELOP_SECRET": secret,
    }


@pytest.fixture
def client(app: dict[str, str]) -> opendevelop.Client:
    return opendevelop.Client(app["OPENDEVELOP_URL"], app["OPENDEVELOP_APP_ID"], app["OPENDEVELOP_SECRET"])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder as a user's: their files, and the checkout's .venv where the README says it is."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "test.py").write_text(TEST_PY)
    return tmp_path


def shell(command: str | list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENDEVELOP_")}
    return subprocess.run(
        command,
        shell=isinstance(command, str),
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=90,
        **kwargs,
    )


def od(*args: str, env: dict[str, str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return shell([str(VENV_BIN / "opendevelop"), *args], env, cwd, **kwargs)


def readme_examples() -> tuple[str, str]:
    """The README's Python client section: its ```python block and its ```sh line."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    sh = re.search(r"```sh\n(.*?)```", section, re.S)
    assert python and sh, "the README's Python client section lost an example"
    return python.group(1), sh.group(1)


# The README, as written


def test_the_readmes_python_example_works_as_written(app, workdir):
    code, _ = readme_examples()
    assert len([line for line in code.splitlines() if line.strip()]) == 3, "the README promises three lines"

    done = shell([str(workdir / ".venv/bin/python"), "-c", code], app, workdir)

    assert done.returncode == 0, done.stderr
    assert done.stdout == HELLO


def test_the_readmes_shell_example_works_as_written(app, workdir):
    _, line = readme_examples()
    assert len(line.strip().splitlines()) == 1

    done = shell(line, app, workdir, executable="/bin/bash")

    assert (done.returncode, done.stdout, done.stderr) == (0, HELLO, "")


def test_make_dev_prints_the_line_that_sets_the_clients_variables():
    from infra.local.dev import BANNER

    shown = BANNER.format(
        api="http://127.0.0.1:8000", aws="-", logs="-", server="local", app_id="ID", secret="S", webhook_secret="W"
    )
    assert "export OPENDEVELOP_URL=http://127.0.0.1:8000 OPENDEVELOP_APP_ID=ID OPENDEVELOP_SECRET=S" in shown
    assert "webhook secret W" in shown


# The library


def test_images_and_a_run_with_files_from_paths_bytes_and_text(client, workdir, monkeypatch):
    (workdir / "lib").mkdir()
    (workdir / "lib" / "greet.py").write_text("def greet(name):\n    return 'hello ' + name\n")
    (workdir / "run.sh").write_text('#!/bin/sh\npython main.py "$@"\n')
    (workdir / "run.sh").chmod(0o755)
    monkeypatch.chdir(workdir)
    main = (
        "import sys\n"
        "from lib.greet import greet\n"
        "print(greet(open('name.txt').read().strip()), open('blob.bin', 'rb').read().hex())\n"
        "print('to stderr', file=sys.stderr)\n"
    )

    assert "base" in client.images()
    sandbox = client.run(
        "./run.sh",
        ["lib", "run.sh", ("main.py", main), ("name.txt", "wörld\n"), ("blob.bin", b"\x00\xff")],
        timeout=20,
        memory_mb=128,
    )

    assert sandbox.ok, sandbox
    assert sandbox.stdout == "hello wörld 00ff\n"
    assert sandbox.stderr == "to stderr\n"
    assert (sandbox.files, sandbox.limits["memory_mb"], sandbox.timeout) == (5, 128, 20)
    assert sandbox.cmd == ["./run.sh"]
    assert sandbox.finished_at >= sandbox.started_at >= sandbox.created_at


def test_a_failing_program_is_a_result_not_an_exception(client):
    sandbox = client.run(["echo before", "python -c 'import sys; sys.exit(7)'", "echo never"])

    assert (sandbox.status, sandbox.return_code, sandbox.ok) == ("terminated", 7, False)
    assert sandbox.stdout == "before\n"


def test_stdin_env_and_the_time_limit(client):
    sandbox = client.run("read x; echo $x $GREETING", stdin="42\n", env={"GREETING": "hi"})
    assert sandbox.stdout == "42 hi\n"

    slow = client.run("sleep 10", timeout=1)
    assert (slow.status, slow.timed_out, slow.ok) == ("terminated", True, False)


def test_cancel_a_queued_sandbox_then_cancelling_again_is_a_conflict(client):
    sandbox = client.create("sleep 5", timeout=10)

    cancelled = client.cancel(sandbox.id)

    assert cancelled.status == "cancelled" and cancelled.finished
    assert client.sandbox(sandbox.id, wait=1).status == "cancelled"
    with pytest.raises(opendevelop.ConflictError) as caught:
        client.cancel(sandbox.id)
    assert caught.value.status == 409 and "already finished" in caught.value.message


def test_sandboxes_iterates_every_page_newest_first(stack):
    from chalicelib import admin

    made, secret = admin.app_create(f"pages-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings())
    fresh = opendevelop.Client(stack.stack.api_url, made.app_id, secret)
    ids = [fresh.create("true").id for _ in range(5)]

    listed = [s.id for s in fresh.sandboxes(page_size=2)]

    assert listed == ids[::-1]


def test_the_apis_errors_arrive_as_exceptions_with_its_code_and_message(client, stack):
    with pytest.raises(opendevelop.NotFoundError) as missing:
        client.sandbox("0123456789abcdef")
    with pytest.raises(opendevelop.BadRequestError) as too_much:
        client.create("true", memory_mb=1_000_000)
    with pytest.raises(opendevelop.BadRequestError) as no_image:
        client.create("true", image="nosuchimage")
    with pytest.raises(opendevelop.UnauthorizedError) as wrong:
        opendevelop.Client(stack.stack.api_url, client.app_id, "wrong-secret-wrong-secret").images()

    assert (missing.value.status, missing.value.code) == (404, "NotFoundError")
    assert too_much.value.field == "memory_mb" and "ceiling" in too_much.value.message
    assert no_image.value.field == "image"
    assert (wrong.value.status, wrong.value.code) == (401, "UnauthorizedError")


def test_the_openapi_document_is_served_without_credentials(client):
    anonymous = requests.get(f"{client.url}/api/openapi.json", timeout=10)

    assert anonymous.status_code == 200
    assert anonymous.headers["Content-Type"].startswith("application/json")
    document = client.openapi()
    assert document == anonymous.json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/",  # the playground page
        "/api/openapi.json",
        "/api/images",
        "/api/images/{name}",
        "/api/usage",
        "/api/sandboxes",
        "/api/sandboxes/batch",
        "/api/sandboxes/{sandbox_id}",
        "/api/sandboxes/{sandbox_id}/logs",
        "/api/sandboxes/{sandbox_id}/stdout",
        "/api/sandboxes/{sandbox_id}/stderr",
        "/api/sandboxes/{sandbox_id}/artifacts",
        *(artifact_path(depth) for depth in range(1, MAX_DEPTH + 1)),  # a route per depth: out/a/b.txt is a/b.txt
    }


# The command line


def test_cli_run_prints_the_output_as_the_program_would_and_exits_with_its_status(app, workdir):
    (workdir / "main.py").write_text(
        "import sys\nrows = open('data.csv').read().split()\nprint('rows:', len(rows))\n"
        "print('warning: last row', rows[-1], file=sys.stderr)\nsys.exit(3)\n"
    )
    (workdir / "data.csv").write_text("a,1\nb,2\n")

    done = od("run", "main.py", "data.csv", "--image", "base", "--", "python", "main.py", env=app, cwd=workdir)

    assert (done.returncode, done.stdout, done.stderr) == (3, "rows: 2\n", "warning: last row b,2\n")


def test_cli_run_says_why_a_program_was_killed_with_its_own_status(app, workdir):
    slow = od("run", "--timeout", "1", "--", "sleep", "10", env=app, cwd=workdir)
    big = od("run", "--memory-mb", "32", "--", "python", "-c", "b = bytearray(256 << 20)", env=app, cwd=workdir)

    assert slow.returncode == 124
    assert slow.stderr.startswith("opendevelop: the program was killed at its time limit of 1 s")
    assert big.returncode == 137
    assert "opendevelop: the program was killed for using more than 32 MiB of memory" in big.stderr


def test_cli_images_ls_show_and_cancel(app, client, workdir):
    images = od("images", env=app, cwd=workdir)
    started = od("run", "--json", "--", "echo", "listed", env=app, cwd=workdir)
    sandbox_id = re.search(r'"id": "([0-9a-f]+)"', started.stdout).group(1)
    listing = od("ls", "-n", "3", env=app, cwd=workdir)
    shown = od("show", sandbox_id, env=app, cwd=workdir)
    again = od("cancel", sandbox_id, env=app, cwd=workdir)

    assert images.returncode == 0 and "base" in images.stdout.splitlines()
    assert started.returncode == 0, started.stderr
    assert listing.returncode == 0 and listing.stdout.splitlines()[1].split()[:3] == [sandbox_id, "terminated", "0"]
    assert shown.returncode == 0 and "--- stdout ---\nlisted\n" in shown.stdout
    assert again.returncode == 1
    assert again.stderr == f"opendevelop: sandbox {sandbox_id} has already finished (terminated); nothing to cancel\n"

    queued = client.create("sleep 5")
    cancelled = od("cancel", queued.id, env=app, cwd=workdir)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"{queued.id} cancelled\n")


def test_cli_bad_credentials_and_an_unreachable_server_are_clear_messages(app, workdir):
    wrong = od("ls", env={**app, "OPENDEVELOP_SECRET": "not-the-secret-at-all"}, cwd=workdir)
    run_wrong = od("run", "test.py", "--", "python", "test.py", "--secret", "x", env=app, cwd=workdir)
    nobody = od("images", "--url", "http://127.0.0.1:9", env=app, cwd=workdir)
    missing = od("images", env={"OPENDEVELOP_URL": app["OPENDEVELOP_URL"]}, cwd=workdir)

    assert wrong.returncode == 1
    assert wrong.stderr.startswith("opendevelop: the server refused the credentials (unknown app id or wrong secret)")
    assert run_wrong.returncode == 0  # `--secret x` after `--` belongs to the program, not to opendevelop
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("opendevelop: cannot reach the OpenDevelop API at http://127.0.0.1:9")
    assert missing.returncode == 1 and "set OPENDEVELOP_APP_ID" in missing.stderr
    for done in (wrong, nobody, missing):
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_package_is_installed_from_the_checkout():
    assert Path(opendevelop.__file__).resolve().is_relative_to(ROOT / "clients" / "python" / "src")
    assert (VENV_BIN / "opendevelop").exists()
    assert Path(sys.executable).parent == VENV_BIN
