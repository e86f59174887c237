"""Spare containers: made and started before their run is known, each used by one run only.

Creating and starting a container is most of what a run costs (about 0.3 s
here, for a program that itself takes a few milliseconds), and none of it
depends on the run: a container's configuration holds only its image and its
limits, and everything else (command, environment, files, stdin) arrives on
its stdin (see ``runner``).  So the dispatcher keeps a few containers of the
shapes it has just run ready and started, each waiting in the prologue's
``read`` on its empty stdin, and a run takes one instead of making one.

A spare is exactly as fresh as a container made for the run: nothing but the
prologue has run in it, it is handed to one run and removed after it, and one
idle for longer than ``IDLE_MAX_S`` (or whose shape is no longer wanted) is
removed and replaced, so a re-tagged image is picked up within that time.
Sandboxes with network access are never pooled.  The pool keeps ``size``
spares of each of the ``SHAPES`` most recently run shapes; ``size`` 0 turns it
off (``OPENDEVELOP_POOL``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalicelib.logs import log

if TYPE_CHECKING:
    from dispatcher.runner import Runner, RunSpec

logger = logging.getLogger("opendevelop.dispatcher")

IDLE_MAX_S = 120.0
SHAPES = 2


@dataclass(frozen=True)
class Shape:
    """What a container's configuration fixes."""

    docker_image: str
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int
    network: bool = False

    @classmethod
    def of(cls, spec: RunSpec) -> Shape:
        return cls(spec.docker_image, spec.memory_mb, spec.cpus, spec.pids, spec.disk_mb, spec.network)


def default_size(slots: int) -> int:
    """Spares kept per shape when ``OPENDEVELOP_POOL`` is not set: one per slot, at most 4."""
    return min(slots, 4)


class Pool:
    def __init__(self, runner: Runner, size: int) -> None:
        self.runner = runner
        self.size = size
        self._lock = threading.Lock()
        self._ready: dict[Shape, deque[tuple[str, float]]] = {}
        self._wanted: list[Shape] = []  # most recent first
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._paused = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.size > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pool", daemon=True)
            self._thread.start()

    def take(self, spec: RunSpec) -> str | None:
        """A started spare of the spec's shape, or None; either way the shape is wanted from now on."""
        shape = Shape.of(spec)
        if shape.network or self.size <= 0 or self._thread is None:
            return None
        with self._lock:
            if shape in self._wanted:
                self._wanted.remove(shape)
            self._wanted.insert(0, shape)
            del self._wanted[SHAPES:]
            ready = self._ready.get(shape)
            cid = ready.popleft()[0] if ready and not self._paused else None
        self._wake.set()
        return cid

    def pause(self) -> None:
        """The engine went away: its spares are gone or suspect; make none until ``resume``."""
        with self._lock:
            self._paused = True
            spares = self._drop_all()
        for cid in spares:
            self.runner.remove(cid)

    def resume(self) -> None:
        with self._lock:
            self._paused = False
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            spares = self._drop_all()
        for cid in spares:
            self.runner.remove(cid)

    def spares(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._ready.values())

    def _drop_all(self) -> list[str]:
        spares = [cid for ready in self._ready.values() for cid, _ in ready]
        self._ready.clear()
        return spares

    def _loop(self) -> None:
        failures = 0
        while not self._closed.is_set():
            self._wake.clear()
            shape, stale = self._plan()
            for cid in stale:
                self.runner.remove(cid)
            if shape is None:
                self._wake.wait(5)
                continue
            try:
                cid = self.runner.start_spare(shape)
            except Exception as e:  # noqa: BLE001 - runs make their own containers meanwhile
                failures += 1
                log(logger, "pool.failed", logging.WARNING, server=self.runner.server, error=str(e)[:300])
                self._closed.wait(min(30.0, 0.5 * 2**failures))
                continue
            failures = 0
            with self._lock:
                keep = not self._closed.is_set() and not self._paused and shape in self._wanted
                if keep:
                    self._ready.setdefault(shape, deque()).append((cid, time.monotonic()))
            if not keep:
                self.runner.remove(cid)

    def _plan(self) -> tuple[Shape | None, list[str]]:
        """The shape that needs a spare next (if any), and the spares to remove."""
        now = time.monotonic()
        stale: list[str] = []
        with self._lock:
            for shape in list(self._ready):
                ready = self._ready[shape]
                if shape not in self._wanted:
                    stale += [cid for cid, _ in ready]
                    del self._ready[shape]
                    continue
                while ready and now - ready[0][1] > IDLE_MAX_S:
                    stale.append(ready.popleft()[0])
            if self._paused or self._closed.is_set():
                return None, stale
            for shape in self._wanted:
                if len(self._ready.get(shape, ())) < self.size:
                    return shape, stale
        return None, stale
