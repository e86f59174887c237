"""The settle side of the quotas: what a settled sandbox gives back, and waking parked ones.

``chalicelib.quotas`` takes a create's counters; this module gives them back
when the sandbox settles (``release``: its concurrency slot and fair-share
place freed, the unused part of its reserved run seconds returned to its day),
wakes an app's parked sandboxes while it is below its fair share (``unpark``),
and frees what a dead settling process left held (``rederive_releases``, from
the row's ``release_pending`` mark, for the reconciler).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from typing import Any

from pynamodb.exceptions import PynamoDBException, UpdateError

from chalicelib.logs import describe, log
from chalicelib.models import FINAL_STATES, Counter, DockerServer, Sandbox, bound_settings, utcnow
from chalicelib.quotas import add, app_key, day_key, lost

logger = logging.getLogger("opendevelop.quotas")


def release(row: dict[str, Any], unmark: bool = False) -> None:
    """A sandbox settled (``row``: its attributes after the settling write, DynamoDB JSON).

    Its concurrency slot is freed, the unused part of its reserved run time
    given back to the day it was created on, and the time it ran added to it.
    Rows from before quotas (no ``quota_seconds``) held nothing and release nothing.
    ``unmark``: then remove the row's ``release_pending`` mark (the settling
    process does; ``rederive_releases`` removes it before, to own the release).
    """
    _release(row)
    sandbox_id = _s(row, "sandbox_id")
    if unmark and sandbox_id and "release_pending" in row:
        _unmark_release(sandbox_id)


def _release(row: dict[str, Any]) -> None:
    app_id = _s(row, "app_id")
    reserved = _n(row, "quota_seconds")
    if not app_id or reserved is None:
        return
    sandbox_id = _s(row, "sandbox_id") or ""
    if _s(row, "parked_app"):
        # Settled while parked (a cancel): it never had a wake-up.  Whoever removes its mark counts it.
        add(app_key(app_id), [Counter.active.add(-1)], Counter.active > 0)
        if _unmark(sandbox_id, Sandbox.status != "queued"):
            add(app_key(app_id), [Counter.parked.add(-1)], Counter.parked > 0)
    else:
        after = _add_read(app_key(app_id), [Counter.active.add(-1), Counter.woken.add(-1)], Counter.active > 0)
        if after is not None and (_n(after, "parked") or 0) > 0:
            unpark(app_id)
    created = _time(row, "created_at")
    if created is None:
        return
    ran = 0
    started, finished = _time(row, "started_at"), _time(row, "finished_at")
    if started and finished and finished > started:
        ran = min(math.ceil((finished - started).total_seconds()), int(reserved))
    add(day_key(app_id, created), [Counter.charged.add(ran - int(reserved)), Counter.run_seconds.add(ran)])


def _add_read(key: str, actions: list[Any], condition: Any = None) -> dict[str, Any] | None:
    """``_add``, answering the counter as it is after the write (None when the condition did not hold)."""
    try:
        response = Counter._get_connection().update_item(
            key, actions=actions, condition=condition, return_values="ALL_NEW"
        )
    except UpdateError as e:
        if lost(e):
            return None
        raise
    attributes: dict[str, Any] = (response or {}).get("Attributes") or {}
    return attributes


def _unmark(sandbox_id: str, condition: Any, actions: list[Any] | None = None) -> bool:
    """Remove a sandbox's parked mark if ``condition`` holds and it is still parked; whether this did."""
    try:
        Sandbox._get_connection().update_item(
            sandbox_id,
            actions=[Sandbox.parked_app.remove(), *(actions or [])],
            condition=Sandbox.parked_app.exists() & condition,
            return_values="NONE",
        )
    except UpdateError as e:
        if lost(e):
            return False
        raise
    return True


