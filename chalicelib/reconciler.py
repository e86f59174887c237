"""The reconciler: every accepted sandbox reaches a final state, whatever crashed.

Run by a Chalice schedule (``app.py``, every minute) in the cloud and by the
local stack every few seconds (``python -m chalicelib.reconciler --every 10``).
One pass, ``reconcile(settings)``, reads the servers and the ``queued`` and
``running`` rows (through the ``by_status`` index, never a full scan) and:

1. Dead letters: a wake-up that failed ``aws.MAX_RECEIVES`` deliveries sits in
   its server's dead-letter queue; its sandbox, if still unfinished, becomes
   ``error`` with that reason (unless a live dispatcher reports it in hand).
2. ``running`` on a server that stopped heartbeating (or whose dispatcher no
   longer reports it in hand): given back to a ready server (``queued`` there,
   a wake-up sent) while it has been tried fewer than ``max_attempts`` times,
   else ``error``.  The dispatcher gives up its lease before the heartbeat TTL
   runs out, so the program is not still running on the old server.
3. ``queued`` on a server that is not healthy (dead, draining, disabled or
   deleted): moved to a ready server; with none ready it waits.  ``queued``
   longer than ``resend_after_s`` since its last wake-up: the wake-up is sent
   again (a lost message costs a delay, never the sandbox; a duplicate is
   dropped by the dispatcher's conditional claim).  ``queued`` longer than
   ``queued_max_s`` in all: ``error`` (no server took it).

One window it cannot close: if the AWS endpoint fails between the API storing
a row and sending its wake-up, and the API's undo (deleting the row) fails
too, the client got a 503 for a sandbox that still exists ``queued``; this
pass then wakes it and it runs.  It is never lost, but a client that retried
has two.

Every write is conditional on the state *and* the server it leaves, so the
reconciler racing a dispatcher (or another reconciler) changes a row once.
Writes go through the table connection without reading the item back, so a
row too malformed to load can still be marked ``error``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import PynamoDBException, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from chalicelib import aws, models
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.scheduling import is_alive, is_healthy, pick_ready
from chalicelib.settings import Settings, SettingsError, env_float, env_int

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
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_lettered": self.dead_lettered,
            "requeued": self.requeued,
            "failed": self.failed,
            "rerouted": self.rerouted,
            "rewoken": self.rewoken,
            "errors": len(self.errors),
        }


def reconcile(settings: Settings, config: ReconcilerSettings | None = None) -> dict[str, Any]:
    """One pass (see the module's docstring); returns counts of what it changed.

    Raises ``Unavailable`` when the servers cannot be read at all; a failure on
    one row is logged and left for the next pass.
    """
    config = config or ReconcilerSettings.from_env()
    report = Report()
    try:
        servers = {s.name: s for s in DockerServer.scan()}
    except PynamoDBException as e:
        raise Unavailable(f"reading servers: {e}") from e
    ttl = settings.heartbeat_ttl_s
    for server in servers.values():
        _dead_letters(settings, config, server, servers, report)
    for row in _rows("running", report):
        _settle_running(settings, config, row, servers, report)
    for row in _rows("queued", report):
        _settle_queued(settings, config, row, servers, report)
    summary = report.as_dict()
    if any(summary.values()):
        level = logging.WARNING if report.errors else logging.INFO
        log(logger, "reconcile.pass", level, healthy=sum(is_healthy(s, ttl) for s in servers.values()), **summary)
    return summary


def _rows(status: str, report: Report) -> list[Sandbox]:
    try:
        return list(Sandbox.by_status.query(status))
    except (PynamoDBException, ValueError) as e:
        report.errors.append(f"listing {status} sandboxes: {e}")
        log(logger, "reconcile.list_failed", logging.ERROR, status=status, error=str(e)[:300])
        return []


def _update(sandbox_id: str, actions: Sequence[Action], condition: Condition) -> bool:
    """A conditional write that does not read the item back; False when the condition did not hold."""
    try:
        Sandbox._get_connection().update_item(
            sandbox_id, actions=list(actions), condition=condition, return_values="NONE"
        )
    except UpdateError as e:
        if e.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _fail(sandbox_id: str, reason: str, condition: Condition) -> bool:
    actions = [Sandbox.status.set("error"), Sandbox.error.set(reason), Sandbox.finished_at.set(utcnow())]
    return _update(sandbox_id, actions, condition)


def _send(settings: Settings, server: DockerServer, sandbox_id: str, report: Report) -> None:
    try:
        aws.send_wakeup(settings, server.queue_url, sandbox_id)
    except Unavailable as e:
        # The row is right; the next pass re-sends once resend_after_s has passed.
        report.errors.append(f"waking {sandbox_id}: {e}")
        log(logger, "reconcile.wakeup_failed", logging.WARNING, sandbox_id=sandbox_id, server=server.name)


def _age_s(since: datetime | None) -> float:
    return (utcnow() - since).total_seconds() if since else float("inf")


def _dead_letters(
    settings: Settings,
    config: ReconcilerSettings,
    server: DockerServer,
    servers: dict[str, DockerServer],
    report: Report,
) -> None:
    if not server.dlq_url:
        return
    client = aws.sqs(settings)
    for _ in range(DLQ_BATCHES):
        try:
            with aws.translated("reading the dead-letter queue"):
                messages = client.receive_message(
                    QueueUrl=server.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30
                ).get("Messages", [])
        except Unavailable as e:
            report.errors.append(str(e))
            return
        if not messages:
            return
        for message in messages:
            try:
                _dead_letter(message, server, servers, settings, report)
                with aws.translated("deleting a dead letter"):
                    client.delete_message(QueueUrl=server.dlq_url, ReceiptHandle=message["ReceiptHandle"])
            except (PynamoDBException, Unavailable) as e:
                report.errors.append(f"dead letter on {server.name}: {e}")  # it shows again in 30 s


def _dead_letter(
    message: dict[str, Any], server: DockerServer, servers: dict[str, DockerServer], settings: Settings, report: Report
) -> None:
    try:
        sandbox_id = str(json.loads(message["Body"])["sandbox_id"])
    except (ValueError, KeyError, TypeError):
        log(logger, "reconcile.bad_dead_letter", logging.WARNING, server=server.name)
        return
    # A dispatcher that has the sandbox in hand (its wake-up was only re-delivered too often) keeps it.
    keep = Sandbox.status.is_in("queued", "running")
    for name, other in servers.items():
        if other.inflight and sandbox_id in other.inflight and is_alive(other, settings.heartbeat_ttl_s):
            keep = keep & ~((Sandbox.status == "running") & (Sandbox.server == name))
    reason = (
        f"the platform could not handle this sandbox: its wake-up message failed {aws.MAX_RECEIVES} deliveries "
        f"on server {server.name} and went to the dead-letter queue"
    )
    if _fail(sandbox_id, reason, keep):
        report.dead_lettered += 1
        log(logger, "sandbox.error", logging.WARNING, sandbox_id=sandbox_id, server=server.name, reason=reason)


def _settle_running(
    settings: Settings, config: ReconcilerSettings, row: Sandbox, servers: dict[str, DockerServer], report: Report
) -> None:
    ttl = settings.heartbeat_ttl_s
    server = servers.get(row.server or "")
    if server is None:
        why = f"server {row.server} was removed while the sandbox ran"
    elif not is_alive(server, ttl):
        why = f"server {server.name} stopped heartbeating while the sandbox ran"
    elif (
        server.inflight is not None
        and row.sandbox_id not in server.inflight
        and row.started_at is not None
        and server.last_heartbeat is not None
        # Heartbeats well after the claim have not listed it: no slot of that dispatcher holds it.
        and server.last_heartbeat - row.started_at > timedelta(seconds=ttl)
    ):
        why = f"the dispatcher of server {server.name} lost track of the sandbox"
    else:
        return
    left = (Sandbox.status == "running") & (Sandbox.server == row.server)
    try:
        if int(row.attempts or 0) >= config.max_attempts:
            if _fail(row.sandbox_id, f"{why}; tried {int(row.attempts or 0)} times", left):
                report.failed += 1
                log(logger, "sandbox.error", logging.WARNING, sandbox_id=row.sandbox_id, reason=why)
            return
        target = pick_ready(row.docker_image or "", ttl, list(servers.values())) or server
        if target is None:
            return  # its server is gone and no other is ready: try again on the next pass
        actions = [
            Sandbox.status.set("queued"),
            Sandbox.server.set(target.name),
            Sandbox.started_at.remove(),
            Sandbox.woken_at.set(utcnow()),
        ]
        if _update(row.sandbox_id, actions, left):
            report.requeued += 1
            log(
                logger,
                "sandbox.requeued",
                logging.WARNING,
                sandbox_id=row.sandbox_id,
                server=target.name,
                previous=row.server,
                reason=why,
            )
            _send(settings, target, row.sandbox_id, report)
    except PynamoDBException as e:
        report.errors.append(f"settling {row.sandbox_id}: {e}")


def _settle_queued(
    settings: Settings, config: ReconcilerSettings, row: Sandbox, servers: dict[str, DockerServer], report: Report
) -> None:
    ttl = settings.heartbeat_ttl_s
    server = servers.get(row.server or "")
    left = (Sandbox.status == "queued") & (Sandbox.server == row.server)
    try:
        if _age_s(row.created_at) > config.queued_max_s:
            reason = f"no Docker server took the sandbox within {config.queued_max_s} s"
            if _fail(row.sandbox_id, reason, left):
                report.failed += 1
                log(logger, "sandbox.error", logging.WARNING, sandbox_id=row.sandbox_id, reason=reason)
            return
        if server is None or not is_healthy(server, ttl):
            target = pick_ready(row.docker_image or "", ttl, list(servers.values()))
            if target is None:
                return  # it waits queued until a server is ready
            moved = [Sandbox.server.set(target.name), Sandbox.woken_at.set(utcnow())]
            if _update(row.sandbox_id, moved, left):
                report.rerouted += 1
                log(logger, "sandbox.rerouted", sandbox_id=row.sandbox_id, server=target.name, previous=row.server)
                _send(settings, target, row.sandbox_id, report)
            return
        last_wakeup = max(row.created_at, row.woken_at) if row.woken_at else row.created_at
        if _age_s(last_wakeup) > config.resend_after_s:
            if _update(row.sandbox_id, [Sandbox.woken_at.set(utcnow())], left):
                report.rewoken += 1
                log(logger, "sandbox.rewoken", sandbox_id=row.sandbox_id, server=server.name)
                _send(settings, server, row.sandbox_id, report)
    except PynamoDBException as e:
        report.errors.append(f"settling {row.sandbox_id}: {e}")


def main(argv: list[str] | None = None) -> int:
    """``python -m chalicelib.reconciler [--every SECONDS]``: what the schedule does, on this machine."""
    from chalicelib import logs

    parser = argparse.ArgumentParser(prog="python -m chalicelib.reconciler", description=main.__doc__)
    parser.add_argument("--every", type=float, help="run a pass every SECONDS until stopped (default: one pass)")
    parser.add_argument("--loop", action="store_true", help="--every OPENDEVELOP_RECONCILE_INTERVAL (10 s)")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        settings = Settings.from_env()
        config = ReconcilerSettings.from_env()
    except SettingsError as e:
        print(f"reconciler: configuration: {e}", file=sys.stderr)
        return 2
    models.configure(settings)
    every = config.interval_s if args.loop else args.every
    while True:
        started = time.monotonic()
        try:
            summary = reconcile(settings, config)
            if every is None:
                print(json.dumps(summary))
        except Exception as e:  # noqa: BLE001 - the loop outlives a bad pass; the next one tries again
            log(logger, "reconcile.failed", logging.ERROR, error=f"{type(e).__name__}: {e}"[:500])
            if every is None:
                return 1
        if every is None:
            return 0
        time.sleep(max(0.0, every - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())
