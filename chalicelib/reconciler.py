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
2. ``running`` whose run is over is given back (``queued`` on a ready server)
   while tried fewer than ``max_attempts`` times (else ``error``; with network
   access, ``error``: never started twice).  Over means: its server judged dead
   and the run's deadline passed since (the host's watchdog ends a container at
   its deadline without AWS or the dispatcher; a dead host ended it anyway);
   its dispatcher replaced (the new one's recovery removed its containers); or
   a live dispatcher no longer holding it for longer than any fence.  Waiting
   is timed from the reconciler's first sight (``suspect_at``), by its own
   clock.  A dispatcher that comes back sooner settles its own rows
   (``dispatcher.recovery``): it can tell a finished program from one cut off.
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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pynamodb.exceptions import PynamoDBException

from chalicelib import aws, dead_letters, lifecycle, liveness, models, releases, status, webhooks
from chalicelib.errors import Unavailable
from chalicelib.liveness import is_alive, is_healthy
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.reconcile_common import ReconcilerSettings, Report, age_s, send
from chalicelib.scheduling import pick_ready
from chalicelib.settings import Settings, SettingsError

logger = logging.getLogger("opendevelop.reconciler")

# Kept importable from here: the reconciler's settings and report live in ``reconcile_common``.
__all__ = ["ReconcilerSettings", "Report", "main", "reconcile"]


WATCHDOG_GRACE_S = 3.0  # dispatcher/watchdog.py kills 1.5 s past the timeout, ticking every 0.5 s; and a pass


@dataclass(frozen=True)
class Orphan:
    """A running row nobody runs: why, and how long to wait (by this clock) before giving it back."""

    why: str
    wait_s: float


def reconcile(
    settings: Settings, config: ReconcilerSettings | None = None, publish: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """One pass (see the module's docstring); returns counts of what it changed.

    Each pass also publishes the scaling signal, the backlog per free slot
    (``chalicelib.status``), as one embedded-metric-format line on stdout
    (``publish``), which CloudWatch reads from the Lambda's log.

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
        dead_letters.drain(settings, config, server, servers, report)
    for row in _rows("running", report):
        _settle_running(settings, config, row, servers, now, report)
    queued = _rows("queued", report)
    (publish or _stdout)(status.emf_line(settings.table_prefix, len(queued), list(servers.values())))
    for row in queued:
        _settle_queued(settings, config, row, servers, report)
    woken = [row for row in queued if row.sandbox_id not in report.moved and not row.parked_app]
    _rewake(settings, config, woken, servers, report)
    # Quotas a settling process died before freeing: freed now (which also wakes the app's parked).
    report.released = releases.rederive_releases(report.errors)
    # Parked rows have no wake-up to lose: they are woken by their app's settles.  Should one of
    # those have been lost (a process died between a settle and its unpark), this wakes them.
    for app_id in sorted({row.parked_app for row in queued if row.parked_app and row.sandbox_id not in report.moved}):
        try:
            report.rewoken += releases.unpark(app_id)
        except PynamoDBException as e:
            report.errors.append(f"unparking the sandboxes of {app_id}: {e}")
    report.webhooks = webhooks.rederive(settings, report.errors)
    summary = report.as_dict()
    if any(summary.values()):
        level = logging.WARNING if report.errors else logging.INFO
        log(logger, "reconcile.pass", level, healthy=sum(is_healthy(s) for s in servers.values()), **summary)
    return summary


def _stdout(line: str) -> None:
    # Not through ``logging``: Lambda prefixes a logged line, and CloudWatch reads a metric only
    # from a line that is one JSON object.
    print(line, flush=True)


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


def _orphaned(
    row: Sandbox, servers: dict[str, DockerServer], config: ReconcilerSettings, ttl_s: float
) -> Orphan | None:
    """Why nobody runs this ``running`` row any more (``None`` while its dispatcher still does)."""
    server = servers.get(row.server or "")
    # Its deadline, from this pass's first sight of the row so: by then the host's watchdog has
    # killed its container (without AWS or the dispatcher), or the host died with it.
    deadline = float((row.limits or {}).get("timeout") or 0) + WATCHDOG_GRACE_S
    if server is None:
        return Orphan(f"server {row.server} was removed while the sandbox ran", ttl_s + deadline)
    if not is_alive(server):
        # Dead by this clock for longer than its fence; a dispatcher that died outright fenced
        # nothing, so the run is waited out to its deadline before it runs again.
        return Orphan(f"server {server.name} stopped heartbeating while the sandbox ran", deadline)
    if row.holder and server.instance and row.holder != server.instance:
        # The dispatcher that claimed it was replaced; the new one's recovery removed its containers
        # and settles its rows before it beats: this is for a row that recovery could not write.
        return Orphan(f"the dispatcher of server {server.name} that ran the sandbox was replaced", ttl_s)
    if server.inflight is not None and row.sandbox_id not in server.inflight:
        return Orphan(
            f"the dispatcher of server {server.name} lost track of the sandbox", liveness.grace_s(server, ttl_s)
        )
    return None


def _settle_running(
    settings: Settings,
    config: ReconcilerSettings,
    row: Sandbox,
    servers: dict[str, DockerServer],
    now: datetime,
    report: Report,
) -> None:
    orphan = _orphaned(row, servers, config, settings.heartbeat_ttl_s)
    left = lifecycle.leaving_run(row)
    server = servers.get(row.server or "")
    try:
        if orphan is None:
            if row.suspect_at is not None:
                # A note from a pass that read the servers before this run's claim: stale now, and
                # a later judgment must wait from its own first sight, not from this one.
                lifecycle.unsuspect(row.sandbox_id, left)
            return
        why = orphan.why
        # Judged only once it has been so for ``wait_s`` by this clock (noted on the row at first sight).
        if row.suspect_at is None:
            lifecycle.suspect(row.sandbox_id, left, now)
            return
        if age_s(row.suspect_at, now) <= orphan.wait_s:
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
            send(settings, target, row.sandbox_id, report)
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
        if age_s(row.created_at) > config.queued_max_s:
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
                send(settings, target, row.sandbox_id, report)
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
            if age_s(max(r.created_at, r.woken_at) if r.woken_at else r.created_at) > config.resend_after_s
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
                    send(settings, server, row.sandbox_id, report)
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
