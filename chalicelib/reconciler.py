"""The reconciler: every accepted sandbox reaches a final state, whatever crashed.

Run by a Chalice schedule (``app.py``, every minute) in the cloud and by the
local stack every few seconds (``python -m chalicelib.reconciler --loop``).
One pass, ``reconcile(settings)``, judges the servers by its own clock
(``chalicelib.liveness``), then reads the ``queued`` and ``running`` rows
through the ``by_status`` index (a row that does not load is logged and
skipped) and:

1. Dead letters: a readable row still queued is woken again (an outage is not
   its fault), up to ``max_attempts`` times; a row that cannot be read, or
   keeps coming back, ends ``error`` (unless a live dispatcher holds it).
2. ``running`` whose run is over -- its server judged dead, or its dispatcher
   replaced -- is given back (``queued`` on a ready server, a wake-up sent)
   while tried fewer than ``max_attempts`` times, else ``error``; with network
   access it ends ``error`` (never started twice).  A row nobody proves over (a
   deleted server, a live dispatcher that does not list it) is first noted
   (``suspect_at``) and judged only once it has waited longer than any fence.
3. ``queued`` on a server that may not take work (dead, draining, disabled,
   engine broken, deleted): moved to a ready server; with none it waits.
   Lost wake-ups are re-sent, but only as many per server as its queue is short
   of its queued rows, so a pass's work grows linearly with the backlog.
   ``queued`` longer than ``queued_max_s``: ``error`` (no server took it).

Every write is one of ``chalicelib.lifecycle``'s transitions, conditional on
the state and the server (or the run's token) it leaves, so racing a
dispatcher or another reconciler changes a row once; none reads the item
back, so a row too malformed to load can still be marked ``error``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynamodb.exceptions import PynamoDBException

from chalicelib import aws, lifecycle, liveness, models, quotas
from chalicelib.errors import Unavailable
from chalicelib.liveness import is_alive, is_healthy
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.scheduling import pick_ready
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
    moved: set[str] = field(default_factory=set)  # rows this pass already settled or sent a wake-up for

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
    now = utcnow()  # the reconciler's own clock: the only one it compares anything with
    try:
        servers = {s.name: s for s in DockerServer.scan()}
    except PynamoDBException as e:
        raise Unavailable(f"reading servers: {e}") from e
    for server in servers.values():
        _judge(settings, server, now, report)
    for server in servers.values():
        _dead_letters(settings, config, server, servers, report)
    for row in _rows("running", report):
        _settle_running(settings, config, row, servers, now, report)
    queued = _rows("queued", report)
    for row in queued:
        _settle_queued(settings, config, row, servers, report)
    woken = [row for row in queued if row.sandbox_id not in report.moved and not row.parked_app]
    _rewake(settings, config, woken, servers, report)
    # Parked rows have no wake-up to lose: they are woken by their app's settles.  Should one of
    # those have been lost (a process died between a settle and its unpark), this wakes them.
    for app_id in sorted({row.parked_app for row in queued if row.parked_app and row.sandbox_id not in report.moved}):
        try:
            report.rewoken += quotas.unpark(app_id)
        except PynamoDBException as e:
            report.errors.append(f"unparking the sandboxes of {app_id}: {e}")
    summary = report.as_dict()
    if any(summary.values()):
        level = logging.WARNING if report.errors else logging.INFO
        log(logger, "reconcile.pass", level, healthy=sum(is_healthy(s) for s in servers.values()), **summary)
    return summary


def _judge(settings: Settings, server: DockerServer, now: datetime, report: Report) -> None:
    """Note what the reconciler saw of the server's heartbeat; its verdict updates ``server`` in place."""
    verdict = liveness.observe(server, settings.heartbeat_ttl_s, now)
    if not verdict.changes:
        return
    actions = [getattr(DockerServer, name).set(value) for name, value in verdict.changes.items()]
    try:
        server.update(actions=actions, condition=DockerServer.name.exists())
    except PynamoDBException as e:
        report.errors.append(f"judging {server.name}: {e}")
        return
    if verdict.changes.get("dead"):
        log(logger, "server.dead", logging.WARNING, server=server.name, beat=int(server.beat or 0))
    elif "dead" in verdict.changes:
        log(logger, "server.alive_again", server=server.name)


