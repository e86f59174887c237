"""Spare containers on the real engine: made ahead with a run's limits, used once, removed with the dispatcher."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from dispatcher.runner import LABEL_POOL

from .conftest import running_stack
from .helpers import Client, RunningStack

pytestmark = pytest.mark.timeout(120)


def spares(docker_client: Any, server: str) -> list[Any]:
    listed = docker_client.containers.list(
        all=True, filters={"label": f"opendevelop.server={server}"}, ignore_removed=True
    )
    return [c for c in listed if c.name.startswith("od-spare-")]


def wait_for_spares(
    docker_client: Any, server: str, count: int = 1, timeout: float = 20, memory_mb: int | None = None
) -> list[Any]:
    """At least ``count`` spares of ``server`` (of runs of ``memory_mb``, when given: the session's stack
    may hold spares left by earlier tests' runs of other shapes, which a run of this one never uses)."""
    deadline = time.monotonic() + timeout
    while True:
        found = spares(docker_client, server)
        if memory_mb is not None:
            found = [s for s in found if s.attrs["HostConfig"]["Memory"] == memory_mb << 20]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no spare after {timeout} s"
        time.sleep(0.1)


def test_a_spare_has_the_limits_of_the_runs_it_is_made_for(
    client: Client, stack: RunningStack, docker_client: Any
) -> None:
    done = client.wait_done(client.submit(["true"], timeout="5", memory_mb="96", pids="40"))
    assert done["status"] == "terminated"

    spare = wait_for_spares(docker_client, stack.server, memory_mb=96)[0]
    assert spare.status == "running"
    host = spare.attrs["HostConfig"]
    assert host["PidsLimit"] == 40
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert spare.attrs["Config"]["User"] == "1000:1000"
    assert not any(e.startswith("GREETING=") for e in spare.attrs["Config"]["Env"])
    # Nothing but the prologue, waiting on its stdin.
    processes = [row[-1] for row in spare.top()["Processes"]]  # CMD is the last column
    assert len(processes) == 2, processes
    assert processes[0].startswith("/sbin/docker-init") and "read -r n m" in processes[1], processes


def test_a_run_in_a_spare_gets_its_own_command_environment_files_and_stdin(
    client: Client, stack: RunningStack, docker_client: Any
) -> None:
    shape = {"timeout": "10", "memory_mb": "112"}
    client.wait_done(client.submit(["true"], **shape))
    wait_for_spares(docker_client, stack.server, memory_mb=112)

    script = "import os, sys\nprint(os.environ['GREETING'], sys.stdin.read().upper(), open('data/in.txt').read())\n"
    sandbox_id = client.submit(
        ["python3 main.py", "echo \"$GREETING\" 'done'"],
        {"main.py": script, "data/in.txt": "payload"},
        env=json.dumps({"GREETING": "it's $HOME; `not run`"}),
        stdin="abc",
        **shape,
    )
    labels: dict[str, str] = {}
    deadline = time.monotonic() + 10
    while not labels and time.monotonic() < deadline:
        for container in docker_client.containers.list(filters={"name": f"od-{sandbox_id}"}, ignore_removed=True):
            labels = container.labels
        time.sleep(0.02)
    done = client.wait_done(sandbox_id)

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["stdout"] == "it's $HOME; `not run` ABC payload\nit's $HOME; `not run` done\n"
    assert labels.get(LABEL_POOL) == "1", "the run did not use a spare"


def test_each_run_gets_a_container_of_its_own(client: Client, stack: RunningStack) -> None:
    ids = [
        client.submit(["cat /proc/sys/kernel/random/boot_id; hostname; ls -a /sandbox /tmp | wc -l; touch /tmp/x"])
        for _ in range(4)
    ]
    done = [client.wait_done(sandbox_id) for sandbox_id in ids]
    assert all(d["status"] == "terminated" and d["return_code"] == 0 for d in done), done
    # /tmp is fresh for each: nobody sees the file the run before made.
    assert len({d["stdout"] for d in done}) == 1, [d["stdout"] for d in done]


def test_a_stopped_dispatcher_leaves_no_spare(tmp_path: Any, docker_client: Any) -> None:
    with running_stack(tmp_path, "pooltest") as running:
        done = running.client.wait_done(running.client.submit(["true"]))
        assert done["status"] == "terminated"
        wait_for_spares(docker_client, running.server)
        running.stack.stop("dispatcher-pooltest")
        assert spares(docker_client, running.server) == []
