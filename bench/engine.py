"""The raw engine, measured the same way the platform is: the floor every figure is compared with.

``hardened_kwargs()`` is the same lockdown the dispatcher applies (no network,
read-only root, tmpfs, non-root, no capabilities, no-new-privileges, init,
limits, no log driver), so the comparison is like for like.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

import docker

IMAGE = "opendevelop/base:latest"
HELLO = ["python", "-c", 'print("hello opendevelop!")']


def hardened_kwargs(memory_mb: int = 256, pids: int = 128, disk_mb: int = 64) -> dict[str, Any]:
    return dict(
        network_mode="none",
        read_only=True,
        tmpfs={
            "/sandbox": f"rw,exec,nosuid,nodev,size={disk_mb}m,mode=1777",
            "/tmp": "rw,exec,nosuid,nodev,size=64m,mode=1777",
        },
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        init=True,
        mem_limit=f"{memory_mb}m",
        memswap_limit=f"{memory_mb}m",
        nano_cpus=int(1e9),
        pids_limit=pids,
        ulimits=[docker.types.Ulimit(name="nofile", soft=256, hard=256)],
        user="1000:1000",
        log_config=docker.types.LogConfig(type="none"),
    )


CLI_FLAGS = [
    "--network",
    "none",
    "--read-only",
    "--tmpfs",
    "/sandbox:rw,exec,nosuid,nodev,size=64m,mode=1777",
    "--tmpfs",
    "/tmp:rw,exec,nosuid,nodev,size=64m,mode=1777",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--init",
    "--memory",
    "256m",
    "--memory-swap",
    "256m",
    "--cpus",
    "1",
    "--pids-limit",
    "128",
    "--ulimit",
    "nofile=256:256",
    "--user",
    "1000:1000",
    "--log-driver",
    "none",
]


def sdk_run(client: docker.DockerClient, command: list[str] = HELLO) -> float:
    """create + attach + start + wait + remove, as `docker run --rm` does; returns seconds."""
    started = time.perf_counter()
    container = client.containers.create(IMAGE, command, **hardened_kwargs())
    try:
        sock = client.api.attach_socket(container.id, params={"stdout": 1, "stderr": 1, "stream": 1})
        container.start()
        raw = getattr(sock, "_sock", sock)
        while raw.recv(65536):
            pass
        sock.close()
        container.wait()
    finally:
        container.remove(force=True)
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
