"""Choosing a Docker server for a new sandbox.

A server is *healthy* when it is ``active`` and its dispatcher heartbeated
within ``heartbeat_ttl_s``.  Among healthy servers with free slots (and the
image, when the dispatcher has reported its images) the one with the most free
slots wins, ties broken at random.  With servers registered but none healthy
the sandbox is still accepted onto an active server's queue and waits
``queued`` there; with no active server at all it is a 503.
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


def is_healthy(server: DockerServer, ttl_s: int) -> bool:
    return (
        server.state == "active"
        and server.last_heartbeat is not None
        and utcnow() - server.last_heartbeat < timedelta(seconds=ttl_s)
    )


def choose_server(docker_image: str, ttl_s: int, candidates: list[DockerServer] | None = None) -> DockerServer:
    rows = servers() if candidates is None else candidates
    active = [s for s in rows if s.state == "active"]
    if not active:
        raise Unavailable("no Docker server can take work now (none is registered and active)")
    healthy = [s for s in active if is_healthy(s, ttl_s) and (not s.images or docker_image in s.images)]
    if healthy:
        best = max(int(s.slots) - int(s.running) for s in healthy)
        return random.choice([s for s in healthy if int(s.slots) - int(s.running) == best])
    return random.choice(active)
