"""Webhooks: a settled sandbox's JSON POSTed to its ``callback_url``, at least once.

Design (the row is the truth, SQS messages only say "try now"):

* A sandbox created with a ``callback_url`` stores it with ``callback_status``
  ``pending``, ``callback_attempts`` 0 and ``callback_pending`` (the sparse
  ``by_callback`` index's key).
* The process that wins the settling write (``lifecycle._settled``) queues
  ``{"sandbox_id", "attempt": 0}`` on the webhooks queue.
* ``handle`` (the ``on_sqs_message`` Lambda; locally ``infra.local.webhooks``
  runs the same function) takes a message for attempt *n* only while the row
  says ``pending`` with *n* attempts made, and claims the attempt by a
  conditional write (attempts *n* -> *n+1*, due again in ``CLAIM_S``), so a
  duplicated message or a second chain never makes an attempt twice.  It
  resolves and checks the target (``webhook_targets``), POSTs the signed JSON
  (``webhook_send``) and writes the outcome: ``delivered``; or the error and,
  while attempts remain, when the next one is due, queueing it with that delay
  (SQS delays at most 900 s: a message that arrives before its attempt is due
  is queued again for the rest); or ``failed``.
* What a lost message or a crash leaves (a settled row, pending, due more than
  ``webhook_rederive_s`` ago) the reconciler queues again (``rederive``).

Every attempt carries the same ``webhook-id`` (``msg_<sandbox id>``), so a
receiver can drop what it has already seen.  Delays: ``webhook_backoff_s``
times 3 to the power of the attempts made less one (30 s, 90 s, 270 s, 810 s,
2430 s by default: six attempts over about an hour).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from datetime import timedelta
from typing import Any

from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError

from chalicelib import aws, lifecycle, webhook_send, webhook_targets
from chalicelib.callbacks import DELIVERED, FAILED, PENDING
from chalicelib.logs import describe, log
from chalicelib.models import FINAL_STATES, App, Sandbox, utcnow
from chalicelib.sandboxes import show as sandbox_json
from chalicelib.settings import Settings

logger = logging.getLogger("opendevelop.webhooks")

# A claimed attempt not written back this long after (its process died) is due again.
CLAIM_S = webhook_send.TIMEOUT_S + 55
ERROR_CHARS = 300
REDERIVE_MOST = 500  # rows looked at per reconciler pass


def webhook_id(sandbox_id: str) -> str:
    """The ``webhook-id`` of a sandbox's webhook: the same for every attempt."""
    return f"msg_{sandbox_id}"


def delay_after(settings: Settings, attempts: int) -> float:
    """How long after the ``attempts``-th failed attempt the next one is due."""
    return float(settings.webhook_backoff_s * 3 ** (attempts - 1))


def handle(settings: Settings, message: dict[str, Any], resolver: Any = None, connect: Any = None) -> str:
    """One queued attempt (see the module's docstring); what became of it, for the log."""
    sandbox_id, attempt = str(message.get("sandbox_id", "")), int(message.get("attempt", 0))
    try:
        row = Sandbox.get(sandbox_id, consistent_read=True)
    except DoesNotExist:
        return "gone"
    if not row.callback_url or row.callback_status != PENDING:
        return "done"
    if row.status not in FINAL_STATES:
        return "unsettled"  # a settle queues it (or the reconciler, after one)
    if int(row.callback_attempts or 0) != attempt:
        return "stale"  # another message made (or is making) this attempt
    now = utcnow()
    if row.callback_due_at and row.callback_due_at > now + timedelta(seconds=1):
        aws.send_webhook(settings, sandbox_id, attempt, (row.callback_due_at - now).total_seconds())
        return "early"
    if not _claim(sandbox_id, attempt, now + timedelta(seconds=CLAIM_S)):
        return "stale"
    row.callback_attempts = attempt + 1
    error, final = _deliver(settings, row, resolver, connect)
    _record(settings, row, attempt + 1, error, final)
    log(
        logger,
        "webhook.attempt",
        logging.INFO if error is None else logging.WARNING,
        sandbox_id=sandbox_id,
        app_id=row.app_id,
        attempt=attempt + 1,
        error=error,
    )
    return "delivered" if error is None else "failed"


def _claim(sandbox_id: str, attempt: int, due: Any) -> bool:
    condition = (Sandbox.callback_status == PENDING) & (Sandbox.callback_attempts == attempt)
    try:
        Sandbox._get_connection().update_item(
            sandbox_id,
            actions=[Sandbox.callback_attempts.set(attempt + 1), Sandbox.callback_due_at.set(due)],
            condition=condition,
            return_values="NONE",
        )
    except UpdateError as e:
        if lifecycle.lost(e):
            return False
        raise
    return True


