"""The dispatcher's own settings (the shared ones are ``chalicelib.settings.Settings``)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chalicelib.settings import PROJECT_ROOT, Settings, SettingsError, env_float, env_int

FENCE_TICK_S = 0.1  # how often the fence is checked (no network call on the way)


@dataclass(frozen=True)
class DispatcherSettings:
    server: str
    slots: int | None = None  # None: the server row's slots
    docker_url: str | None = None  # None: the server row's URL
    poll_wait_s: int = 10  # SQS long poll; also how long a warm stop may wait for it
    visibility_s: int = 60  # a claimed message stays hidden this long, extended while its container runs
    heartbeat_s: float = 5.0
    tmp_mb: int = 64  # /tmp's tmpfs size
    nofile: int = 256
    user: str = "1000:1000"
    max_attempts: int = 3  # a sandbox whose run failed for platform reasons this often ends `error`
    retry_budget_s: int = 120  # how long a transient DynamoDB/S3 failure is retried in place before giving up
    backoff_s: float = 1.0  # first delay before a failed message comes back; doubles per failure, at most 30 s
    watch_s: float = 1.0  # how often the rows of running sandboxes are checked for a cancel
    pool_size: int | None = None  # started spares per recent shape (see dispatcher.pool); None: one per slot, up to 4
    instance: str = ""
    # The fence (see ``dispatcher.duties``): past ``lease_s`` after its last acknowledged heartbeat was
    # sent, the dispatcher kills what it runs; ``kill_s`` is the most that kill may take.
    lease_s: float | None = None  # None: derived from the heartbeat TTL (``fence_plan``)
    kill_s: float = 2.0
    spool_dir: str = ""  # finished results and deadline files on this host ("" : <state dir>/spool/<server>)
    # For an ssh:// Docker URL: the private key and the known hosts file (default: ~/.ssh's).
    ssh_identity: str | None = None
    ssh_known_hosts: str | None = None
    metrics_port: int = 0  # Prometheus metrics on 127.0.0.1 (``dispatcher.metrics``); 0: off

    @classmethod
    def from_env(
        cls, server: str | None = None, environ: Mapping[str, str] | None = None, slots: int | None = None
    ) -> DispatcherSettings:
        env = os.environ if environ is None else environ
        server = server or env.get("OPENDEVELOP_SERVER")
        if not server:
            raise SettingsError("OPENDEVELOP_SERVER (or --server): the name of this dispatcher's Docker server")
        return cls(
            server=server,
            slots=slots if slots is not None else _opt_int(env, "OPENDEVELOP_SLOTS", 1, 256),
            docker_url=env.get("OPENDEVELOP_DOCKER_URL") or None,
            poll_wait_s=env_int(env, "OPENDEVELOP_POLL_WAIT", 10, 0, 20),
            visibility_s=env_int(env, "OPENDEVELOP_VISIBILITY", 60, 10, 43200),
            heartbeat_s=float(env_int(env, "OPENDEVELOP_HEARTBEAT_INTERVAL", 5, 1, 60)),
            tmp_mb=env_int(env, "OPENDEVELOP_TMP_MB", 64, 1, 4096),
            nofile=env_int(env, "OPENDEVELOP_NOFILE", 256, 16, 65536),
            user=env.get("OPENDEVELOP_SANDBOX_USER", "1000:1000"),
            max_attempts=env_int(env, "OPENDEVELOP_MAX_ATTEMPTS", 3, 1, 20),
            retry_budget_s=env_int(env, "OPENDEVELOP_RETRY_BUDGET", 120, 0, 3600),
            backoff_s=env_float(env, "OPENDEVELOP_RETRY_BACKOFF", 1.0, 0.0, 30.0),
            watch_s=env_float(env, "OPENDEVELOP_WATCH_INTERVAL", 1.0, 0.1, 60.0),
            pool_size=_opt_int(env, "OPENDEVELOP_POOL", 0, 64),
            # Host and pid first: a refusal to start beside a live dispatcher names where it runs.
            instance=f"{socket.gethostname()}-pid{os.getpid()}-{secrets.token_hex(3)}",
            lease_s=env_float(env, "OPENDEVELOP_LEASE", 0.0, 0.0, 3600.0) or None,
            kill_s=env_float(env, "OPENDEVELOP_KILL_WORST", 2.0, 0.5, 60.0),
            spool_dir=env.get("OPENDEVELOP_SPOOL", "").strip()
            or str(Path(env.get("OPENDEVELOP_STATE_DIR") or PROJECT_ROOT / ".opendevelop") / "spool" / server),
            ssh_identity=_readable(env, "OPENDEVELOP_SSH_IDENTITY"),
            ssh_known_hosts=_readable(env, "OPENDEVELOP_SSH_KNOWN_HOSTS"),
            metrics_port=env_int(env, "OPENDEVELOP_METRICS_PORT", 0, 0, 65535),
        )


@dataclass(frozen=True)
class FencePlan:
    """The one timing of liveness, checked as a whole: the fence fires, and its kill ends, before the TTL."""

    heartbeat_s: float
    lease_s: float
    kill_s: float
    ttl_s: float

    @property
    def margin_s(self) -> float:
        return self.ttl_s - (self.lease_s + self.kill_s + FENCE_TICK_S)

    @property
    def fence_s(self) -> float:
        """After its last acknowledged heartbeat was sent, by when everything this dispatcher ran is dead."""
        return self.lease_s + self.kill_s + FENCE_TICK_S

    def describe(self) -> str:
        return (
            f"heartbeat every {self.heartbeat_s:g} s; lease {self.lease_s:g} s after the last acknowledged heartbeat "
            f"was sent; kill at most {self.kill_s:g} s; all dead {self.fence_s:g} s after it; the reconciler judges "
            f"a server dead after {self.ttl_s:g} s of an unchanged beat by its own clock; margin {self.margin_s:g} s"
        )


def fence_plan(settings: Settings, config: DispatcherSettings) -> FencePlan:
    """The fence's timing; ``SettingsError`` naming the variables when it leaves no margin.

    A reconciler moves a server's work once its beat has not changed for the TTL
    (``OPENDEVELOP_HEARTBEAT_TTL``) by the reconciler's own clock.  That clock
    started when it first saw the beat of the last heartbeat this dispatcher
    wrote, which is after the write was sent; so killing everything within
    ``lease + kill`` of that send keeps one run at a time, with any clock offset.
    """
    ttl = float(settings.heartbeat_ttl_s)
    hb = float(config.heartbeat_s)
    lease = config.lease_s if config.lease_s is not None else ttl - config.kill_s - max(hb, ttl / 6) - FENCE_TICK_S
    plan = FencePlan(heartbeat_s=hb, lease_s=round(lease, 3), kill_s=config.kill_s, ttl_s=ttl)
    if plan.margin_s <= 0:
        raise SettingsError(
            f"OPENDEVELOP_LEASE ({plan.lease_s:g} s) + OPENDEVELOP_KILL_WORST ({plan.kill_s:g} s) leaves no margin "
            f"inside OPENDEVELOP_HEARTBEAT_TTL ({ttl:g} s): the reconciler could move work before it is killed"
        )
    if plan.lease_s < 2 * hb:
        raise SettingsError(
            f"OPENDEVELOP_LEASE ({plan.lease_s:g} s) is shorter than two heartbeats "
            f"(OPENDEVELOP_HEARTBEAT_INTERVAL {hb:g} s): one slow beat would kill every run; "
            "raise OPENDEVELOP_HEARTBEAT_TTL or beat more often"
        )
    return plan


def _opt_int(env: Mapping[str, str], var: str, low: int, high: int) -> int | None:
    return env_int(env, var, 0, low, high) if env.get(var, "").strip() else None


def _readable(env: Mapping[str, str], var: str) -> str | None:
    path = env.get(var, "").strip()
    if not path:
        return None
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{var}: {path!r} is not a readable file")
    return path
