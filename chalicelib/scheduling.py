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
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

from chalicelib.errors import Unavailable
from chalicelib.models import DockerServer, utcnow

_CACHE_S = 2.0
_lock = threading.Lock()
_cache: tuple[float, list[DockerServer]] = (0.0, [])


def servers(max_age_s: float = _CACHE_S) -> list[DockerServer]:
    """All registered servers, read at most every ``max_age_s`` seconds (a small table)."""
    global _cache
    with _lock:
        at, rows = _cache
        if time.monotonic() - at < max_age_s:
            return rows
    rows = list(DockerServer.scan())
    with _lock:
        _cache = (time.monotonic(), rows)
    return rows


def forget() -> None:
    global _cache
    with _lock:
        _cache = (0.0, [])


def is_alive(server: DockerServer, ttl_s: int) -> bool:
    return server.last_heartbeat is not None and utcnow() - server.last_heartbeat < timedelta(seconds=ttl_s)


def is_healthy(server: DockerServer, ttl_s: int) -> bool:
    return server.state == "active" and is_alive(server, ttl_s)


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
    rows = servers() if candidates is None else candidates
    active = [s for s in rows if s.state == "active"]
    if not active:
        raise Unavailable("no Docker server can take work now (none is registered and active)")
    return pick_ready(docker_image, ttl_s, active) or random.choice(active)