def _rows(status: str, report: Report) -> list[Sandbox]:
    """The rows in ``status``, oldest first.  A row that does not load is logged and skipped, not fatal."""
    rows = []
    try:
        pages = Sandbox._get_connection().query(status, index_name=Sandbox.by_status.Meta.index_name)
        items = list(pages.get("Items", []))
        while pages.get("LastEvaluatedKey"):
            pages = Sandbox._get_connection().query(
                status, index_name=Sandbox.by_status.Meta.index_name, exclusive_start_key=pages["LastEvaluatedKey"]
            )
            items += pages.get("Items", [])
    except PynamoDBException as e:
        report.errors.append(f"listing {status} sandboxes: {e}")
        log(logger, "reconcile.list_failed", logging.ERROR, status=status, error=str(e)[:300])
        return []
    for item in items:
        try:
            rows.append(Sandbox.from_raw_data(item))
        except Exception as e:  # noqa: BLE001 - one malformed row must not stop the pass for everyone
            sandbox_id = str((item.get("sandbox_id") or {}).get("S", "?"))
            report.errors.append(f"{sandbox_id}: malformed row: {e}")
            log(logger, "reconcile.bad_row", logging.ERROR, sandbox_id=sandbox_id, error=str(e)[:300])
    return rows


def _send(settings: Settings, server: DockerServer, sandbox_id: str, report: Report) -> None:
    try:
        aws.send_wakeup(settings, server.queue_url, sandbox_id)
    except Unavailable as e:
        # The row is right; the next pass re-sends once resend_after_s has passed.
        report.errors.append(f"waking {sandbox_id}: {e}")
        log(logger, "reconcile.wakeup_failed", logging.WARNING, sandbox_id=sandbox_id, server=server.name)


def _age_s(since: datetime | None, now: datetime | None = None) -> float:
    return ((now or utcnow()) - since).total_seconds() if since else float("inf")


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
                _dead_letter(message, server, servers, settings, config, report)
                with aws.translated("deleting a dead letter"):
                    client.delete_message(QueueUrl=server.dlq_url, ReceiptHandle=message["ReceiptHandle"])
            except (PynamoDBException, Unavailable) as e:
                report.errors.append(f"dead letter on {server.name}: {e}")  # it shows again in 30 s


def _dead_letter(
    message: dict[str, Any],
    server: DockerServer,
    servers: dict[str, DockerServer],
    settings: Settings,
    config: ReconcilerSettings,
    report: Report,
) -> None:
    """A wake-up that failed ``MAX_RECEIVES`` deliveries.

    An outage is not the sandbox's fault: a row that loads and is still queued
    is woken again (up to ``max_attempts`` dead letters).  A row that does not
    load (poison), or that keeps coming back, ends ``error``.
    """
    try:
        sandbox_id = str(json.loads(message["Body"])["sandbox_id"])
    except (ValueError, KeyError, TypeError):
        log(logger, "reconcile.bad_dead_letter", logging.WARNING, server=server.name)
        return
    try:
        row: Sandbox | None = Sandbox.get(sandbox_id, consistent_read=True)
    except Sandbox.DoesNotExist:
        return
    except (ValueError, TypeError, AttributeError):
        row = None  # poison: a row this code cannot read
    if row is not None and row.status == "queued" and int(row.dead_letters or 0) < config.max_attempts:
        target = servers.get(row.server or "")
        if target is not None and lifecycle.requeue_dead_letter(sandbox_id, target.name):
            report.rewoken += 1
            log(logger, "sandbox.rewoken", sandbox_id=sandbox_id, server=target.name, reason="dead letter")
            _send(settings, target, sandbox_id, report)
        return
    # A dispatcher that has the sandbox in hand (its wake-up was only re-delivered too often) keeps it.
    holders = [name for name, other in servers.items() if other.inflight and sandbox_id in other.inflight]
    holders = [name for name in holders if is_alive(servers[name])]
    reason = (
        f"the platform could not handle this sandbox: its wake-up message failed {aws.MAX_RECEIVES} deliveries "
        f"on server {server.name} and went to the dead-letter queue"
    )
    if lifecycle.fail(sandbox_id, lifecycle.unfinished(except_running_on=holders), reason):
        report.dead_lettered += 1
        log(logger, "sandbox.error", logging.WARNING, sandbox_id=sandbox_id, server=server.name, reason=reason)


def _orphaned(row: Sandbox, servers: dict[str, DockerServer]) -> tuple[str, bool]:
    """Why nobody runs this ``running`` row any more (empty when its dispatcher still does), and
    whether its run is known to be over (else it is waited for, longer than any fence)."""
    server = servers.get(row.server or "")
    if server is None:
        return f"server {row.server} was removed while the sandbox ran", False
    if not is_alive(server):
        # Dead by this clock for longer than its fence: its dispatcher has killed what it ran.
        return f"server {server.name} stopped heartbeating while the sandbox ran", True
    if row.holder and server.instance and row.holder != server.instance:
        # The dispatcher that claimed it was replaced; the new one cleared its containers before beating.
        return f"the dispatcher of server {server.name} that ran the sandbox was replaced", True
    if server.inflight is not None and row.sandbox_id not in server.inflight:
        return f"the dispatcher of server {server.name} lost track of the sandbox", False
    return "", False


