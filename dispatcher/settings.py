"""The dispatcher's own settings (the shared ones are ``chalicelib.settings.Settings``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib.settings import SettingsError, env_float, env_int


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
    # For an ssh:// Docker URL: the private key and the known hosts file (default: ~/.ssh's).
    ssh_identity: str | None = None
    ssh_known_hosts: str | None = None

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
            instance=secrets.token_hex(4),
            ssh_identity=_readable(env, "OPENDEVELOP_SSH_IDENTITY"),
            ssh_known_hosts=_readable(env, "OPENDEVELOP_SSH_KNOWN_HOSTS"),
        )


def _opt_int(env: Mapping[str, str], var: str, low: int, high: int) -> int | None:
    return env_int(env, var, 0, low, high) if env.get(var, "").strip() else None


def _readable(env: Mapping[str, str], var: str) -> str | None:
    path = env.get(var, "").strip()
    if not path:
        return None
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{var}: {path!r} is not a readable file")
    return path
