"""What the dispatcher needs of a container engine, and the types that cross that line.

The worker sees the engine only through ``Engine``: it never learns Docker's
API, its exit codes or its transport errors.  ``dispatcher.runner.Runner`` is
the Docker implementation; the functional tests implement it in a few lines.
Errors cross as ``PlatformError`` and its kinds, raised ``from`` the engine's
own, so the dispatcher can tell the engine's faults from a run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dispatcher.container import Shape


class PlatformError(Exception):
    """The platform (not the user's program) failed; ``transient`` says whether a retry may help."""

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class NotStarted(PlatformError):
    """The run's gate said no just before the program would have started (cancelled, handed over).

    Nothing of the user's program ran; the container, if made, is removed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, transient=False)


class EngineUnavailable(PlatformError):
    """The engine could not be reached: not the sandbox's fault, and no work should be taken until it answers."""


class EngineBroken(PlatformError):
    """The engine answers but cannot make containers (disk full, image store broken): not the sandbox's fault;
    the server reports itself unhealthy and takes no work until ``Engine.probe`` succeeds."""


@dataclass(frozen=True)
class RunSpec:
    sandbox_id: str
    docker_image: str
    cmd: list[str]
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int
    output_bytes: int
    files_bytes: int = 0
    artifacts_bytes: int = 1024 * 1024  # content kept of the files the program leaves in out/
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    # Where the output goes as it comes (files stdout, stderr, logs; see ``attach.Capture``); None: kept in memory.
    output_dir: Path | None = None
    token: str = ""  # the run's fence: the watchdog records a deadline kill with it
    # Asked once the container exists, just before the program starts: "" to start it, or why not
    # (the sandbox was cancelled or handed over since its claim).  ``NotStarted`` follows a no.
    gate: Callable[[], str] | None = field(default=None, compare=False, repr=False)

    @property
    def shape(self) -> Shape:
        return Shape(self.docker_image, self.memory_mb, self.cpus, self.pids, self.disk_mb, self.network)


@dataclass
class RunResult:
    return_code: int
    stdout: bytes
    stderr: bytes
    logs: bytes
    timed_out: bool
    oom_killed: bool
    output_truncated: bool
    duration_s: float
    container_id: str = ""  # kept until ``Engine.release``: removing it is not on the client's path
    # Who stopped the container from outside the dispatcher (the engine shutting down, an
    # operator); "" when nobody did.  Such an exit is the platform's doing, never a result.
    stopped_by: str = ""
    # When set, the output is the files ``stdout``, ``stderr`` and ``logs`` of this folder (the three
    # bytes fields are then empty): the dispatcher never holds a whole output in memory.
    output_dir: Path | None = None
    # The files the program left in out/, kept in ``output_dir`` (see ``dispatcher.artifacts``).
    artifacts_count: int = 0
    artifacts_bytes: int = 0
    artifacts_truncated: bool = False
    artifacts_skipped: int = 0


@dataclass(frozen=True)
class Leftover:
    """A container of this server the engine still has: left by a dead dispatcher, an engine restart, or a run."""

    container_id: str
    sandbox_id: str  # "" for a spare nobody took
    running: bool = False  # still running (else exited, or never started)
    exit_code: int | None = None  # when it exited


class Engine(Protocol):
    """One container engine, as the dispatcher drives it.  Thread-safe: one ``run`` per slot."""

    def start(self) -> None:
        """Begin background work (spare containers)."""

    def close(self) -> None:
        """End background work and remove what it made."""

    def pause(self) -> None:
        """The engine went away: drop what was made ahead, make nothing until ``resume``."""

    def resume(self) -> None: ...

    def healthy(self) -> bool:
        """Whether the engine answers now."""

    def probe(self) -> str:
        """Whether the engine can make a container now: "" when it can, else why not."""

    def images(self) -> list[str]:
        """The image references the engine holds."""

    def run(self, spec: RunSpec, payload: bytes) -> RunResult:
        """Run to the end or the timeout; raises ``PlatformError`` (or a kind of it) when the platform failed.

        The container is kept for ``release(result.container_id)``; on any failure it is removed here.
        """

    def release(self, container_id: str) -> None:
        """Remove a container; never raises."""

    def kill(self, sandbox_id: str) -> None:
        """Kill the sandbox's container, if it has one; its ``run`` then returns.

        Sticky: a ``run`` of this sandbox whose program has not started yet never starts it.
        """

    def leftovers(self) -> list[Leftover]:
        """Containers of this server other than spares in use here."""