def _deliver(settings: Settings, row: Sandbox, resolver: Any, connect: Any) -> tuple[str | None, bool]:
    """POST the row's JSON; (None, _) when delivered, else (the error, whether it is final)."""
    try:
        target = webhook_targets.parse(row.callback_url)
        policy = webhook_targets.Policy.from_settings(settings)
        addresses = webhook_targets.resolve(target, policy, **({"resolver": resolver} if resolver else {}))
        app = App.get(row.app_id)
        if not app.webhook_secret:
            return "the app has no webhook secret (manage.py app-rotate-webhook-secret)", True
        body = json.dumps(sandbox_json(settings, row)).encode()
        headers = webhook_send.headers(app.webhook_secret, webhook_id(row.sandbox_id), body)
        extra = {"connect": connect} if connect else {}
        status, answer = webhook_send.post(target, addresses, body, headers, **extra)
    except webhook_targets.Refused as e:
        return str(e), True
    except DoesNotExist:
        return "the app no longer exists", True
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        return describe(e)[:ERROR_CHARS], False
    if 200 <= status < 300:
        return None, False
    return f"HTTP {status}: {answer.strip()[:200]}"[:ERROR_CHARS], False


def _record(settings: Settings, row: Sandbox, attempts: int, error: str | None, final: bool) -> None:
    """Write an attempt's outcome (conditional on nobody having made a later one); queue the next."""
    last = attempts >= settings.webhook_attempts
    actions: list[Any]
    if error is None or final or last:
        actions = [
            Sandbox.callback_status.set(DELIVERED if error is None else FAILED),
            Sandbox.callback_pending.remove(),
            Sandbox.callback_due_at.remove(),
        ]
    else:
        delay = delay_after(settings, attempts)
        actions = [Sandbox.callback_due_at.set(utcnow() + timedelta(seconds=delay))]
    actions.append(Sandbox.callback_error.set(error) if error else Sandbox.callback_error.remove())
    condition = (Sandbox.callback_status == PENDING) & (Sandbox.callback_attempts == attempts)
    try:
        Sandbox._get_connection().update_item(
            row.sandbox_id, actions=actions, condition=condition, return_values="NONE"
        )
    except UpdateError as e:
        if lifecycle.lost(e):
            return
        raise
    if error is not None and not final and not last:
        try:
            aws.send_webhook(settings, row.sandbox_id, attempts, delay)
        except Exception as e:  # noqa: BLE001 - the reconciler queues it again (rederive)
            log(logger, "webhook.enqueue_failed", logging.WARNING, sandbox_id=row.sandbox_id, error=describe(e))


def rederive(settings: Settings, errors: list[str] | None = None) -> int:
    """Queue again each settled sandbox's webhook that is pending and overdue; how many were queued.

    Overdue: due (or settled, before any attempt) more than ``webhook_rederive_s``
    ago.  Its due time is moved to now (conditional on its attempts), so the
    next pass leaves it alone while the message is on its way.
    """
    now = utcnow()
    late = now - timedelta(seconds=settings.webhook_rederive_s)
    queued = 0
    try:
        rows = list(Sandbox.by_callback.query("1", limit=REDERIVE_MOST, page_size=100))
    except PynamoDBException as e:
        (errors if errors is not None else []).append(f"reading pending webhooks: {e}")
        return 0
    for row in rows:
        due = row.callback_due_at or row.finished_at
        if row.status not in FINAL_STATES or due is None or due > late:
            continue
        attempts = int(row.callback_attempts or 0)
        try:
            Sandbox._get_connection().update_item(
                row.sandbox_id,
                actions=[Sandbox.callback_due_at.set(now)],
                condition=(Sandbox.callback_status == PENDING) & (Sandbox.callback_attempts == attempts),
                return_values="NONE",
            )
            aws.send_webhook(settings, row.sandbox_id, attempts)
            queued += 1
        except UpdateError as e:
            if not lifecycle.lost(e) and errors is not None:
                errors.append(f"webhook of {row.sandbox_id}: {e}")
        except Exception as e:  # noqa: BLE001 - the next pass tries again
            if errors is not None:
                errors.append(f"webhook of {row.sandbox_id}: {describe(e)}")
    if queued:
        log(logger, "webhook.rederived", sandboxes=queued)
    return queued
