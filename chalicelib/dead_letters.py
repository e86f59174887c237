"""Dead letters: wake-ups that failed ``aws.MAX_RECEIVES`` deliveries (see ``chalicelib.reconciler``).

An outage is not the sandbox's fault: a row that loads and is still queued is
woken again, up to ``max_attempts`` times; a row that cannot be read (poison),
or keeps coming back, ends ``error`` -- unless a live dispatcher holds it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pynamodb.exceptions import PynamoDBException

from chalicelib import aws, lifecycle
from chalicelib.errors import Unavailable
from chalicelib.liveness import is_alive
from chalicelib.logs import log
from chalicelib.models import FINAL_STATES, DockerServer, Sandbox
from chalicelib.reconcile_common import DLQ_BATCHES, ReconcilerSettings, Report, send
from chalicelib.settings import Settings

logger = logging.getLogger("opendevelop.reconciler")


def drain(
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
    if row is not None and row.status in FINAL_STATES:
        return
    if row is not None and row.status == "running":
        return  # a run is under way (or its server's fate decides it): the reconciler's running rules settle it
    if row is not None and row.status == "queued" and int(row.dead_letters or 0) < config.max_attempts:
        target = servers.get(row.server or "")
        if target is not None and lifecycle.requeue_dead_letter(sandbox_id, target.name):
            report.rewoken += 1
            log(logger, "sandbox.rewoken", sandbox_id=sandbox_id, server=target.name, reason="dead letter")
            send(settings, target, sandbox_id, report)
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
