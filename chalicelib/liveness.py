"""Whether a Docker server's dispatcher lives, judged without comparing clocks.

Hosts' clocks may disagree by any amount, so no component compares a time
written by another host with its own.  Instead:

* the dispatcher adds one to its row's ``beat`` at every heartbeat (and
  removes ``last_heartbeat`` when it stops cleanly);
* the reconciler is the one judge.  At each pass it compares ``beat`` with the
  value it noted last time (``seen_beat``); when it changed it notes the new
  value and *its own* time (``seen_at``).  A beat that has not changed for
  ``grace_s(server)`` by the reconciler's clock makes the server ``dead``;
* everybody else -- the API choosing a server, the reconciler moving work --
  reads that verdict.

``grace_s`` is the longer of the heartbeat TTL and the dispatcher's own
published ``fence_s`` (the time after its last acknowledged heartbeat by which
it has surely killed what it runs) plus a margin, so a dispatcher configured
with a longer lease than the reconciler expects is still waited for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.models import DockerServer

FENCE_MARGIN_S = 2.0


def grace_s(server: DockerServer, ttl_s: float) -> float:
    fence = float(server.fence_s or 0)
    return max(float(ttl_s), fence + FENCE_MARGIN_S)


def is_alive(server: DockerServer) -> bool:
    """A dispatcher has beaten (and not stopped cleanly) and the reconciler has not found it dead."""
    return server.last_heartbeat is not None and not server.dead


def is_healthy(server: DockerServer) -> bool:
    """Alive, active (not draining or disabled), and its engine can make containers: it may get new work."""
    return server.state == "active" and is_alive(server) and server.engine_ok is not False


@dataclass(frozen=True)
class Verdict:
    """What the reconciler concluded about one server in one pass, and what to write down."""

    dead: bool
    changes: dict[str, Any]  # attribute -> new value, empty when nothing changed


def observe(server: DockerServer, ttl_s: float, now: datetime) -> Verdict:
    """The reconciler's judgment of ``server`` at ``now`` (the reconciler's own clock)."""
    beat = int(server.beat or 0)
    seen = None if server.seen_beat is None else int(server.seen_beat)
    if server.last_heartbeat is None:
        # Never started, or stopped cleanly: nothing runs there, so nothing to judge.
        return Verdict(dead=bool(server.dead), changes={})
    if seen != beat or server.seen_at is None:
        # It beat since the last look (or this is the first look): alive, timed from now.
        changes: dict[str, Any] = {"seen_beat": beat, "seen_at": now}
        if server.dead:
            changes["dead"] = False
        return Verdict(dead=False, changes=changes)
    if (now - server.seen_at).total_seconds() > grace_s(server, ttl_s):
        return Verdict(dead=True, changes={} if server.dead else {"dead": True})
    return Verdict(dead=bool(server.dead), changes={})
