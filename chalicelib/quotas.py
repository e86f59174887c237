"""Per-app quotas: sandboxes at once, creates per minute, run seconds per UTC day.

Every counter lives in DynamoDB (the ``Counter`` table) and changes only by an
atomic ``ADD`` whose condition is the quota, so any number of API processes
(and dispatchers, and the reconciler, which release) share them without
overshooting:

* ``concurrency``: ``app#<id>`` ``active`` +1 at create, if below the limit;
  -1 when the sandbox settles (``lifecycle.record``/``fail``/``cancel``, whoever
  wins the transition), so every settling path releases it exactly once.
* ``rate``: ``app#<id>#m#<minute>`` ``n`` +1 at create, if below the limit (a
  fixed one-minute window; the item expires by TTL).
* ``daily_seconds``: ``app#<id>#d#<day>`` ``charged`` += the sandbox's timeout
  at create, if that keeps it within the limit (the run is reserved whole, so
  running sandboxes can never overshoot the day); at settle the unused part is
  given back and the run's real seconds added to ``run_seconds``.  A sandbox
  counts against the day it was created on.

A create takes its quotas in that order and gives back what it took if a
later one (or storing the sandbox) fails.  Limits: the app's own
(``manage.py app-set-limits --concurrency/--rate/--daily_seconds``), else the
settings' defaults; 0 is no limit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.exceptions import UpdateError

from chalicelib.errors import InvalidInput, QuotaExceeded
from chalicelib.logs import describe, log
from chalicelib.models import App, Counter, DockerServer, Sandbox, bound_settings, utcnow
from chalicelib.settings import QUOTA_DEFAULTS, Settings

QUOTAS = tuple(QUOTA_DEFAULTS)
logger = logging.getLogger("opendevelop.quotas")
# When a sandbox frees a concurrency slot is not known; a client should look again this soon.
CONCURRENCY_RETRY_S = 5


def limits_of(app: App, settings: Settings) -> dict[str, int]:
    own = app.quotas or {}
    return {name: int(own.get(name, settings.quotas.get(name, QUOTA_DEFAULTS[name]))) for name in QUOTAS}


def app_key(app_id: str) -> str:
    return f"app#{app_id}"


def minute_key(app_id: str, now: datetime) -> str:
    return f"app#{app_id}#m#{int(now.timestamp()) // 60}"


def day_key(app_id: str, day: datetime) -> str:
    return f"app#{app_id}#d#{day.astimezone(UTC).date().isoformat()}"


def _lost(e: Exception) -> bool:
    return getattr(e, "cause_response_code", None) == "ConditionalCheckFailedException" or (
        "ConditionalCheckFailed" in str(e)
    )


def _add(key: str, actions: list[Any], condition: Any = None) -> bool:
    """One atomic update of a counter; False when its condition (the quota) did not hold."""
    try:
        Counter._get_connection().update_item(key, actions=actions, condition=condition, return_values="NONE")
    except UpdateError as e:
        if _lost(e):
            return False
        raise
    return True


def _below(attribute: Any, limit: float) -> Any:
    return attribute.does_not_exist() | (attribute < limit)


@dataclass
class Taken:
    """What a create took, to give back if the create fails after all."""

    app_id: str
    at: datetime
    seconds: int
    rate: bool = False
    concurrency: bool = False
    day: bool = False
    woken: bool = False  # within the app's fair share: wake it now (else it is stored parked)


def take(app: App, settings: Settings, timeout_s: float, now: datetime | None = None, share: int = 0) -> Taken:
    """Count one more sandbox of ``app`` against its quotas, or raise ``QuotaExceeded`` having counted nothing."""
    now = now or utcnow()
    limits = limits_of(app, settings)
    taken = Taken(app.app_id, now, math.ceil(timeout_s))
    try:
        if limits["rate"]:
            window_end = (int(now.timestamp()) // 60 + 1) * 60
            expires = datetime.fromtimestamp(window_end + 3600, UTC)
            if not _add(
                minute_key(app.app_id, now),
                [Counter.n.add(1), Counter.expires_at.set(expires)],
                _below(Counter.n, limits["rate"]),
            ):
                retry = max(1, math.ceil(window_end - now.timestamp()))
                raise _exceeded("rate", limits["rate"], "sandboxes created per minute", retry)
            taken.rate = True
        concurrency = limits["concurrency"]
        within = _below(Counter.active, concurrency) if concurrency else None
        # One write in the common case: a slot, and a place in the app's fair share.  Without a
        # place (the app has ``share`` woken already), the slot alone: the sandbox is stored parked.
        # An app with sandboxes parked parks the new one too: they are woken oldest first.
        in_share = _below(Counter.woken, share) & (Counter.parked.does_not_exist() | (Counter.parked <= 0))
        both = in_share if within is None else within & in_share
        cap = Counter.cap.set(share)
        if share and _add(app_key(app.app_id), [Counter.active.add(1), Counter.woken.add(1), cap], both):
            taken.woken = True
        elif not share and _add(app_key(app.app_id), [Counter.active.add(1), Counter.woken.add(1), cap], within):
            taken.woken = True
        elif not share or not _add(app_key(app.app_id), [Counter.active.add(1), Counter.parked.add(1), cap], within):
            raise _exceeded(
                "concurrency",
                concurrency,
                "sandboxes queued or running at once",
                CONCURRENCY_RETRY_S,
                "a slot frees when one of them finishes",
            )
        taken.concurrency = True
        daily = limits["daily_seconds"]
        condition = None
        if daily:
            # charged + this run's timeout <= daily, as a condition DynamoDB can evaluate.
            condition = Counter.charged.does_not_exist() | (Counter.charged <= daily - taken.seconds)
        if (daily and taken.seconds > daily) or not _add(
            day_key(app.app_id, now),
            [
                Counter.charged.add(taken.seconds),
                Counter.sandboxes.add(1),
                Counter.expires_at.set(now + timedelta(days=40)),
            ],
            condition,
        ):
            tomorrow = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
            raise _exceeded(
                "daily_seconds",
                daily,
                "seconds of run time per UTC day (each sandbox reserves its timeout)",
                max(1, math.ceil((tomorrow - now).total_seconds())),
            )
        taken.day = True
    except BaseException:
        give_back(taken)
        raise
    return taken


def _exceeded(quota: str, limit: int, what: str, retry_after: int, frees: str = "") -> QuotaExceeded:
    when = frees or f"it frees in {retry_after} s"
    return QuotaExceeded(f"{quota}: this app's limit is {limit} {what}; {when}", retry_after=retry_after)


def give_back(taken: Taken) -> None:
    """Undo a create's ``take`` (the create failed after it): nothing was stored, nothing ran.

    Best effort: the create's own failure is what its caller answers.
    """
    undo: list[tuple[str, list[Any], Any]] = []
    if taken.day:
        undo.append(
            (day_key(taken.app_id, taken.at), [Counter.charged.add(-taken.seconds), Counter.sandboxes.add(-1)], None)
        )
    if taken.concurrency:
        lane = Counter.woken if taken.woken else Counter.parked
        undo.append((app_key(taken.app_id), [Counter.active.add(-1), lane.add(-1)], Counter.active > 0))
    if taken.rate:
        undo.append((minute_key(taken.app_id, taken.at), [Counter.n.add(-1)], Counter.n > 0))
    for key, actions, condition in undo:
        try:
            _add(key, actions, condition)
        except Exception as e:  # noqa: BLE001
            log(logger, "quota.give_back_failed", logging.ERROR, app_id=taken.app_id, counter=key, error=describe(e))


def release(row: dict[str, Any]) -> None:
    """A sandbox settled (``row``: its attributes after the settling write, DynamoDB JSON).

    Its concurrency slot is freed, the unused part of its reserved run time
    given back to the day it was created on, and the time it ran added to it.
    Rows from before quotas (no ``quota_seconds``) held nothing and release nothing.
    """
    app_id = _s(row, "app_id")
    reserved = _n(row, "quota_seconds")
    if not app_id or reserved is None:
        return
    sandbox_id = _s(row, "sandbox_id") or ""
    if _s(row, "parked_app"):
        # Settled while parked (a cancel): it never had a wake-up.  Whoever removes its mark counts it.
        _add(app_key(app_id), [Counter.active.add(-1)], Counter.active > 0)
        if _unmark(sandbox_id, Sandbox.status != "queued"):
            _add(app_key(app_id), [Counter.parked.add(-1)], Counter.parked > 0)
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
    _add(day_key(app_id, created), [Counter.charged.add(ran - int(reserved)), Counter.run_seconds.add(ran)])


def _add_read(key: str, actions: list[Any], condition: Any = None) -> dict[str, Any] | None:
    """``_add``, answering the counter as it is after the write (None when the condition did not hold)."""
    try:
        response = Counter._get_connection().update_item(
            key, actions=actions, condition=condition, return_values="ALL_NEW"
        )
    except UpdateError as e:
        if _lost(e):
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
        if _lost(e):
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
        if not _add(app_key(app_id), [Counter.woken.add(1)], Counter.woken < Counter.cap):
            return woke
        sandbox = None
        for row in Sandbox.parked.query(app_id, scan_index_forward=True, limit=10, page_size=10):
            if row.status != "queued":
                if _unmark(row.sandbox_id, Sandbox.status != "queued"):  # settled while parked: count it once
                    _add(app_key(app_id), [Counter.parked.add(-1)], Counter.parked > 0)
                continue
            if _unmark(row.sandbox_id, Sandbox.status == "queued", [Sandbox.woken_at.set(utcnow())]):
                sandbox = row
                break
        if sandbox is None:
            _add(app_key(app_id), [Counter.woken.add(-1)], Counter.woken > 0)
            return woke
        _add(app_key(app_id), [Counter.parked.add(-1)], Counter.parked > 0)
        woke += 1
        try:
            settings = bound_settings()
            aws.send_wakeup(settings, DockerServer.get(sandbox.server).queue_url, sandbox.sandbox_id)
        except Exception as e:  # noqa: BLE001 - queued and unmarked: the reconciler re-sends a lost wake-up
            log(logger, "quota.wake_failed", logging.WARNING, sandbox_id=sandbox.sandbox_id, error=describe(e))
        log(logger, "sandbox.unparked", sandbox_id=sandbox.sandbox_id, app_id=app_id, server=sandbox.server)
    return woke


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


def usage(app: App, settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """What ``GET /api/usage`` and ``manage.py app-usage`` show: now, today, and the limits."""
    now = now or utcnow()
    counts = {}
    for status in ("running", "queued"):
        counts[status] = sum(1 for _ in Sandbox.by_status.query(status, filter_condition=Sandbox.app_id == app.app_id))
    try:
        day = Counter.get(day_key(app.app_id, now), consistent_read=True)
        today = {"sandboxes": int(day.sandboxes or 0), "run_seconds": int(day.run_seconds or 0)}
    except Counter.DoesNotExist:
        today = {"sandboxes": 0, "run_seconds": 0}
    return {**counts, "today": today, "limits": limits_of(app, settings)}


def check_quotas(quotas: dict[str, Any]) -> dict[str, int]:
    """Quotas an operator sets: whole numbers, 0 for no limit."""
    out = {}
    for name, value in quotas.items():
        if value is None:
            continue
        if name not in QUOTAS:
            raise InvalidInput(name, f"unknown quota; known quotas are {', '.join(QUOTAS)}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise InvalidInput(name, f"{value!r} is not a whole number (0 is no limit)") from None
        if number < 0:
            raise InvalidInput(name, f"{number} is below 0 (0 is no limit)")
        out[name] = number
    return out
