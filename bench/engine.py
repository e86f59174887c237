"""The raw engine, measured the same way the platform is: the floor every figure is compared with.

The raw runs use ``REFERENCE``, the dispatcher's own container configuration
(``dispatcher.container.configure``: no network, read-only root, tmpfs,
non-root, no capabilities, no-new-privileges, init, limits, private IPC, OOM
score, no log driver, runtime), through the Docker SDK and as ``docker run``
flags derived from it, so the comparison is like for like.  Only the command
differs: the raw runs start the program directly, where the platform's
container reads its run from stdin.
"""

from __future__ import annotations

import statistics
import subprocess
import time

import docker

from dispatcher.container import Hardening, Shape, cli_flags, configure, docker_py

IMAGE = "opendevelop/base:latest"
HELLO = ["python", "-c", 'print("hello opendevelop!")']
# The documented example's limits (the API's defaults) on a runc server with the default settings.
REFERENCE = configure(Shape(IMAGE, memory_mb=256, cpus=1.0, pids=128, disk_mb=64), Hardening())
CLI_FLAGS = cli_flags(REFERENCE)


def sdk_run(client: docker.DockerClient, command: list[str] = HELLO) -> float:
    """create + attach + start + wait + remove, as `docker run --rm` does; returns seconds."""
    api = client.api
    create, host = docker_py(REFERENCE, stdin=False)
    started = time.perf_counter()
    cid = api.create_container(**{**create, "command": command}, host_config=api.create_host_config(**host))["Id"]
    try:
        sock = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1})
        api.start(cid)
        raw = getattr(sock, "_sock", sock)
        while raw.recv(65536):
            pass
        sock.close()
        api.wait(cid)
    finally:
        api.remove_container(cid, force=True)
    return time.perf_counter() - started


def cli_run(command: list[str] = HELLO) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", *CLI_FLAGS, IMAGE, *command], check=True, capture_output=True)
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {
        "n": len(samples),
        "p50": statistics.median(samples),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "min": ordered[0],
        "max": ordered[-1],
    }
