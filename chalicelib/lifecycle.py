"""A sandbox's life: every change of its state, each one conditional write.

::

    create ─> queued ──claim──> running ──record──────> terminated
               │  ▲               │
               │  └──give_back────┤  (a platform failure, a lost server: run it again)
               │                  ├──fail──> error
               ├──move (another server), rewake (wake-up re-sent)
               ├──fail──> error
               └──cancel──> cancelled  <──cancel── running

Every function here performs one conditional write naming the state it leaves
and answers whether it won; ``False`` means someone else (a cancel, the
reconciler, another dispatcher) got there first, and the caller leaves the row
alone.  Nothing outside this module writes a sandbox's ``status``.

A claim writes a fresh *token* (and the claiming dispatcher's instance) into
the row.  Every later write of that run -- its result, its give-back, its
failure -- is conditional on that token, so a run that was handed over (the
reconciler requeued it, another dispatcher claimed it) can never write over
its successor: the token is the fence, not the server's name.

The settling transitions (``record``, ``fail``, ``cancel``) are where a
sandbox's webhook is sent from: right after the write it won, by the process
that won it (the dispatcher, the watchdog, the reconciler, the API's cancel),
its first delivery attempt is queued (``_settled``).  A queueing that fails,
or a process that dies between the write and the queueing, loses nothing: the
row says ``callback_status`` pending, and the reconciler queues again what has
waited too long (``chalicelib.webhooks.rederive``).

The settling transitions also free what the sandbox held of its app's quotas
(``chalicelib.releases.release``) right after the write they won, so whichever
path settles a sandbox releases it, once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from pynamodb.exceptions import PutError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from chalicelib import aws, releases
from chalicelib.logs import describe, log
from chalicelib.models import FINAL_STATES, Sandbox, bound_settings, utcnow

ERROR_MAX_CHARS = 1000
logger = logging.getLogger("opendevelop.lifecycle")


def lost(e: Exception) -> bool:
    """Whether a write failed only because its condition did not hold (someone else got there first)."""
    if getattr(e, "cause_response_code", None) == "ConditionalCheckFailedException":
        return True
    return "ConditionalCheckFailed" in str(e)


def _write(sandbox_id: str, actions: Sequence[Action], condition: Condition, settles: bool = False) -> bool:
    """One conditional update that does not parse the item back (so a malformed row can still be settled).

    ``settles``: the write moves the sandbox to a final state; the winner does
    what follows a settle (``_settled``): frees its quotas, queues its webhook.
    """
    if settles:
        # Marked in the settling write itself: the release of its quotas is owed until done, so a
        # process that dies between this write and the release leaves a mark the reconciler finds.
        actions = [*actions, Sandbox.release_pending.set("1")]
    try:
        response = Sandbox._get_connection().update_item(
            sandbox_id, actions=list(actions), condition=condition, return_values="ALL_NEW" if settles else "NONE"
        )
    except UpdateError as e:
        if lost(e):
            return False
        raise
    if settles:
        _settled(sandbox_id, (response or {}).get("Attributes") or {})
    return True


def _settled(sandbox_id: str, row: dict[str, Any]) -> None:
    """After a settling write was won (once per sandbox): free its quotas, queue its webhook's first attempt.

    The transition stands whatever happens here.  A release not done (this
    process died, or DynamoDB failed) is done by the reconciler from the row's
    ``release_pending`` mark (``releases.rederive_releases``); a webhook not queued
    is queued again by the reconciler (``webhooks.rederive``).
    """
    try:
        releases.release(row, unmark=True)
    except Exception as e:  # noqa: BLE001 - the sandbox's own state is already right
        log(logger, "quota.release_failed", logging.ERROR, sandbox_id=sandbox_id, error=describe(e))
    if "callback_url" not in row:
        return
    try:
        aws.send_webhook(bound_settings(), sandbox_id, attempt=0)
    except Exception as e:  # noqa: BLE001 - the sandbox's own state is already right
        log(logger, "webhook.enqueue_failed", logging.WARNING, sandbox_id=sandbox_id, error=describe(e))


# Conditions: the state a write leaves.


def queued_on(server: str | None) -> Condition:
    return (Sandbox.status == "queued") & (Sandbox.server == server)


def running_as(token: str) -> Condition:
    """The run that holds ``token``, and no other (not a later claim of the same sandbox)."""
    return (Sandbox.status == "running") & (Sandbox.token == token)


def running_on(server: str | None) -> Condition:
    """Running on ``server``, whichever claim: for rows that predate tokens."""
    return (Sandbox.status == "running") & (Sandbox.server == server)


def unfinished(except_running_on: Sequence[str] = ()) -> Condition:
    """Queued or running, but not running on one of ``except_running_on``."""
    condition = Sandbox.status.is_in("queued", "running")
    for server in except_running_on:
        condition = condition & ~running_on(server)
    return condition


def leaving_run(row: Sandbox) -> Condition:
    """The running row as it was read: by its token, or by its server when it has none."""
    return running_as(row.token) if row.token else running_on(row.server)


# Transitions


def create(sandbox_id: str, server: str, **fields: Any) -> Sandbox:
    """A new row, ``queued`` on ``server``; raises ``PutError`` when the id exists (it never does)."""
    sandbox = Sandbox(sandbox_id, status="queued", server=server, **fields)
    sandbox.save(condition=Sandbox.sandbox_id.does_not_exist())
    return sandbox


def create_many(rows: Sequence[Sandbox]) -> None:
    """New rows (``queued``), written with ``BatchWriteItem``: no condition, as their ids are new and random."""
    with Sandbox.batch_write() as batch:
        for row in rows:
            batch.save(row)


def delete_many(sandbox_ids: Sequence[str]) -> None:
    """Remove rows a failed batch create may have stored."""
    with Sandbox.batch_write() as batch:
        for sandbox_id in sandbox_ids:
            batch.delete(Sandbox(sandbox_id))


def claim(sandbox: Sandbox, server: str, holder: str) -> str | None:
    """``queued`` on ``server`` -> ``running``, one more attempt; the run's token, or None when lost.

    ``sandbox`` is refreshed from the write (``attempts``, ``started_at``, ``token``).
    """
    token = secrets.token_hex(8)
    try:
        sandbox.update(
            actions=[
                Sandbox.status.set("running"),
                Sandbox.started_at.set(utcnow()),
                Sandbox.attempts.add(1),
                Sandbox.token.set(token),
                Sandbox.holder.set(holder),
            ],
            condition=queued_on(server),
        )
    except UpdateError as e:
        if lost(e):
            return None
        raise
    return token


def record(sandbox_id: str, token: str, result: Sequence[Action]) -> bool:
    """``running`` (this run) -> ``terminated`` with ``result``'s attributes.

    The status goes last: DynamoDB applies an update atomically, but moto's
    server applies it clause by clause, and a reader must never see
    ``terminated`` before the result.
    """
    actions = [*result, Sandbox.finished_at.set(utcnow()), Sandbox.status.set("terminated")]
    return _write(sandbox_id, actions, running_as(token), settles=True)


def give_back(sandbox_id: str, leaving: Condition, to_server: str | None = None, counted: bool = True) -> bool:
    """``running`` -> ``queued`` (on ``to_server`` when given), to run again.

    ``counted`` False: the try was cut short by the platform (a cold stop, the
    engine gone) and does not count against the sandbox's attempts.
    """
    actions: list[Action] = [
        Sandbox.status.set("queued"),
        Sandbox.started_at.remove(),
        Sandbox.token.remove(),
        Sandbox.holder.remove(),
        Sandbox.suspect_at.remove(),
    ]
    if to_server is not None:
        actions += [Sandbox.server.set(to_server), Sandbox.woken_at.set(utcnow())]
    if not counted:
        actions.append(Sandbox.attempts.add(-1))
    return _write(sandbox_id, actions, leaving)


def fail(sandbox_id: str, leaving: Condition, reason: str) -> bool:
    """-> ``error``: the platform could not run the sandbox; ``reason`` says why."""
    actions = [
        Sandbox.status.set("error"),
        Sandbox.error.set(reason[:ERROR_MAX_CHARS]),
        Sandbox.finished_at.set(utcnow()),
    ]
    return _write(sandbox_id, actions, leaving, settles=True)


def move(sandbox_id: str, from_server: str | None, to_server: str) -> bool:
    """``queued`` on one server -> ``queued`` on another (the first is dead, draining or gone)."""
    return _write(sandbox_id, [Sandbox.server.set(to_server), Sandbox.woken_at.set(utcnow())], queued_on(from_server))


def rewake(sandbox_id: str, server: str) -> bool:
    """Still ``queued`` on ``server``: note that its wake-up is being sent again."""
    return _write(sandbox_id, [Sandbox.woken_at.set(utcnow())], queued_on(server))


def cancel(sandbox: Sandbox) -> bool:
    """``queued``/``running`` (as ``sandbox`` was read) -> ``cancelled``; False when it moved on meanwhile.

    A queued sandbox then never runs (a claim requires ``queued``); a running
    one's dispatcher sees its token gone and kills the container, and its
    result write (conditional on the token) cannot overwrite ``cancelled``.
    """
    if sandbox.status in FINAL_STATES:
        return False
    condition: Condition = Sandbox.status == sandbox.status
    if sandbox.status == "running" and sandbox.token:
        condition = running_as(sandbox.token)
    try:
        sandbox.update(
            actions=[
                Sandbox.status.set("cancelled"),
                Sandbox.finished_at.set(utcnow()),
                Sandbox.release_pending.set("1"),  # see _write
            ],
            condition=condition,
        )
    except UpdateError as e:
        if lost(e):
            return False
        raise
    _settled(sandbox.sandbox_id, sandbox.serialize())
    return True


def create_only(row: Any) -> bool:
    """Save a new row of any table; False when one with its key exists already."""
    try:
        row.save(condition=type(row)._hash_key_attribute().does_not_exist())
    except PutError as e:
        if lost(e):
            return False
        raise
    return True


def suspect(sandbox_id: str, leaving: Condition, since: Any) -> bool:
    """Note (by the reconciler's clock) when a running row was first found held by nobody."""
    return _write(sandbox_id, [Sandbox.suspect_at.set(since)], leaving & Sandbox.suspect_at.does_not_exist())


def unsuspect(sandbox_id: str, leaving: Condition) -> bool:
    """Held after all (a claim newer than the servers the reconciler read, say): forget the note."""
    return _write(sandbox_id, [Sandbox.suspect_at.remove()], leaving & Sandbox.suspect_at.exists())


def requeue_dead_letter(sandbox_id: str, server: str) -> bool:
    """Still ``queued`` on ``server`` after its wake-up was dead-lettered: count it, to be woken again."""
    return _write(sandbox_id, [Sandbox.dead_letters.add(1), Sandbox.woken_at.set(utcnow())], queued_on(server))


def output_gone(sandbox_id: str) -> bool:
    """A finished sandbox whose stored output S3 no longer has (expired, deleted): say so in the row."""
    return _write(sandbox_id, [Sandbox.output_gone.set(True)], Sandbox.status.is_in(*FINAL_STATES))
