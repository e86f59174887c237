"""Schemathesis against the running stack: no 5xx, no answer that breaks the document, no crash.

``st run`` reads GET /api/openapi.json from the integration stack and sends
what it describes (and what it does not: wrong types, missing fields, unknown
parameters, no credentials) with an app's valid credentials, checking every
answer:

* ``not_a_server_error``: no 5xx (a 503 is documented, but the stack is healthy);
* ``status_code_conformance``, ``content_type_conformance``,
  ``response_headers_conformance``, ``response_schema_conformance``: every
  answer is one the document describes, body and headers included;
* ``negative_data_rejection``: input the document rules out is refused;
* ``ignored_auth``, ``missing_required_header``: no credentials is a 401.

It runs as the stack's users would see it, against a fuzzing app whose
ceilings are low (2 s, 128 MiB), so the sandboxes it creates finish quickly:
some dozens, as the coverage phase tries every documented boundary once and
the other phases at most ``MAX_EXAMPLES`` cases per operation.  Afterwards every process of the
stack must still be alive, and every sandbox it created must have ended as a
program's result or been cancelled -- none in ``error``.

``OPENDEVELOP_FUZZ_SEED`` and ``OPENDEVELOP_FUZZ_EXAMPLES`` change the seed and
the depth (the defaults keep the run reproducible and under ~90 s).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parses only the report schemathesis just wrote
from pathlib import Path

import opendevelop
import pytest
import requests

from infra.local.stack import VENV_BIN

from .helpers import RunningStack

pytestmark = pytest.mark.timeout(300)

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
    "missing_required_header",
)
MAX_EXAMPLES = int(os.environ.get("OPENDEVELOP_FUZZ_EXAMPLES", "12"))
SEED = os.environ.get("OPENDEVELOP_FUZZ_SEED", "20141")
FUZZ_CEILINGS = {"timeout": 2, "memory_mb": 128, "pids": 64, "disk_mb": 16, "output_kb": 64}

# `chalice local` serves over Python's http.server, which answers a method it has no handler for
# (TRACE, QUERY) with its own 501 before the app sees it; API Gateway answers those itself too.
# Every other undeclared method still has to be a 405.
CONFIG = """\
[phases.coverage]
unexpected-methods = ["get", "put", "post", "delete", "options", "patch"]
"""


@pytest.fixture(scope="module")
def fuzz_app(stack: RunningStack) -> tuple[str, str]:
    from chalicelib import admin

    app, secret = admin.app_create(
        f"fuzz-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings(), limits=FUZZ_CEILINGS
    )
    return app.app_id, secret


def test_schemathesis_finds_no_server_error_no_schema_break_and_no_crash(
    stack: RunningStack, fuzz_app: tuple[str, str], tmp_path: Path, show_logs_on_failure: list[Path]
) -> None:
    assert stack.stack.log_dir is not None
    show_logs_on_failure.append(stack.stack.log_dir)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    app_id, secret = fuzz_app
    args = [
        str(VENV_BIN / "st"),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{stack.stack.api_url}/api/openapi.json",
        "--auth",
        f"{app_id}:{secret}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "40",  # > the longest long-poll, ?wait=20
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]

    started = time.monotonic()
    # In tmp_path: schemathesis keeps a crash cache in ./.schemathesis, which must not land in the checkout.
    run = subprocess.run(
        args, capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"}
    )
    took = time.monotonic() - started

    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis failed (exit {run.returncode}, {took:.0f} s):\n{output[-20000:]}"
    # Every operation of the document was exercised (all but the document's own, which schemathesis reads).
    document = requests.get(f"{stack.stack.api_url}/api/openapi.json", timeout=10).json()
    described = {f"{m.upper()} {path}" for path, item in document["paths"].items() for m in item}
    report = ET.parse(next((tmp_path / "report").glob("junit-*.xml"))).getroot()  # noqa: S314 - our own report
    tested = {case.get("name") for case in report.iter("testcase")}
    assert described - {"GET /api/openapi.json"} <= tested, f"not exercised: {described - tested}"
    assert not [case.get("name") for case in report.iter("testcase") if len(case)], output[-20000:]
    for name, proc in stack.stack.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode} during the run"

    # Every sandbox the run created settles as a result or a cancellation, never as a platform error.
    fuzz = opendevelop.Client(stack.stack.api_url, app_id, secret)
    created = list(fuzz.sandboxes())
    assert created, "the run created no sandbox: it never reached the happy path of POST /api/sandboxes"
    print(f"schemathesis ran {took:.0f} s and created {len(created)} sandboxes")
    for sandbox in created:
        if not sandbox.finished:
            try:
                fuzz.cancel(sandbox.id)
            except opendevelop.ConflictError:
                pass  # it finished meanwhile
    deadline = time.monotonic() + 30
    while True:
        unsettled = [s for s in fuzz.sandboxes() if not s.finished]
        if not unsettled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not unsettled, f"still unfinished 30 s after being cancelled: {[(s.id, s.status) for s in unsettled]}"
    errors = [(s.id, s.cmd, s.error) for s in fuzz.sandboxes() if s.status == "error"]
    assert not errors, f"sandboxes the platform failed to run: {errors}"

    # And the stack still does its job: the demo app runs a program to the end.
    demo = opendevelop.Client(stack.stack.api_url, stack.demo["app_id"], stack.demo["secret"])
    done = demo.run("echo still here", timeout=10, max_wait=60)
    assert (done.status, done.return_code, done.stdout) == ("terminated", 0, "still here\n"), done
