"""Choosing a Docker server for a new sandbox.

A server is *alive* when its dispatcher heartbeated within ``heartbeat_ttl_s``
(a dispatcher lets its heartbeat go stale while its Docker engine does not
answer), and *healthy* when it is also ``active`` (not draining or disabled).
A healthy server that has the image (when its dispatcher has reported its
images) is *ready*.  Among ready servers one with free slots is chosen at
random, weighted by its free slots, so a burst of requests spreads over the
servers even though their ``running`` counts are a heartbeat old; when every
ready server is busy, the sandbox queues behind one chosen by weight of its
slots.  With servers registered but none ready the sandbox is still accepted
onto an active server's queue and waits ``queued`` there (the reconciler moves
it once a server is ready); with no active server at all it is a 503.

The API reads the servers' rows at most every couple of seconds: they are kept
in its ``Context`` (``servers``).
"""

from __future__ import annotations

import random

from chalicelib import context, liveness
from chalicelib.context import Context
from chalicelib.errors import Unavailable
from chalicelib.models import DockerServer

_ALL = "all"  # the one key of ``Context.servers``: the table is small and read whole


def servers(ctx: Context) -> list[DockerServer]:
    """All registered servers, from ``ctx``'s cache when it read them lately (``context.SERVERS_TTL_S``)."""
    rows: list[DockerServer] | None = ctx.servers.get(_ALL)
    if rows is None:
        rows = list(DockerServer.scan())
        ctx.servers.put(_ALL, rows)
    return rows


def forget() -> None:
    """Read the servers afresh next time: this process has just changed one (the admin's drain, delete...)."""
    ctx = context.current()
    if ctx is not None:
        ctx.servers.clear()


def is_alive(server: DockerServer, ttl_s: int = 0) -> bool:
    """The reconciler's verdict (``chalicelib.liveness``): no clock of another host is compared here."""
    return liveness.is_alive(server)


def is_healthy(server: DockerServer, ttl_s: int = 0) -> bool:
    return liveness.is_healthy(server)


def pick_ready(docker_image: str, ttl_s: int, rows: list[DockerServer]) -> DockerServer | None:
    """A ready server for the image (see the module's docstring), or None."""
    ready = [s for s in rows if is_healthy(s, ttl_s) and (not s.images or docker_image in s.images)]
    if not ready:
        return None
    free = {s.name: int(s.slots) - int(s.running) for s in ready}
    with_room = [s for s in ready if free[s.name] > 0]
    if with_room:
        return random.choices(with_room, weights=[free[s.name] for s in with_room])[0]
    return random.choices(ready, weights=[max(int(s.slots), 1) for s in ready])[0]


def choose_server(docker_image: str, ttl_s: int, candidates: list[DockerServer] | None = None) -> DockerServer:
    """A server for a new sandbox among ``candidates`` (every server, read now, when None)."""
    rows = list(DockerServer.scan()) if candidates is None else candidates
    active = [s for s in rows if s.state == "active"]
    if not active:
        raise Unavailable("no Docker server can take work now (none is registered and active)")
    return pick_ready(docker_image, ttl_s, active) or random.choice(active)
