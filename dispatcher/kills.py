"""A run's ends that are not the program's own: kills, the deadline the watchdog holds, and kills from outside.

The dispatcher only ever sends SIGKILL (the timeout, a cancel, the fence, a
stop) and notes every container it kills, so a signalled exit it did not cause
(the engine shutting down, an operator's ``docker kill``/``stop``) can be told
apart and reported (``stopped_from_outside``), never taken for a result.  The
deadline is also left as a file for ``watchdog``, off the program's path, so
it holds even when this process stops.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

from chalicelib.logs import log
from dispatcher import watchdog
from dispatcher.engine import RunSpec

logger = logging.getLogger("opendevelop.dispatcher")


class Kills:
    def __init__(self, api: docker.APIClient, server: str, spool: Path | None) -> None:
        self.api = api
        self.server = server
        self.spool = spool  # where the deadline files go, for the watchdog
        self._lock = threading.Lock()
        self._ours: set[str] = set()  # containers (ids or names) killed here

    def kill(self, container: str) -> None:
        with self._lock:
            self._ours.add(container)  # a kill of ours (timeout, cancel, fence): never "from outside"
        try:
            self.api.kill(container)
        except (NotFound, APIError):
            pass  # already gone or already stopped

    def on_timeout(self, cid: str, flag: threading.Event) -> None:
        flag.set()
        self.kill(cid)

    def stopped_from_outside(self, cid: str, since: float) -> str:
        """Why the engine (shutting down, say) or an operator signalled the container; "" when nobody did.

        The dispatcher itself only ever sends SIGKILL (timeout, cancel, stop), and
        a program that kills itself leaves no ``kill`` event: a signalled exit with
        a ``kill``/``stop`` event of another signal is the platform's doing, never a result.
        """
        try:
            events = self.api.events(
                since=since - 1,
                until=time.time(),
                filters={"container": cid, "event": ["kill", "stop"]},
                decode=True,
            )
            with self._lock:
                ours = cid in self._ours or any(name in self._ours for name in self._names_of(cid))
            for event in events:
                signal_ = (event.get("Actor") or {}).get("Attributes", {}).get("signal", "")
                if not ours:
                    return f"{event.get('Action')} signal {signal_ or '?'}"
        except Exception as e:  # noqa: BLE001 - an engine that cannot say is an engine in trouble
            return f"the engine could not be asked: {type(e).__name__}"
        return ""

    def program_started(self, sandbox_id: str) -> None:
        """All the prologue needs is written: the program may run from now on (one log line a run)."""
        if self.spool is not None:
            watchdog.mark_started(self.spool, sandbox_id)
        log(logger, "sandbox.started", sandbox_id=sandbox_id, server=self.server)

    def leave_deadline(self, cid: str, spec: RunSpec) -> None:
        assert self.spool is not None
        pid = 0
        try:
            pid = int(self.api.inspect_container(cid)["State"].get("Pid") or 0)
        except Exception:  # noqa: BLE001 - without a pid the watchdog kills through the engine
            pid = 0
        if pid and not Path(f"/proc/{pid}").exists():
            pid = 0  # a remote engine's pid means nothing on this host
        watchdog.write(self.spool, cid, spec.sandbox_id, spec.timeout_s, pid, token=spec.token)

    def _names_of(self, cid: str) -> list[str]:
        try:
            return [str(self.api.inspect_container(cid)["Name"]).lstrip("/")]
        except Exception:  # noqa: BLE001 - gone already: its id is all there is
            return []
