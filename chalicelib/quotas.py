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

A create takes its quotas at once (three independent writes in flight
together) and gives back what it took if another refuses (or storing the
sandbox fails).  While a refused create gives back, it briefly holds what it
took: a create racing it may be refused for that moment, never overcounted.  Limits: the app's own
(``manage.py app-set-limits --concurrency/--rate/--daily_seconds``), else the
settings' defaults; 0 is no limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.exceptions import UpdateError

from chalicelib.errors import InvalidInput, QuotaExceeded
from chalicelib.logs import describe, log
from chalicelib.models import App, Counter, Sandbox, utcnow
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


def lost(e: Exception) -> bool:
    return getattr(e, "cause_response_code", None) == "ConditionalCheckFailedException" or (
        "ConditionalCheckFailed" in str(e)
    )


def add(key: str, actions: list[Any], condition: Any = None) -> bool:
    """One atomic update of a counter; False when its condition (the quota) did not hold."""
    try:
        Counter._get_connection().update_item(key, actions=actions, condition=condition, return_values="NONE")
    except UpdateError as e:
        if lost(e):
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
    ms: float = 0.0  # how long taking them took (the create's log shows it)


def take(app: App, settings: Settings, timeout_s: float, now: datetime | None = None, share: int = 0) -> Taken:
    """Count one more sandbox of ``app`` against its quotas, or raise ``QuotaExceeded`` having counted nothing.

    The three counters are independent, so their writes go out at once: a
    create waits for one DynamoDB round trip here, not three.  If any refuses
    (or fails), what the others took is given back and the first refusal in
    the order rate, concurrency, daily_seconds is raised.
    """
    now = now or utcnow()
    limits = limits_of(app, settings)
    taken = Taken(app.app_id, now, math.ceil(timeout_s))
    steps = [step for step in (_take_rate, _take_slot, _take_day) if step is not _take_rate or limits["rate"]]
    started = time.perf_counter()
    _ = Counter._get_connection().connection.client  # made here: botocore's client creation is not thread safe
    futures = [_POOL.submit(_attempt, step, taken, limits, share) for step in steps[1:]]
    problems = [_attempt(steps[0], taken, limits, share), *(f.result() for f in futures)]
    taken.ms = (time.perf_counter() - started) * 1000
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        give_back(taken)
        raise problem
    return taken


# Threads for a create's counter writes (a few per create in flight; more creates queue for them).
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="quotas")


def _attempt(step: Callable[[Taken, dict[str, int], int], None], *args: Any) -> BaseException | None:
    try:
        step(*args)
    except BaseException as e:  # noqa: BLE001 - answered to ``take``, which gives back and raises it
        return e
    return None


def _take_rate(taken: Taken, limits: dict[str, int], share: int) -> None:
    now = taken.at
    window_end = (int(now.timestamp()) // 60 + 1) * 60
    expires = datetime.fromtimestamp(window_end + 3600, UTC)
    if not add(
        minute_key(taken.app_id, now),
        [Counter.n.add(1), Counter.expires_at.set(expires)],
        _below(Counter.n, limits["rate"]),
    ):
        retry = max(1, math.ceil(window_end - now.timestamp()))
        raise _exceeded("rate", limits["rate"], "sandboxes created per minute", retry)
    taken.rate = True


def _take_slot(taken: Taken, limits: dict[str, int], share: int) -> None:
    concurrency = limits["concurrency"]
    within = _below(Counter.active, concurrency) if concurrency else None
    # One write in the common case: a slot, and a place in the app's fair share.  Without a
    # place (the app has ``share`` woken already), the slot alone: the sandbox is stored parked.
    # An app with sandboxes parked parks the new one too: they are woken oldest first.
    in_share = _below(Counter.woken, share) & (Counter.parked.does_not_exist() | (Counter.parked <= 0))
    both = in_share if within is None else within & in_share
    cap = Counter.cap.set(share)
    key = app_key(taken.app_id)
    if share and add(key, [Counter.active.add(1), Counter.woken.add(1), cap], both):
        taken.woken = True
    elif not share and add(key, [Counter.active.add(1), Counter.woken.add(1), cap], within):
        taken.woken = True
    elif not share or not add(key, [Counter.active.add(1), Counter.parked.add(1), cap], within):
        raise _exceeded(
            "concurrency",
            concurrency,
            "sandboxes queued or running at once",
            CONCURRENCY_RETRY_S,
            "a slot frees when one of them finishes",
        )
    taken.concurrency = True


def _take_day(taken: Taken, limits: dict[str, int], share: int) -> None:
    now, daily = taken.at, limits["daily_seconds"]
    condition = None
    if daily:
        # charged + this run's timeout <= daily, as a condition DynamoDB can evaluate.
        condition = Counter.charged.does_not_exist() | (Counter.charged <= daily - taken.seconds)
    if (daily and taken.seconds > daily) or not add(
        day_key(taken.app_id, now),
        [Counter.charged.add(taken.seconds), Counter.sandboxes.add(1), Counter.expires_at.set(now + timedelta(40))],
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
            add(key, actions, condition)
        except Exception as e:  # noqa: BLE001
            log(logger, "quota.give_back_failed", logging.ERROR, app_id=taken.app_id, counter=key, error=describe(e))


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
