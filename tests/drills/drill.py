"""One drill: the sandboxes it made, what became of them, and the checks every drill ends with.

A drill makes its sandboxes with ``create`` (saying which final states it
expects of each), marks the moment of its fault with ``fault()``, waits with
``wait_final`` and ends with ``finish()``, which checks, for every sandbox:

* it reached a final state, exactly one (a final state never changes after);
* that state is one the drill expects: nothing becomes ``error`` because of an
  outage;
* from the engines' events: never two runs at once, no start after a run that
  completed, no container alive more than 5 s past its deadline;
* a ``terminated`` result holds exactly one start token (one run's output),
  and, unless it timed out, the whole run: return code 0 and ``done``;

then records a row of the results table (outcome, starts, seconds to final)
and fails with every broken promise found, not just the first.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .stack import FINAL, DrillStack

RESULTS: list[dict[str, Any]] = []  # one row per drill, printed at the end of the session (conftest)


def program(seconds: float, extra: str = "") -> list[str]:
    """Prints a token unique to this start, runs ``seconds``, prints ``done``."""
    lines = ['echo "start $(cat /proc/sys/kernel/random/uuid)"', f"sleep {seconds:g}"]
    if extra:
        lines.append(extra)
    return [*lines, "echo done"]


@dataclass
class StateLog:
    """The statuses of a drill's sandboxes as the database holds them, polled every 0.25 s in a thread."""

    ids: list[str] = field(default_factory=list)
    history: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    errors: int = 0
    interval_s: float = 0.25

    def add(self, sandbox_id: str) -> None:
        with self._lock:
            self.ids.append(sandbox_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="states", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        from chalicelib.models import Sandbox

        with self._lock:
            ids = list(self.ids)
        try:
            rows = list(Sandbox.batch_get(ids, consistent_read=True))
        except Exception:
            self.errors += 1
            return
        now = time.monotonic()
        with self._lock:
            for row in rows:
                self.rows[row.sandbox_id] = row
                seen = self.history.setdefault(row.sandbox_id, [])
                if not seen or seen[-1][1] != row.status:
                    seen.append((now, row.status))

    def status(self, sandbox_id: str) -> str:
        with self._lock:
            seen = self.history.get(sandbox_id)
            return seen[-1][1] if seen else "?"

    def final_at(self, sandbox_id: str) -> float | None:
        with self._lock:
            for at, status in self.history.get(sandbox_id, []):
                if status in FINAL:
                    return at
        return None

    def finals(self, sandbox_id: str) -> list[str]:
        """The final states it has been in, in order (more than one: a final state changed)."""
        with self._lock:
            seen = [s for _, s in self.history.get(sandbox_id, [])]
        first = next((i for i, s in enumerate(seen) if s in FINAL), None)
        return [] if first is None else seen[first:]

    def stop(self) -> None:
        self._stop.set()


class Drill:
    def __init__(self, stack: DrillStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.ids: list[str] = []
        self.timeouts: dict[str, float] = {}
        self.expected: dict[str, tuple[str, ...]] = {}
        self.findings: list[str] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.fault_at: float | None = None
        self.states = StateLog()
        self.recorded = False

    # Making work

    def create(
        self,
        cmd: list[str],
        timeout_s: float = 30,
        on: str | None = None,
        expect: tuple[str, ...] = ("terminated",),
        **fields: Any,
    ) -> str:
        sandbox_id = self.stack.create(cmd, timeout_s, on=on, **fields)
        self.track(sandbox_id, timeout_s, expect)
        return sandbox_id

    def track(self, sandbox_id: str, timeout_s: float, expect: tuple[str, ...] = ("terminated",)) -> None:
        self.ids.append(sandbox_id)
        self.timeouts[sandbox_id] = timeout_s
        self.expected[sandbox_id] = expect
        self.states.add(sandbox_id)

    def fault(self) -> None:
        """Now: the moment the drill's fault began (seconds to final count from here)."""
        self.fault_at = time.monotonic()

    def find(self, finding: str) -> None:
        self.findings.append(finding)

    def note(self, note: str) -> None:
        self.notes.append(note)

    # Waiting

    def wait_status(self, sandbox_id: str, statuses: tuple[str, ...], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.states.status(sandbox_id) not in statuses:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_final(self, timeout_s: float, ids: list[str] | None = None) -> bool:
        """Whether every sandbox (of ``ids``) is final within ``timeout_s``."""
        ids = self.ids if ids is None else ids
        deadline = time.monotonic() + timeout_s
        while any(self.states.status(i) not in FINAL for i in ids):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    # The end

    def finish(self, settle_s: float = 1.0) -> None:
        """The checks every drill ends with (see the module's docstring); records the results row."""
        time.sleep(settle_s)  # a late write or a late start would show now
        self.states.poll()
        self.states.stop()
        since = self.fault_at if self.fault_at is not None else self.started
        violations = self.stack.events.violations(self.timeouts)
        self.findings += violations
        finals: Counter[str] = Counter()
        seconds = 0.0
        unfinished = False
        for sandbox_id in self.ids:
            status = self.states.status(sandbox_id)
            row = self.states.rows.get(sandbox_id)
            finals[status] += 1
            at = self.states.final_at(sandbox_id)
            if at is None:
                done = [r for r in self.stack.events.runs(sandbox_id) if r.ended is not None and r.exit_code == 0]
                lost = f" (a run of it exited 0 on {done[0].engine}: that result was not kept)" if done else ""
                self.find(
                    f"{sandbox_id}: not final, still {status}, {time.monotonic() - since:.0f} s after the fault{lost}"
                )
                seconds = max(seconds, time.monotonic() - since)
                unfinished = True
                continue
            seconds = max(seconds, at - since)
            if len(set(self.states.finals(sandbox_id))) > 1:
                self.find(f"{sandbox_id}: its final state changed: {' -> '.join(self.states.finals(sandbox_id))}")
            if status not in self.expected[sandbox_id]:
                why = f" ({row.error})" if row is not None and row.error else ""
                self.find(f"{sandbox_id}: ended {status}{why}, expected {'/'.join(self.expected[sandbox_id])}")
            whole_in_row = not row.output_key and not row.output_objects and not row.inline_truncated if row else False
            if status == "terminated" and row is not None and whole_in_row:
                stdout = row.stdout or ""
                tokens = stdout.count("start ")
                if tokens != 1:
                    self.find(f"{sandbox_id}: its result holds {tokens} start tokens")
                elif not row.timed_out and (row.return_code != 0 or not stdout.rstrip().endswith("done")):
                    self.find(f"{sandbox_id}: its result is not a whole run (return code {row.return_code})")
        starts = [self.stack.events.starts(i) for i in self.ids]
        self.record(finals, starts, seconds, unfinished=unfinished)
        assert not self.findings, f"{self.name}: {len(self.findings)} broken promise(s):\n  " + "\n  ".join(
            self.findings
        )

    def record(
        self, finals: Counter[str], starts: list[int], seconds: float, error: str = "", unfinished: bool = False
    ) -> None:
        if self.recorded:
            return
        self.recorded = True
        outcome = "pass" if not self.findings and not error else "FAIL"
        RESULTS.append(
            {
                "drill": self.name,
                "outcome": outcome,
                "finals": dict(finals),
                "starts": starts,
                "seconds": round(seconds, 1),
                "unfinished": unfinished or bool(error),  # seconds is then how long the drill waited
                "findings": self.findings + ([error] if error else []),
                "notes": self.notes,
            }
        )

    def cleanup(self) -> None:
        """Leave nothing of this drill running: unfinished sandboxes cancelled, their containers removed."""
        from chalicelib.models import Sandbox, utcnow

        self.states.stop()
        for sandbox_id in self.ids:
            with contextlib.suppress(Exception):  # final already, or gone
                Sandbox(sandbox_id).update(
                    actions=[Sandbox.status.set("cancelled"), Sandbox.finished_at.set(utcnow())],
                    condition=Sandbox.status.is_in("queued", "running"),
                )
        import docker

        for url in self.stack.engines.values():
            with contextlib.suppress(Exception):  # an engine gone with its containers
                client = docker.APIClient(base_url=url, timeout=20)
                for sandbox_id in self.ids:
                    for container in client.containers(all=True, filters={"name": f"od-{sandbox_id}"}):
                        client.remove_container(container["Id"], force=True)
