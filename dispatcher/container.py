"""A sandbox's container, as configuration: one pure function of its shape, no Docker client.

``configure(shape, hardening)`` is the whole lockdown: no network (unless the
sandbox has it), a read-only root, a size-capped tmpfs as the working folder
(``/sandbox``) and another as ``/tmp``, a non-root user, no capabilities,
``no-new-privileges``, an init process, memory with swap equal to it (and no
swapping), CPU, pids and open-files limits, a private IPC namespace with a
small ``/dev/shm``, the first place in the kernel's OOM queue, and no log
driver (output is read live, nothing lands on the host's disk).

The runner and the pool create containers from it through ``docker_py()``, and
the bench's raw reference runs the same configuration through ``docker_py()``
and ``cli_flags()``, so the platform is always measured against exactly its
own container.  Nothing of a run (command, environment, files) is in it: a
run's everything arrives on the container's stdin (see ``attach``), so a
container can be made before its run is known (see ``pool``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

WORKDIR = "/sandbox"
LABEL_SANDBOX = "opendevelop.sandbox"
LABEL_SERVER = "opendevelop.server"
LABEL_POOL = "opendevelop.pool"
# stdin: "<tar bytes> <command bytes> <nonce>\n", the command, the tar, then the program's own stdin.
# `read` takes the header line byte by byte and `head -c` reads exactly what it is asked, so
# whatever follows is the program's own.  When the program ends and left a folder `out` (not a
# symlink), the prologue kills what the program left running (only as the container's first child,
# whose parent is the init: never on a host), waits for it to go, and writes the marker line and a
# tar of `out` on stdout: the artifacts, read by ``dispatcher.artifacts`` from the stream.
PROLOGUE = (
    'read -r n m k || exit 125; c=$(head -c "$m") || exit 125; '
    'if [ "$n" -gt 0 ]; then head -c "$n" | tar -x -m -f - -C ' + WORKDIR + " || exit 125; fi; "
    "cd " + WORKDIR + ' || exit 125; /bin/sh -c "$c"; r=$?; '
    'if [ -n "$k" ] && [ -d out ] && [ ! -L out ]; then '
    'if [ "$PPID" = 1 ]; then kill -9 -1 2>/dev/null; i=0; '
    "while [ $i -lt 200 ] && kill -0 -1 2>/dev/null; do i=$((i+1)); sleep 0.01; done; fi; "
    'printf \'\\036OD-ARTIFACTS %s %s\\n\' "$k" "$r"; tar -c -f - out 2>/dev/null; fi; exit $r'
)
_RUN_NAME = re.compile(r"^/?od-([0-9a-zA-Z]+)$")  # od-<sandbox id>; spares are od-spare-<hex>


@dataclass(frozen=True)
class Shape:
    """What a container's configuration fixes of a run: its image, its limits and its network."""

    docker_image: str
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int
    network: bool = False


# A sandbox with network gets this Docker network, never the default bridge: inter-container traffic
# off, and the host's rules (infra/hosts/egress.py, made by ``server-bootstrap --network``) drop its
# traffic to the host, link-local, private ranges and the platform's endpoints.
SANDBOX_NETWORK = "od-sandbox"
SANDBOX_BRIDGE = "od-sandbox0"
SANDBOX_SUBNET = "172.31.240.0/20"


@dataclass(frozen=True)
class Hardening:
    """What a server fixes for all its containers (``DispatcherSettings`` and the server's runtime)."""

    runtime: str = "runc"
    user: str = "1000:1000"
    tmp_mb: int = 64
    nofile: int = 256


@dataclass(frozen=True)
class ContainerConfig:
    """Everything a container is created with, engine-neutral: rendered by ``docker_py`` and ``cli_flags``."""

    image: str
    command: tuple[str, ...]
    user: str
    hostname: str
    environment: tuple[tuple[str, str], ...]
    network_mode: str
    read_only: bool
    tmpfs: tuple[tuple[str, str], ...]
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    init: bool
    memory_mb: int
    memswap_mb: int
    mem_swappiness: int
    cpus: float
    pids_limit: int
    ulimits: tuple[tuple[str, int], ...]  # (name, soft = hard)
    shm_mb: int
    ipc_mode: str
    oom_score_adj: int
    log_driver: str
    runtime: str


def host_pids(pids: int, runtime: str) -> int:
    """The engine's pids limit.

    Under runc it counts the program's processes.  Under gVisor it counts the
    sandbox kernel's host threads (about 70 idle, and up to ~18 per process under
    a fork bomb), and hitting it kills the whole sandbox, so there it is only a
    backstop and ``nproc`` (which gVisor enforces per sandbox) is the real limit.
    """
    return 256 + 32 * pids if runtime == "runsc" else pids