def _settle_running(
    settings: Settings,
    config: ReconcilerSettings,
    row: Sandbox,
    servers: dict[str, DockerServer],
    now: datetime,
    report: Report,
) -> None:
    why, over = _orphaned(row, servers)
    left = lifecycle.leaving_run(row)
    server = servers.get(row.server or "")
    try:
        if not why:
            return
        if not over:
            # Nobody proves it stopped (a deleted server, a live dispatcher that does not list it):
            # wait, by this clock, for longer than any fence before judging it.
            grace = liveness.grace_s(server, settings.heartbeat_ttl_s) if server else settings.heartbeat_ttl_s
            if row.suspect_at is None:
                lifecycle.suspect(row.sandbox_id, left, now)
                return
            if _age_s(row.suspect_at, now) <= grace:
                return
        attempts = int(row.attempts or 0)
        if row.network:
            reason = f"{why}; it had network access, so it is not run again (its effects may have happened)"
            if lifecycle.fail(row.sandbox_id, left, reason):
                report.failed += 1
                log(logger, "sandbox.error", logging.WARNING, sandbox_id=row.sandbox_id, reason=reason)
            return
        if attempts >= config.max_attempts:
            if lifecycle.fail(row.sandbox_id, left, f"{why}; tried {attempts} times"):
                report.failed += 1
                log(logger, "sandbox.error", logging.WARNING, sandbox_id=row.sandbox_id, reason=why)
            return
        target = pick_ready(row.docker_image or "", settings.heartbeat_ttl_s, able(row, servers)) or server
        if target is None:
            return  # its server is gone and no other is ready: try again on the next pass
        if lifecycle.give_back(row.sandbox_id, left, to_server=target.name):
            report.requeued += 1
            report.moved.add(row.sandbox_id)
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


def able(row: Sandbox, servers: dict[str, DockerServer]) -> list[DockerServer]:
    """The servers that may run ``row``: a sandbox with network goes only to a server that allows it."""
    return [s for s in servers.values() if s.network or not row.network]


def _settle_queued(
    settings: Settings, config: ReconcilerSettings, row: Sandbox, servers: dict[str, DockerServer], report: Report
) -> None:
    server = servers.get(row.server or "")
    try:
        if _age_s(row.created_at) > config.queued_max_s:
            reason = f"no Docker server took the sandbox within {config.queued_max_s} s"
            if lifecycle.fail(row.sandbox_id, lifecycle.queued_on(row.server), reason):
                report.failed += 1
                report.moved.add(row.sandbox_id)
                log(logger, "sandbox.error", logging.WARNING, sandbox_id=row.sandbox_id, reason=reason)
            return
        if row.parked_app:
            return  # no wake-up out: it is sent to a live server when it is woken (the reconciler moves it then)
        if server is None or not is_healthy(server):
            target = pick_ready(row.docker_image or "", settings.heartbeat_ttl_s, able(row, servers))
            if target is None:
                return  # it waits queued until a server is ready
            if lifecycle.move(row.sandbox_id, row.server, target.name):
                report.rerouted += 1
                report.moved.add(row.sandbox_id)
                log(logger, "sandbox.rerouted", sandbox_id=row.sandbox_id, server=target.name, previous=row.server)
                _send(settings, target, row.sandbox_id, report)
    except PynamoDBException as e:
        report.errors.append(f"settling {row.sandbox_id}: {e}")


def _rewake(
    settings: Settings,
    config: ReconcilerSettings,
    rows: list[Sandbox],
    servers: dict[str, DockerServer],
    report: Report,
) -> None:
    """Re-send lost wake-ups, and only those: per server, at most as many as its queue is short of its queued rows.

    A queue holding a message for every queued row has lost none, so a backlog
    costs one queue-attributes call per server and no sends, and the work of a
    pass grows linearly with the backlog.
    """
    by_server: dict[str, list[Sandbox]] = {}
    for row in rows:
        by_server.setdefault(row.server or "", []).append(row)
    for name, waiting in by_server.items():
        server = servers.get(name)
        if server is None or not is_healthy(server):
            continue
        due = [
            r
            for r in waiting
            if _age_s(max(r.created_at, r.woken_at) if r.woken_at else r.created_at) > config.resend_after_s
        ]
        if not due:
            continue
        try:
            held = aws.queue_depth(settings, server.queue_url)
        except Unavailable as e:
            report.errors.append(f"reading the queue of {name}: {e}")
            continue
        for row in due[: max(0, len(waiting) - held)]:
            try:
                if lifecycle.rewake(row.sandbox_id, name):
                    report.rewoken += 1
                    log(logger, "sandbox.rewoken", sandbox_id=row.sandbox_id, server=name)
                    _send(settings, server, row.sandbox_id, report)
            except PynamoDBException as e:
                report.errors.append(f"waking {row.sandbox_id}: {e}")


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