def unpark(app_id: str, most: int = 100) -> int:
    """Wake the app's oldest parked sandboxes while it is below its fair share; how many were woken.

    Safe to call any time, from anywhere (a settle, a create that parked, the
    reconciler): a place in the share is taken first (``woken < cap``, atomic),
    then the oldest parked row still ``queued`` is unmarked (conditional: one
    waker wins it) and its wake-up sent.  A place with no row to fill is given back.
    """
    from chalicelib import aws  # SQS; imported here: quotas is imported by lifecycle everywhere

    woke = 0
    while woke < most:
        if not add(app_key(app_id), [Counter.woken.add(1)], Counter.woken < Counter.cap):
            return woke
        sandbox = None
        for row in Sandbox.parked.query(app_id, scan_index_forward=True, limit=10, page_size=10):
            if row.status != "queued":
                if _unmark(row.sandbox_id, Sandbox.status != "queued"):  # settled while parked: count it once
                    add(app_key(app_id), [Counter.parked.add(-1)], Counter.parked > 0)
                continue
            if _unmark(row.sandbox_id, Sandbox.status == "queued", [Sandbox.woken_at.set(utcnow())]):
                sandbox = row
                break
        if sandbox is None:
            add(app_key(app_id), [Counter.woken.add(-1)], Counter.woken > 0)
            return woke
        add(app_key(app_id), [Counter.parked.add(-1)], Counter.parked > 0)
        woke += 1
        try:
            aws.send_wakeup(bound_settings(), _queue_url(sandbox.server), sandbox.sandbox_id)
        except Exception as e:  # noqa: BLE001 - queued and unmarked: the reconciler re-sends a lost wake-up
            log(logger, "quota.wake_failed", logging.WARNING, sandbox_id=sandbox.sandbox_id, error=describe(e))
        log(logger, "sandbox.unparked", sandbox_id=sandbox.sandbox_id, app_id=app_id, server=sandbox.server)
    return woke


# A server's queue URL, as last read (a wake-up per unpark would otherwise read the server's row
# each time).  A server deleted meanwhile fails the send: the reconciler re-sends lost wake-ups.
QUEUE_URL_TTL_S = 60.0
_queue_urls: dict[str, tuple[str, float]] = {}


def _queue_url(server: str) -> str:
    known = _queue_urls.get(server)
    if known and time.monotonic() < known[1]:
        return known[0]
    url = DockerServer.get(server).queue_url
    _queue_urls[server] = (url, time.monotonic() + QUEUE_URL_TTL_S)
    return url


def _s(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    return value.get("S") if isinstance(value, dict) else None


def _n(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    try:
        return float(value["N"]) if isinstance(value, dict) and "N" in value else None
    except ValueError:
        return None


def _time(row: dict[str, Any], name: str) -> datetime | None:
    text = _s(row, name)
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


# Releases a dead process left (the row's release_pending mark outlived its settle).

RELEASE_GRACE_S = 60  # a live settling process frees the quotas within milliseconds of its settle


def _unmark_release(sandbox_id: str) -> bool:
    """Remove the row's release mark; whether this call did (so exactly one caller owns a late release)."""
    try:
        Sandbox._get_connection().update_item(
            sandbox_id,
            actions=[Sandbox.release_pending.remove()],
            condition=Sandbox.release_pending.exists(),
            return_values="NONE",
        )
    except UpdateError as e:
        if lost(e):
            return False
        raise
    return True


def rederive_releases(errors: list[str], now: datetime | None = None, most: int = 100) -> int:
    """Free the quotas of sandboxes settled more than ``RELEASE_GRACE_S`` ago and never released
    (their settling process died first); how many.  The mark is removed first (one owner), then the
    counters are given back, so a process dying here leaves one slot too many free, never one held."""
    now = now or utcnow()
    done = 0
    try:
        rows = list(Sandbox.by_release.query("1", limit=most, page_size=most))
    except PynamoDBException as e:
        errors.append(f"reading unreleased sandboxes: {e}")
        return 0
    for row in rows:
        if row.finished_at is not None and (now - row.finished_at).total_seconds() < RELEASE_GRACE_S:
            continue
        try:
            item = Sandbox._get_connection().get_item(row.sandbox_id, consistent_read=True).get("Item") or {}
            if not item or _s(item, "status") not in FINAL_STATES or not _unmark_release(row.sandbox_id):
                continue
            _release(item)
            done += 1
            log(logger, "quota.released_late", sandbox_id=row.sandbox_id, app_id=_s(item, "app_id"))
        except Exception as e:  # noqa: BLE001 - the next pass tries again
            errors.append(f"releasing the quotas of {row.sandbox_id}: {describe(e)}")
    return done
