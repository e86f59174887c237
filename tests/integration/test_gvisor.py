"""A server whose runtime is ``runsc`` runs every sandbox under gVisor.

Its own stack (moto, ``chalice local``, a dispatcher) with one server
registered with ``--runtime runsc``, so every sandbox here lands on gVisor.
The documented example and part of the hostile suite run under it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import running_stack
from .helpers import Client, RunningStack
from .test_hostile import assert_still_healthy, run

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def gvisor(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[RunningStack]:
    runtimes = docker_client.info().get("Runtimes", {})
    assert "runsc" in runtimes, (
        f"the Docker engine has no runsc runtime ({sorted(runtimes)}): run `make host` (infra/local/host-setup.sh)"
    )
    name = f"gv{secrets.token_hex(3)}"
    with running_stack(tmp_path_factory.mktemp(name), name, runtime="runsc") as running:
        yield running


@pytest.fixture
def gclient(gvisor: RunningStack) -> Client:
    return gvisor.client


def test_the_documented_example_runs_under_gvisor(gclient: Client, gvisor: RunningStack, docker_client: Any) -> None:
    sandbox_id = gclient.submit(["python test.py"], {"test.py": 'print("hello opendevelop!")\n'})
    done = gclient.wait_done(sandbox_id, timeout=60)

    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["logs"] == "hello opendevelop!\n"
    assert done["server"] == gvisor.server


def test_the_kernel_the_program_sees_is_gvisors(gclient: Client) -> None:
    # gVisor's Sentry writes its own boot banner to the kernel log and reports itself in /proc/version.
    done = run(gclient, ["dmesg 2>/dev/null | head -3; cat /proc/version"])
    assert done["status"] == "terminated", done
    assert "gVisor" in done["stdout"] or "Starting gVisor" in done["stdout"], done["stdout"]


def test_a_fork_bomb_under_gvisor_is_held_by_the_process_limit(gclient: Client) -> None:
    # Light children (sleep), so it is the process limit that stops them, not the memory limit.
    bomb = "n=0; while [ $n -lt 1000 ]; do sleep 30 & n=$((n+1)); done; wait"
    done = run(gclient, [bomb], timeout="4", pids="64")

    assert done["status"] == "terminated", done
    assert "Cannot fork" in (done["stderr"] or ""), done  # dash gives up at the first refused fork
    assert done["duration_ms"] < 8_000, done
    assert_still_healthy(gclient)


def test_a_python_fork_bomb_under_gvisor_ends_at_a_limit(gclient: Client) -> None:
    bomb = "python3 -c 'import os\nwhile True:\n    try: os.fork()\n    except OSError: pass'"
    done = run(gclient, [bomb], timeout="3", pids="64")

    assert done["status"] == "terminated", done
    # Each Python child costs ~8 MB, so under gVisor the memory limit may come before the process limit.
    assert done["timed_out"] is True or done["oom_killed"] is True or done["return_code"] == 137, done
    assert_still_healthy(gclient)


def test_a_memory_bomb_under_gvisor_is_killed(gclient: Client) -> None:
    done = run(gclient, ["python3 -c 'a = []\nwhile True: a.append(bytearray(8 << 20))'"], timeout="20", memory_mb="64")
    assert done["status"] == "terminated", done
    assert done["return_code"] == 137, done
    assert done["timed_out"] is False
    assert_still_healthy(gclient)


def test_no_network_under_gvisor(gclient: Client, gvisor: RunningStack) -> None:
    script = (
        "import socket\n"
        f"for host, port in [('127.0.0.1', {gvisor.stack.api_port}), ('8.8.8.8', 53)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close(); print('REACHED', host)\n"
        "    except OSError as e:\n"
        "        print('blocked', host)\n"
    )
    done = run(gclient, ["python3 net.py"], {"net.py": script}, timeout="15")
    assert done["stdout"].count("blocked") == 2, done
    assert_still_healthy(gclient)


def test_sleeping_past_the_timeout_under_gvisor_is_killed(gclient: Client) -> None:
    done = run(gclient, ["trap '' TERM; sleep 60"], timeout="2")
    assert done["timed_out"] is True and done["duration_ms"] < 8_000, done
    assert_still_healthy(gclient)
