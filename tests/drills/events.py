"""Every start of every sandbox's program, as the Docker engines saw it (``docker events``, in a thread).

A run starts when a container named ``od-<sandbox id>`` starts, or when a
spare of the pool (``od-spare-*``, already started and waiting on its stdin)
is renamed ``od-<sandbox id>``; it ends at that container's ``die`` (or
``destroy``).  The engine stamps each event, so runs on two engines of one
machine compare on one clock.  An engine's stream that breaks (the engine
restarted) is opened again from the last event seen, so nothing is missed.

``violations()`` checks the promise "one run, one result" on what was seen:
never two runs of a sandbox at once, never a start after an earlier run
completed (exited by itself, or was killed at its deadline; not the prologue's 125: its
input never came whole, the program never ran), and no container
alive more than ``GRACE_S`` past its deadline.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import docker

RUN_NAME = re.compile(r"^/?od-([0-9a-zA-Z]+)$")  # od-<sandbox id>; spares are od-spare-<hex>
GRACE_S = 5.0
KILLED = (137, 143)
# The prologue's own exit (dispatcher/container.py): its input -- header, command, files -- never came
# whole (the dispatcher died while writing it), so the program never ran.  The programs of the drills
# and tests never exit 125 themselves.
NOT_STARTED = 125


@dataclass
class Run:
    sandbox_id: str
    engine: str
    container: str
    started: float  # epoch seconds, the engine's stamp
    ended: float | None = None
    exit_code: int | None = None

    def lived(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started

    def completed(self, timeout_s: float) -> bool:
        """Ended by itself, or reached its deadline: its result is the sandbox's, and nothing may run after it."""
        if self.ended is None or self.exit_code == NOT_STARTED:
            return False
        return self.exit_code not in KILLED or self.lived(self.ended) >= timeout_s - 0.25


class EventWatcher:
    """Watches one or more engines; ``close()`` stops every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, list[Run]] = {}
        self._by_container: dict[str, Run] = {}
        self._kills: dict[str, list[tuple[float, str]]] = {}  # sandbox id -> (time, signal)
        self._streams: list[Any] = []
        self._stop = threading.Event()
        self._stops: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    def watch(self, name: str, url: str) -> None:
        """Start following engine ``name`` at ``url`` from now on."""
        ready = threading.Event()
        self._stops[name] = threading.Event()
        thread = threading.Thread(target=self._follow, args=(name, url, ready), name=f"events-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        if not ready.wait(30):
            raise RuntimeError(f"docker events of engine {name} ({url}) did not open within 30 s")

    def unwatch(self, name: str) -> None:
        """Stop following engine ``name`` (before it goes away); what was seen stays."""
        stop = self._stops.get(name)
        if stop is not None:
            stop.set()

    def _follow(self, name: str, url: str, ready: threading.Event) -> None:
        since: float | None = None
        stop = self._stops[name]
        while not self._stop.is_set() and not stop.is_set():
            try:
                api = docker.APIClient(base_url=url, timeout=None)
                api.ping()
                stream = api.events(
                    since=since if since is not None else time.time(),
                    decode=True,
                    filters={"type": "container"},
                )
                with self._lock:
                    self._streams.append(stream)
                ready.set()
                for event in stream:
                    since = event.get("timeNano", 0) / 1e9
                    self._seen(name, event)
                    if self._stop.is_set() or stop.is_set():
                        return
            except Exception:
                if self._stop.wait(0.5) or stop.is_set():
                    return

    def _seen(self, engine: str, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status") or ""
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        cid = (event.get("Actor") or {}).get("ID") or event.get("id") or ""
        at = event.get("timeNano", 0) / 1e9
        match = RUN_NAME.match(attrs.get("name", ""))
        with self._lock:
            if action in ("start", "rename") and match:
                if action == "start" or not RUN_NAME.match(attrs.get("oldName", "")):
                    run = Run(match.group(1), engine, cid, at)
                    self._runs.setdefault(run.sandbox_id, []).append(run)
                    self._by_container[cid] = run
            elif action == "kill" and match:
                self._kills.setdefault(match.group(1), []).append((at, attrs.get("signal", "")))
            elif action in ("die", "destroy"):
                run = self._by_container.get(cid)
                if run is not None and run.ended is None:
                    run.ended = at
                    code = attrs.get("exitCode")
                    run.exit_code = int(code) if code not in (None, "") else None

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.close()

    # What was seen

    def runs(self, sandbox_id: str) -> list[Run]:
        with self._lock:
            return sorted(self._runs.get(sandbox_id, []), key=lambda r: r.started)

    def starts(self, sandbox_id: str) -> int:
        return len(self.runs(sandbox_id))

    def kills(self, sandbox_id: str) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._kills.get(sandbox_id, []))

    def running(self, sandbox_id: str) -> list[Run]:
        return [r for r in self.runs(sandbox_id) if r.ended is None]

    def wait_running(self, sandbox_id: str, timeout_s: float, engine: str | None = None) -> Run:
        """The sandbox's run once a container of it has started (on ``engine``, if given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for run in self.running(sandbox_id):
                if engine is None or run.engine == engine:
                    return run
            if time.monotonic() > deadline:
                raise AssertionError(f"no run of {sandbox_id} started within {timeout_s:g} s: {self.runs(sandbox_id)}")
            time.sleep(0.05)

    def wait_ended(self, sandbox_id: str, timeout_s: float) -> bool:
        """Whether every run of the sandbox has ended within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.running(sandbox_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def violations(self, timeouts: dict[str, float], now: float | None = None) -> list[str]:
        """Broken promises among the runs of these sandboxes (id -> its timeout in seconds)."""
        now = time.time() if now is None else now
        found = []
        for sandbox_id, timeout_s in timeouts.items():
            runs = self.runs(sandbox_id)
            for i, run in enumerate(runs):
                if run.lived(now) > timeout_s + GRACE_S:
                    alive = "still alive" if run.ended is None else f"ended {run.lived(now):.1f} s after its start"
                    found.append(
                        f"{sandbox_id}: a container on {run.engine} outlived its {timeout_s:g} s deadline by more "
                        f"than {GRACE_S:g} s ({alive})"
                    )
                for later in runs[i + 1 :]:
                    if run.ended is None or later.started < run.ended:
                        found.append(
                            f"{sandbox_id}: two runs at once ({run.engine} from {run.started:.1f}, "
                            f"{later.engine} from {later.started:.1f})"
                        )
                if i + 1 < len(runs) and run.ended is not None and run.completed(timeout_s):
                    later = runs[i + 1]
                    if later.started >= run.ended:
                        found.append(
                            f"{sandbox_id}: started again on {later.engine} {later.started - run.ended:.1f} s after "
                            f"a run on {run.engine} had completed (exit {run.exit_code})"
                        )
        return found
