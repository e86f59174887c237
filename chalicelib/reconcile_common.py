"""What the reconciler's parts share: its settings, what a pass changed, and the wake-up it sends."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib import aws
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.models import DockerServer, utcnow
from chalicelib.settings import Settings, env_float, env_int

logger = logging.getLogger("opendevelop.reconciler")

DLQ_BATCHES = 10  # at most 100 dead letters per server per pass; the rest wait for the next one


@dataclass(frozen=True)
class ReconcilerSettings:
    max_attempts: int = 3  # as the dispatcher's OPENDEVELOP_MAX_ATTEMPTS
    resend_after_s: int = 60
    queued_max_s: int = 24 * 3600
    interval_s: float = 10.0  # the local loop's period (the cloud's is the schedule's)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReconcilerSettings:
        env = os.environ if environ is None else environ
        return cls(
            max_attempts=env_int(env, "OPENDEVELOP_MAX_ATTEMPTS", 3, 1, 20),
            resend_after_s=env_int(env, "OPENDEVELOP_RESEND_AFTER", 60, 1, 86400),
            queued_max_s=env_int(env, "OPENDEVELOP_QUEUED_MAX", 24 * 3600, 60, 14 * 86400),
            interval_s=env_float(env, "OPENDEVELOP_RECONCILE_INTERVAL", 10, 0.5, 3600),
        )


@dataclass
class Report:
    """What one pass changed, by kind."""

    dead_lettered: int = 0
    requeued: int = 0
    failed: int = 0
    rerouted: int = 0
    rewoken: int = 0
    webhooks: int = 0  # webhooks queued again (``webhooks.rederive``)
    released: int = 0  # settled sandboxes whose quotas a dead process left held (``releases.rederive_releases``)
    errors: list[str] = field(default_factory=list)
    moved: set[str] = field(default_factory=set)  # rows this pass already settled or sent a wake-up for

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_lettered": self.dead_lettered,
            "requeued": self.requeued,
            "failed": self.failed,
            "rerouted": self.rerouted,
            "rewoken": self.rewoken,
            "webhooks": self.webhooks,
            "released": self.released,
            "errors": len(self.errors),
        }


def send(settings: Settings, server: DockerServer, sandbox_id: str, report: Report) -> None:
    try:
        aws.send_wakeup(settings, server.queue_url, sandbox_id)
    except Unavailable as e:
        # The row is right; the next pass re-sends once resend_after_s has passed.
        report.errors.append(f"waking {sandbox_id}: {e}")
        log(logger, "reconcile.wakeup_failed", logging.WARNING, sandbox_id=sandbox_id, server=server.name)


def age_s(since: datetime | None, now: datetime | None = None) -> float:
    return ((now or utcnow()) - since).total_seconds() if since else float("inf")