def configure(shape: Shape, hardening: Hardening = Hardening()) -> ContainerConfig:
    """The one configuration of a sandbox's container."""
    ulimits: tuple[tuple[str, int], ...] = (("nofile", hardening.nofile),)
    if hardening.runtime == "runsc":
        # Under runc nproc would count every container's uid-1000 processes together.
        ulimits += (("nproc", shape.pids),)
    return ContainerConfig(
        image=shape.docker_image,
        command=("/bin/sh", "-c", PROLOGUE),
        user=hardening.user,
        hostname="sandbox",
        environment=(("HOME", WORKDIR), ("LANG", "C.UTF-8")),  # the sandbox's own come with its command
        network_mode=SANDBOX_NETWORK if shape.network else "none",
        read_only=True,
        tmpfs=(
            (WORKDIR, f"rw,exec,nosuid,nodev,size={shape.disk_mb}m,mode=1777"),
            ("/tmp", f"rw,exec,nosuid,nodev,size={hardening.tmp_mb}m,mode=1777"),  # noqa: S108 - the container's own /tmp
        ),
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        init=True,
        memory_mb=shape.memory_mb,
        memswap_mb=shape.memory_mb,
        mem_swappiness=0,
        cpus=shape.cpus,
        pids_limit=host_pids(shape.pids, hardening.runtime),
        ulimits=ulimits,
        shm_mb=16,
        ipc_mode="private",
        oom_score_adj=1000,  # under host memory pressure, sandboxes die first
        log_driver="none",
        runtime=hardening.runtime,
    )


def docker_py(config: ContainerConfig, stdin: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(create_container kwargs, create_host_config kwargs)`` for docker-py's low-level API.

    ``stdin``: keep stdin open (docker-py sets StdinOnce with it: closing our
    side closes the program's); the bench's reference has nothing to send.
    """
    create = {
        "image": config.image,
        "command": list(config.command),
        "user": config.user,
        "hostname": config.hostname,
        "environment": dict(config.environment),
        "stdin_open": stdin,
        "tty": False,
    }
    host = {
        "network_mode": config.network_mode,
        "read_only": config.read_only,
        "tmpfs": dict(config.tmpfs),
        "cap_drop": list(config.cap_drop),
        "security_opt": list(config.security_opt),
        "init": config.init,
        "mem_limit": f"{config.memory_mb}m",
        "memswap_limit": f"{config.memswap_mb}m",
        "mem_swappiness": config.mem_swappiness,
        "nano_cpus": int(config.cpus * 1e9),
        "pids_limit": config.pids_limit,
        "ulimits": [{"name": name, "soft": value, "hard": value} for name, value in config.ulimits],
        "shm_size": f"{config.shm_mb}m",
        "ipc_mode": config.ipc_mode,
        "oom_score_adj": config.oom_score_adj,
        "log_config": {"type": config.log_driver},
        "runtime": config.runtime,
    }
    return create, host


def cli_flags(config: ContainerConfig, stdin: bool = False) -> list[str]:
    """The same container as ``docker run`` flags (the image and command excluded)."""
    flags = ["--user", config.user, "--hostname", config.hostname]
    for name, value in config.environment:
        flags += ["--env", f"{name}={value}"]
    if stdin:
        flags.append("--interactive")
    flags += ["--network", config.network_mode]
    if config.read_only:
        flags.append("--read-only")
    for path, options in config.tmpfs:
        flags += ["--tmpfs", f"{path}:{options}"]
    for cap in config.cap_drop:
        flags += ["--cap-drop", cap]
    for option in config.security_opt:
        flags += ["--security-opt", option]
    if config.init:
        flags.append("--init")
    flags += [
        "--memory",
        f"{config.memory_mb}m",
        "--memory-swap",
        f"{config.memswap_mb}m",
        "--memory-swappiness",
        str(config.mem_swappiness),
        "--cpus",
        f"{config.cpus:g}",
        "--pids-limit",
        str(config.pids_limit),
    ]
    for limit, count in config.ulimits:
        flags += ["--ulimit", f"{limit}={count}:{count}"]
    flags += [
        "--shm-size",
        f"{config.shm_mb}m",
        "--ipc",
        config.ipc_mode,
        "--oom-score-adj",
        str(config.oom_score_adj),
        "--log-driver",
        config.log_driver,
        "--runtime",
        config.runtime,
    ]
    return flags


def run_name(sandbox_id: str) -> str:
    """A run's container is named for its sandbox, so a restarted dispatcher can find what a dead one left."""
    return f"od-{sandbox_id}"


def sandbox_of(container: dict[str, Any]) -> str:
    """The sandbox a listed container ran (its label, or the name a spare took); "" for a spare."""
    label = (container.get("Labels") or {}).get(LABEL_SANDBOX, "")
    if label:
        return str(label)
    for name in container.get("Names") or []:
        match = _RUN_NAME.match(name)
        if match:
            return match.group(1)
    return ""
