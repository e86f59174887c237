"""The real local stack, started once per test session: moto's server, ``chalice local`` and a dispatcher.

The stack is built with ``infra.local.stack.Stack``, the same code ``make dev``
runs, on free ports, with its own table prefix, state folder and Docker server
name, so it never clashes with a ``make dev`` already running on 5000/8000.
Tests speak HTTP to it like a user, through ``helpers.Client``.

Nothing is skipped: without a Docker engine or the ``base`` image the tests
fail with a message saying how to get them (``make host``).  When a test fails,
the tails of the stack's log files are attached to its report.
"""

from __future__ import annotations

import secrets
import sys
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(ROOT))

from infra.local.stack import BASE_IMAGE, DOCKER_URL, Stack, free_port  # noqa: E402

from .helpers import SLOTS, Client, RunningStack, models_bound_to, remove_containers, wait_for_text  # noqa: E402

LOG_TAIL_LINES = 40

STACK_KEY = pytest.StashKey[Stack]()
LOGS_KEY = pytest.StashKey[list[Path]]()  # per test: log files or folders to show if it fails


@pytest.fixture(scope="session")
def docker_client() -> Any:
    import docker

    problem = None
    try:
        client = docker.DockerClient(base_url=DOCKER_URL, timeout=30)
        client.ping()
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        problem = f"the Docker image {BASE_IMAGE} is missing: build it with `make host` (infra/images/base/build.sh)"
    except Exception as e:  # noqa: BLE001 - any failure means the same thing here
        problem = (
            f"no Docker engine answers at {DOCKER_URL} ({e}). The integration tests need one: "
            f"run `make host` (starts dockerd and builds {BASE_IMAGE}), or `make integration`."
        )
    if problem:
        pytest.fail(problem, pytrace=False)  # outside the except: no chained traceback to wade through
    return client


@contextmanager
def running_stack(
    base: Path,
    name: str,
    runtime: str = "runc",
    slots: int = SLOTS,
    extra_env: dict[str, str] | None = None,
    webhooks: bool = False,
) -> Iterator[RunningStack]:
    """A whole local stack (moto, ``chalice local``, one dispatcher) for server ``name``; stopped on exit.

    ``webhooks``: the webhook poller runs too (``infra.local.webhooks``); ``extra_env`` reaches every process.

    Tests that kill or disturb things build their own with this, so they never
    disturb the session stack the other tests share.
    """
    stack = Stack(
        aws_port=free_port(),
        api_port=free_port(),
        table_prefix=name,
        state_dir=base / "state",
        log_dir=base / "logs",
        # A short long-poll so the dispatcher's warm stop at teardown takes ~2 s, not 10.
        extra_env={"OPENDEVELOP_POLL_WAIT": "2", **(extra_env or {})},
    )
    try:
        stack.start_aws()
        # In-process admin calls (bootstrap, tests creating apps) go to this stack while it
        # runs, and back to whichever stack was bound before once it stops.
        with models_bound_to(stack.settings()):
            demo = stack.bootstrap(slots=slots, servers=(name,), runtime=runtime)
            stack.start_api()
            proc = stack.start_dispatcher(name)
            wait_for_text(base / "logs" / f"dispatcher-{name}.log", '"dispatcher.ready"', 30, proc)
            if webhooks:
                poller = stack.start_webhooks()
                wait_for_text(base / "logs" / "webhooks.log", '"webhooks.ready"', 30, poller)
            yield RunningStack(stack, name, demo)
    finally:
        stack.stop_all()
        import docker

        left = remove_containers(docker.DockerClient(base_url=DOCKER_URL, timeout=30), name)
        if left:  # the dispatcher should remove every container it made, whatever happened
            warnings.warn(f"removed containers the dispatcher left behind: {left}", stacklevel=1)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, pytestconfig: pytest.Config
) -> Iterator[RunningStack]:
    name = f"it{secrets.token_hex(3)}"
    with running_stack(tmp_path_factory.mktemp(name), name) as running:
        pytestconfig.stash[STACK_KEY] = running.stack
        yield running


@pytest.fixture
def client(stack: RunningStack) -> Client:
    """The demo app's client."""
    return stack.client


@pytest.fixture
def show_logs_on_failure(request: pytest.FixtureRequest) -> list[Path]:
    """Append log files or folders to this list: their tails join the report if the test fails."""
    paths: list[Path] = []
    request.node.stash[LOGS_KEY] = paths
    return paths


# Log tails on failure


def tails(paths: list[Path], lines: int = LOG_TAIL_LINES) -> str:
    files: list[Path] = []
    for path in paths:
        # moto's access log says least: it goes last.
        files += sorted(path.glob("*.log"), key=lambda f: (f.name == "aws.log", f.name)) if path.is_dir() else [path]
    out = []
    for file in files:
        if file.exists():
            text = file.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {file} (last {len(text)} lines) <==\n" + "\n".join(text))
    return "\n\n".join(out)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        paths = item.stash.get(LOGS_KEY, None)
        if not paths:
            stack = item.config.stash.get(STACK_KEY, None)
            paths = [stack.log_dir] if stack is not None and stack.log_dir else []
        if paths:
            report.sections.append(("stack logs (tails)", tails(paths)))
    return report
