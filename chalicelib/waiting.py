"""``GET /api/sandboxes/{id}?wait=N``: many waiting requests, one reader.

A waiting request must learn that its sandbox has settled soon after it does,
and the only way to learn it is to read the row.  One read per waiting request
every few milliseconds would, with a few dozen clients waiting, cost the table
(and on one machine, the Docker engine sharing its CPU) more than the runs
themselves.  So every request waiting in this process registers its sandbox
with one reader thread, which reads all of them in a single ``BatchGetItem``
per tick and wakes each request whose sandbox has left ``queued``/``running``.

The tick is 25 ms while a watched sandbox is running and has run for less than
a second (most runs end within it), and longer otherwise, up to half a second
for sandboxes that are still queued: they cannot end before a container has
started.  It never comes faster than twice the last read's time, so readers
back off when the table is slow instead of adding to its load.

Under Lambda each invocation holds one request, so the reader reads one row a
tick, as a poll would; a long-running API process (``chalice local``, a
container) shares one reader among all its waiting requests.  The process's
reader is its ``Context``'s (``chalicelib.context``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pynamodb.exceptions import PynamoDBException

from chalicelib.logs import describe, log
from chalicelib.models import FINAL_STATES, Sandbox

logger = logging.getLogger("opendevelop.api")

BATCH = 100  # BatchGetItem's limit
FAST_TICK_S = 0.025
FAST_FOR_S = 1.0
MAX_TICK_S = 0.5


@dataclass
class _Watch:
    sandbox: Sandbox
    since: float = field(default_factory=time.monotonic)
    running_since: float | None = None
    settled: threading.Event = field(default_factory=threading.Event)


class Reader:
    """The one reader of a process's waiting requests; its thread starts with the first wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, list[_Watch]] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    def close(self) -> None:
        """Let the thread end once nobody waits (a replaced context's reader must not idle on forever)."""
        self._closed = True
        self._wake.set()

    def wait(self, sandbox: Sandbox, wait_s: float) -> Sandbox:
        """``sandbox`` (already read, and the caller's), once settled or after ``wait_s``: the newest row seen."""
        return self.wait_all([sandbox], wait_s)[0]

    def wait_all(self, sandboxes: list[Sandbox], wait_s: float) -> list[Sandbox]:
        """``sandboxes``, once all have settled or after ``wait_s``: the newest rows seen, in order."""
        watches = [_Watch(sb) for sb in sandboxes if sb.status not in FINAL_STATES]
        if not watches or wait_s <= 0:
            return sandboxes
        with self._lock:
            for watch in watches:
                self._watches.setdefault(watch.sandbox.sandbox_id, []).append(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="wait-reader", daemon=True)
                self._thread.start()
        self._wake.set()
        deadline = time.monotonic() + wait_s
        try:
            for watch in watches:
                watch.settled.wait(max(0.0, deadline - time.monotonic()))
        finally:
            with self._lock:
                for watch in watches:
                    mine = self._watches.get(watch.sandbox.sandbox_id, [])
                    if watch in mine:
                        mine.remove(watch)
                    if not mine:
                        self._watches.pop(watch.sandbox.sandbox_id, None)
        newest = {watch.sandbox.sandbox_id: watch.sandbox for watch in watches}
        return [newest.get(sb.sandbox_id, sb) for sb in sandboxes]

    def _loop(self) -> None:
        tick = FAST_TICK_S
        while True:
            with self._lock:
                ids = list(self._watches)
            if not ids:
                # Nobody waits: sleep until somebody does (a new request sets the event).
                self._wake.clear()
                with self._lock:
                    if self._watches:
                        continue
                    if self._closed:
                        self._thread = None
                        return
                self._wake.wait(5)
                continue
            started = time.monotonic()
            try:
                rows = self._read(ids)
            except PynamoDBException as e:  # the waiters get their last row at their deadline
                log(logger, "wait.read_failed", logging.WARNING, sandboxes=len(ids), error=describe(e))
                rows = {}
            read_s = time.monotonic() - started
            tick = self._publish(rows, started)
            time.sleep(max(tick, 2 * read_s))

    def _read(self, ids: list[str]) -> dict[str, Sandbox]:
        rows: dict[str, Sandbox] = {}
        for i in range(0, len(ids), BATCH):
            for row in Sandbox.batch_get(ids[i : i + BATCH], consistent_read=True):
                rows[row.sandbox_id] = row
        return rows

    def _publish(self, rows: dict[str, Sandbox], now: float) -> float:
        """Hand the rows to their waiters; return how long to sleep before the next read."""
        tick = MAX_TICK_S
        with self._lock:
            for sandbox_id, watches in self._watches.items():
                row = rows.get(sandbox_id)
                for watch in watches:
                    if row is not None:
                        watch.sandbox = row
                    status = watch.sandbox.status
                    if status in FINAL_STATES:
                        watch.settled.set()
                        continue
                    if status == "running" and watch.running_since is None:
                        watch.running_since = now
                    if watch.running_since is not None:
                        running_for = now - watch.running_since
                        tick = min(tick, FAST_TICK_S if running_for < FAST_FOR_S else 0.05 + running_for / 40)
                    else:
                        tick = min(tick, 0.05 + (now - watch.since) / 10)  # queued: 50 ms, slower with time
        return tick
