"""Spare containers: made and started before their run is known, each used by one run only.

Creating and starting a container is most of what a run costs (about 0.3 s
here, for a program that itself takes a few milliseconds), and none of it
depends on the run: a container's configuration holds only its image and its
limits (see ``container``), and everything else (command, environment, files,
stdin) arrives on its stdin (see ``attach``).  So the dispatcher keeps a few
containers of the shapes it has just run ready and started, each waiting in
the prologue's ``read`` on its empty stdin, and a run takes one instead of
making one.

A spare is exactly as fresh as a container made for the run: nothing but the
prologue has run in it, it is handed to one run and removed after it, and one
idle for longer than ``IDLE_MAX_S`` (or whose shape is no longer wanted) is
removed and replaced, so a re-tagged image is picked up within that time.
Sandboxes with network access are never pooled.  The pool keeps ``size``
spares of each of the ``SHAPES`` most recently run shapes; ``size`` 0 turns it
off (``OPENDEVELOP_POOL``).

The pool knows no engine: it is given two callables, one that makes a started
spare of a shape and one that removes a container (the runner's).  Its work is
``tend()``, one step at a time, which its thread calls in a loop and tests call
directly with their own clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from chalicelib.logs import log
from dispatcher.container import Shape

logger = logging.getLogger("opendevelop.dispatcher")

IDLE_MAX_S = 120.0
SHAPES = 2
IDLE_WAIT_S = 5.0  # nothing to do: look again this often (a take wakes it sooner)
MAX_BACKOFF_S = 30.0


def default_size(slots: int) -> int:
    """Spares kept per shape when ``OPENDEVELOP_POOL`` is not set: one per slot, at most 4."""
    return min(slots, 4)


class Pool:
    def __init__(
        self,
        make: Callable[[Shape], str],
        remove: Callable[[str], None],
        size: int,
        server: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.make = make
        self.remove = remove
        self.size = size
        self.server = server
        self.clock = clock
        self._lock = threading.Lock()
        self._ready: dict[Shape, deque[tuple[str, float]]] = {}
        self._wanted: list[Shape] = []  # most recent first
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._open = False
        self._paused = False
        self._failures = 0
        self.on_take: Callable[[bool], None] | None = None  # counts hits and misses (``dispatcher.metrics``)
        self._not_before = 0.0  # after a failure, no spare is made before this
        self._thread: threading.Thread | None = None

    def start(self, background: bool = True) -> None:
        """Open the pool; ``background`` False leaves ``tend()`` to the caller (tests)."""
        if self.size <= 0 or self._open:
            return
        self._open = True
        if background:
            self._thread = threading.Thread(target=self._loop, name="pool", daemon=True)
            self._thread.start()

    def take(self, shape: Shape) -> str | None:
        """A started spare of ``shape``, or None; either way the shape is wanted from now on."""
        if shape.network or self.size <= 0 or not self._open:
            return None
        with self._lock:
            if shape in self._wanted:
                self._wanted.remove(shape)
            self._wanted.insert(0, shape)
            del self._wanted[SHAPES:]
            ready = self._ready.get(shape)
            cid = ready.popleft()[0] if ready and not self._paused else None
        self._wake.set()
        if self.on_take is not None:
            self.on_take(cid is not None)
        return cid

    def pause(self) -> None:
        """The engine went away: its spares are gone or suspect; make none until ``resume``."""
        with self._lock:
            self._paused = True
            spares = self._drop_all()
        for cid in spares:
            self.remove(cid)

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
            self.remove(cid)

    def spares(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._ready.values())

    def _drop_all(self) -> list[str]:
        spares = [cid for ready in self._ready.values() for cid, _ in ready]
        self._ready.clear()
        return spares

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.clear()
            delay = self.tend()
            if delay > 0:
                self._wake.wait(delay)

    def tend(self) -> float:
        """One step: remove stale spares, make one spare where one is missing; seconds until the next step."""
        shape, stale = self._plan()
        for cid in stale:
            self.remove(cid)
        if shape is None:
            return IDLE_WAIT_S
        wait = self._not_before - self.clock()
        if wait > 0:
            return wait  # backing off after a failure (a take wakes the loop; this sends it back to sleep)
        try:
            cid = self.make(shape)
        except Exception as e:  # noqa: BLE001 - runs make their own containers meanwhile
            self._failures += 1
            backoff = min(MAX_BACKOFF_S, 0.5 * 2**self._failures)
            self._not_before = self.clock() + backoff
            log(logger, "pool.failed", logging.WARNING, server=self.server, error=str(e)[:300])
            return backoff
        self._failures = 0
        with self._lock:
            keep = not self._closed.is_set() and not self._paused and shape in self._wanted
            if keep:
                self._ready.setdefault(shape, deque()).append((cid, self.clock()))
        if not keep:
            self.remove(cid)
        return 0.0

    def _plan(self) -> tuple[Shape | None, list[str]]:
        """The shape that needs a spare next (if any), and the spares to remove."""
        now = self.clock()
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
