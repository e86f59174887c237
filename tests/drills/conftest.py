"""Fault drills for issue #11, "One run, one result": ``make drills`` (``python -m pytest tests/drills``).

One stack for the whole session (``stack.drill_stack``): moto, ``chalice
local``, two Docker servers on two engines, a dispatcher each and the
reconciler, every process reaching AWS through a fault proxy of its own.  Each
drill disturbs it, checks what became of its sandboxes (``drill.Drill``) and
hands it back restored (``DrillStack.restore``).  At the end the session
prints the results table: per drill, the outcome, the final states, the starts
per sandbox and the seconds from the fault to the last final state (">N": not
all final when the drill stopped waiting, N seconds after its fault).
``DRILLS_RESULTS=path.json`` also writes it as JSON; ``DRILLS_LOGS=folder``
keeps the stack's logs there.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(ROOT))

from infra.local.stack import BASE_IMAGE, DOCKER_URL  # noqa: E402

from .drill import RESULTS, Drill  # noqa: E402
from .stack import DrillStack, drill_stack  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillStack]:
    import docker

    try:
        client = docker.DockerClient(base_url=DOCKER_URL, timeout=30)
        client.images.get(BASE_IMAGE)
    except Exception as e:
        pytest.fail(f"the drills need the Docker engine at {DOCKER_URL} and {BASE_IMAGE} ({e}): run `make host`")
    name = f"dr{secrets.token_hex(3)}"
    # pytest keeps only its last three temporary folders, which other test runs on the machine may
    # rotate away mid-session: DRILLS_LOGS=folder keeps this session's logs there instead.
    keep = os.environ.get("DRILLS_LOGS")
    base = Path(keep) / name if keep else tmp_path_factory.mktemp(name)
    with drill_stack(base, name) as running:
        yield running


@pytest.fixture
def drill(stack: DrillStack, request: pytest.FixtureRequest) -> Iterator[Drill]:
    run = Drill(stack, request.node.name.removeprefix("test_"))
    try:
        yield run
    finally:
        if not run.recorded:  # the drill stopped before its checks: record why
            report = getattr(request.node, "rep_call", None)
            error = str(report.longrepr).strip().splitlines()[-1] if report is not None and report.failed else "?"
            starts = [stack.events.starts(i) for i in run.ids]
            from collections import Counter

            run.record(Counter(run.states.status(i) for i in run.ids), starts, 0.0, error=error[:300])
        run.cleanup()
        stack.restore()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
        if report.failed:
            stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
            if stack is not None and stack.log_dir is not None:
                report.sections.append(("drill stack logs", _tails(stack.log_dir)))
    return report


def _tails(log_dir: Path, lines: int = 25) -> str:
    out = []
    for path in sorted(log_dir.glob("*.log")):
        if path.name == "aws.log" or path.name.startswith("aws-proxy"):
            continue
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"==> {path} <==\n" + "\n".join(text))
    return "\n\n".join(out)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("drill results")
    write(f"{'drill':44} {'outcome':8} {'final states':28} {'starts':16} {'s to final':>10}")
    for row in RESULTS:
        finals = ", ".join(f"{k}x{v}" for k, v in sorted(row["finals"].items()))
        starts = ",".join(str(s) for s in row["starts"])
        seconds = f">{row['seconds']:g}" if row.get("unfinished") else f"{row['seconds']:g}"
        write(f"{row['drill'][:44]:44} {row['outcome']:8} {finals[:28]:28} {starts[:16]:16} {seconds:>10}")
        for finding in row["findings"]:
            write(f"    - {finding[:200]}")
        for note in row["notes"]:
            write(f"    . {note[:200]}")
    path = os.environ.get("DRILLS_RESULTS")
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=2))
        write(f"(written to {path})")
