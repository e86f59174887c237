"""Everything a process keeps between requests, in one object: ``Context``.

The API reads a few rows on every request (its app, the image, the servers),
holds waiting requests on one reader thread, and talks to AWS through boto3
clients that cost tens of milliseconds to make.  All of that lives in one
``Context``, built from one ``Settings``, so it is visible in one place, and a
test (or a new process) starts from a fresh one instead of emptying module
globals one by one.

As in the Chalice samples' ``get_app_db()``, ``app.py`` gets the API's context
from ``get_context()``, which builds it from the environment on the first
request (never at import time).  Building a context binds the pynamodb models
to its stage's tables (``models.configure``).

The other components (the dispatcher, the reconciler's command, ``manage.py``)
never call ``get_context``: the first ``aws.sqs(settings)``-style call they make
builds their process's context from their own settings (``for_settings``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from chalicelib import logs, models
from chalicelib.clients import Clients
from chalicelib.settings import Settings
from chalicelib.waiting import Reader

# Rows read on every request are kept this long: a disabled image or a rotated
# secret takes effect within it (README, Decisions).
ROWS_TTL_S = 5.0
# The servers' rows: their heartbeats and running counts are a few seconds old anyway.
SERVERS_TTL_S = 2.0


class TTLCache:
    """A tiny thread-safe cache of rows by key, each kept ``ttl_s`` seconds."""

    MAX_ROWS = 10_000  # a flood of unknown ids must not grow it without end

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        with self._lock:
            hit = self._rows.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            if len(self._rows) >= self.MAX_ROWS:
                self._rows.clear()
            self._rows[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


class Context:
    """One process's settings and what it keeps between requests.

    ``clients`` may be handed over from an earlier context: boto3 clients hold
    no state of ours, only connections, and making them again would cost every
    new context (every functional test) tens of milliseconds for nothing.
    """

    def __init__(self, settings: Settings, clients: Clients | None = None) -> None:
        self.settings = settings
        models.configure(settings)
        self.clients = clients if clients is not None else Clients()
        self.apps = TTLCache(ROWS_TTL_S)  # App rows by app_id (see sandboxes.authenticate)
        self.images = TTLCache(ROWS_TTL_S)  # Image rows by name
        self.servers = TTLCache(SERVERS_TTL_S)  # every DockerServer row, under one key (see scheduling)
        self.reader = Reader()  # one reader thread for every ?wait=N request (see waiting)

    def close(self) -> None:
        """Stop what runs in the background (the wait reader's thread, once no request waits on it)."""
        self.reader.close()


_lock = threading.RLock()  # re-entered: get_context builds through reset_context
_current: Context | None = None


def current() -> Context | None:
    """The process's context, or None before anything built one."""
    return _current


def get_context() -> Context:
    """The API process's context: built from the environment on first use, then the same one."""
    ctx = _current
    if ctx is not None:  # every request after the first: no lock
        return ctx
    with _lock:  # held while building, so concurrent first requests share one context
        if _current is not None:
            return _current
        logs.setup()
        return reset_context(Settings.from_env())


def reset_context(settings: Settings | None = None) -> Context:
    """A fresh context (from ``settings``, or read from the environment) made the process's own.

    What a new process would start with: empty caches, a new wait reader.  The
    earlier context's boto3 clients are kept (see ``Context``), and its reader
    is stopped.
    """
    global _current
    fresh_settings = Settings.from_env() if settings is None else settings
    with _lock:
        old = _current
        _current = Context(fresh_settings, clients=old.clients if old is not None else None)
        fresh = _current
    if old is not None:
        old.close()
    return fresh


def for_settings(settings: Settings) -> Context:
    """The process's context; a process that has none yet (not the API) gets one built from ``settings``."""
    with _lock:
        if _current is not None:
            return _current
        return reset_context(settings)
