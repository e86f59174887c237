"""Whether the engine can take work: it answers, its disk has room, and it can make a container.

``broken`` holds the last failure to make a container (set by any failed
create: a run's, or the pool's refill), "" once one is made again; while it is
set, ``probe`` tries to make (and remove) a container of the last shape run,
so the heartbeat can ask every time and learn when the engine has recovered.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

import docker

from dispatcher.container import LABEL_POOL, Shape

MIN_FREE_MB = 64  # an engine whose data root has less free takes no new work (a container needs room)


class Health:
    def __init__(self, api: docker.APIClient) -> None:
        self.api = api
        self.broken = ""  # the last failure to make a container, "" once one is made again
        self._root: str | None = None  # the engine's data root, when it is on this host

    def probe(
        self,
        last_shape: Shape | None,
        create: Callable[[Shape, str, dict[str, str]], str],
        remove: Callable[[str], None],
    ) -> str:
        """Make (and remove) a container of the last shape run: "" when that works, else why not.

        Without a failure seen it answers at once, so the heartbeat may ask every time."""
        full = self.disk_full()
        if full:
            self.broken = full
            return full
        if not self.broken or last_shape is None:
            return self.broken
        try:
            cid = create(last_shape, f"od-probe-{secrets.token_hex(6)}", {LABEL_POOL: "probe"})
        except Exception as e:  # noqa: BLE001 - the answer is the point
            return f"{type(e).__name__}: {e}"[:300]
        remove(cid)
        return ""

    def disk_full(self) -> str:
        """For an engine on this host: its data root's free space, read directly (one statvfs)."""
        try:
            if self._root is None:
                self._root = str(self.api.info().get("DockerRootDir") or "")
            if not self._root or not os.path.isdir(self._root):
                return ""  # a remote engine: its create failures say it
            stat = os.statvfs(self._root)
        except Exception:  # noqa: BLE001 - no answer is no verdict; the next create will tell
            return ""
        free_mb = stat.f_bavail * stat.f_frsize // (1024 * 1024)
        return f"the engine's disk is full ({free_mb} MB free in {self._root})" if free_mb < MIN_FREE_MB else ""

    def healthy(self) -> bool:
        """Whether the engine answers a ping now."""
        try:
            self.api.ping()
            return True
        except Exception:  # noqa: BLE001 - any failure means the same here
            return False
