"""What the dispatcher's threads share: the sandboxes in hand and the stop and engine flags."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Job:
    """A sandbox in this dispatcher's hands, from before its claim until its message is settled."""

    sandbox_id: str
    message_id: str
    receipt: str
    token: str = ""  # the run's fence, from the claim: every later write of the run is conditional on it
    cancelled: bool = False
    aborted: str = ""  # why the platform killed the container, when it did


@dataclass
class Flags:
    """The dispatcher's state as its threads see it."""

    stopping: threading.Event = field(default_factory=threading.Event)  # warm stop: take no new work
    cold: threading.Event = field(default_factory=threading.Event)  # cold stop: kill what runs, hand it back
    done: threading.Event = field(default_factory=threading.Event)  # every slot finished: the last beat may go
    engine_up: threading.Event = field(default_factory=threading.Event)  # cleared while the engine is away
    fenced: threading.Event = field(default_factory=threading.Event)  # the lease is lost: claim nothing
    broken: str = ""  # why the engine cannot make containers, while it cannot: take no work

    def __post_init__(self) -> None:
        self.engine_up.set()


class InHand:
    """The jobs this dispatcher holds, one per sandbox; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def hold(self, sandbox_id: str, message_id: str, receipt: str) -> tuple[Job, bool]:
        """``(job, True)`` for a new job; ``(the job already in hand, False)`` when there is one."""
        with self._lock:
            held = self._jobs.get(sandbox_id)
            if held is not None:
                return held, False
            job = self._jobs[sandbox_id] = Job(sandbox_id, message_id, receipt)
            return job, True

    def release(self, job: Job) -> None:
        """The job is no longer in hand (a later job of the same sandbox is left alone)."""
        with self._lock:
            if self._jobs.get(job.sandbox_id) is job:
                del self._jobs[job.sandbox_id]

    def get(self, sandbox_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(sandbox_id)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def abort_all(self, reason: str) -> list[Job]:
        """Mark every running job (not cancelled, not aborted yet) aborted for ``reason``; those jobs."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if not job.aborted and not job.cancelled]
            for job in jobs:
                job.aborted = reason
        return jobs

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
