"""``POST /api/sandboxes/batch``: many creates in one request, each checked as a single create is.

Every item is the JSON body of one ``POST /api/sandboxes``.  Each is validated
and planned on its own (``plans.plan``: image, limits, network, server);
an item that fails is answered ``{"error": {"Code", "Message"}}`` in its place
and stores nothing.  The valid ones are stored together: their large inputs in
S3, their rows with ``BatchWriteItem`` (25 to a call; the ids are random, 64
bits, so the create-only condition a single create writes with is not needed),
their wake-ups with ``SendMessageBatch`` per server (10 to a call).  A wake-up
SQS does not take is not lost work: the row is ``queued`` and the reconciler
re-sends lost wake-ups.  An item beyond the app's fair share is stored parked
(no wake-up), as a single create's would be.  If storing the rows fails, the
whole request is a 503: what was stored is removed and every quota given back.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from pynamodb.exceptions import PynamoDBException

from chalicelib import aws, lifecycle, plans, quotas, sandboxes
from chalicelib.context import Context
from chalicelib.errors import InvalidInput, OpenDevelopError, PayloadTooLarge, Unavailable, UnsupportedMediaType
from chalicelib.logs import describe, log
from chalicelib.models import App, Sandbox
from chalicelib.validation import from_json, load_json, media_type

logger = logging.getLogger("opendevelop.api")
MAX_ITEMS = 100


def parse(content_type: str | None, body: bytes, max_bytes: int) -> list[Any]:
    """The body's items (each still the JSON of one create), or a 4xx for the body as a whole."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body: {len(body)} bytes is more than the limit of {max_bytes}")
    if media_type(content_type) != "application/json":
        raise UnsupportedMediaType('Content-Type: a batch is application/json: {"sandboxes": [...]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("body", "is not valid UTF-8") from None
    data = load_json("body", text)
    if not isinstance(data, dict) or set(data) != {"sandboxes"}:
        raise InvalidInput("body", 'must be {"sandboxes": [<the JSON body of one create>, ...]}')
    items = data["sandboxes"]
    if not isinstance(items, list) or not items:
        raise InvalidInput("sandboxes", "must be a non-empty list of create bodies")
    if len(items) > MAX_ITEMS:
        raise InvalidInput("sandboxes", f"{len(items)} items: a batch holds at most {MAX_ITEMS}")
    return list(items)


def _error(e: OpenDevelopError, where: str) -> dict[str, Any]:
    message = f"{where}.{e.message}" if isinstance(e, InvalidInput) else e.message
    return {"error": {"Code": e.code, "Message": message}}


def create(ctx: Context, app: App, items: list[Any]) -> tuple[list[dict[str, Any]], bool]:
    """Create the valid items; (each item's sandbox JSON or error, in order; whether any failed).

    Each item takes its quotas as a single create does (``plans.plan``): an
    item over a quota is answered 429's error in its place, having counted
    nothing.  If the request fails as a whole, every quota taken is given back.
    """
    answers: list[dict[str, Any] | None] = [None] * len(items)
    planned: list[tuple[int, plans.Plan]] = []
    try:
        for i, item in enumerate(items):
            where = f"sandboxes[{i}]"
            try:
                planned.append((i, plans.plan(ctx, app, from_json(item, ctx.settings, where))))
            except Unavailable:
                raise  # the platform, not the item: the whole request is a 503
            except OpenDevelopError as e:
                answers[i] = _error(e, where)
        stored = _store(ctx, app, [p for _, p in planned])
    except BaseException:
        for _, p in planned:
            quotas.give_back(p.taken)
        raise
    for (i, _), row in zip(planned, stored, strict=True):
        answers[i] = sandboxes.to_json(row)
    log(logger, "sandbox.batch_created", app_id=app.app_id, created=len(planned), refused=len(items) - len(planned))
    return [a for a in answers if a is not None], len(planned) < len(items)


def _store(ctx: Context, app: App, planned: list[plans.Plan]) -> list[Any]:
    settings = ctx.settings
    rows = [p.row() for p in planned]
    keys = [p.fields["files_key"] for p in planned if p.fields["files_key"]]
    try:
        for p in planned:
            if p.fields["files_key"]:
                aws.put_object(settings, p.fields["files_key"], p.payload)
        lifecycle.create_many(rows)
    except (PynamoDBException, Unavailable) as e:
        _undo(ctx, [p.sandbox_id for p in planned], keys)
        raise Unavailable(f"storing the sandboxes: {e}") from e
    by_queue: dict[str, list[str]] = defaultdict(list)
    for p in planned:
        if p.woken:  # the others are parked: the app's settles wake them (releases.unpark)
            by_queue[p.server.queue_url].append(p.sandbox_id)
    for queue_url, ids in by_queue.items():
        try:
            left = aws.send_wakeups(settings, queue_url, ids)
        except Unavailable as e:
            left = ids
            log(logger, "sandbox.batch_wakeups_failed", logging.WARNING, sandboxes=len(ids), error=describe(e))
        if left:  # stored queued: the reconciler wakes them (lost wake-ups)
            log(logger, "sandbox.batch_wakeups_left", logging.WARNING, sandboxes=len(left))
    if any(not p.woken for p in planned):
        sandboxes.unpark(app.app_id)
    return rows


def _undo(ctx: Context, ids: list[str], keys: list[str]) -> None:
    try:
        lifecycle.delete_many(ids)
    except Exception as e:  # noqa: BLE001 - the caller answers the fault that brought us here
        log(logger, "sandbox.undo_failed", logging.WARNING, sandboxes=len(ids), left="rows", error=describe(e))
    try:
        aws.delete_objects(ctx.settings, keys)
    except Exception as e:  # noqa: BLE001
        log(logger, "sandbox.undo_failed", logging.WARNING, sandboxes=len(ids), left="files", error=describe(e))


def get_many(ctx: Context, app: App, ids: list[str], wait_s: float) -> list[Sandbox]:
    """The app's sandboxes among ``ids`` (others, and unknown ids, simply absent), in the order asked.

    One ``BatchGetItem``; with ``wait_s``, held until all have settled or it passes (``waiting``).
    """
    try:
        rows = {sb.sandbox_id: sb for sb in Sandbox.batch_get(ids, consistent_read=True)}
    except PynamoDBException as e:
        raise Unavailable(f"reading the sandboxes: {e}") from e
    mine = [rows[i] for i in ids if i in rows and rows[i].app_id == app.app_id]
    return ctx.reader.wait_all(mine, wait_s) if wait_s > 0 else mine


def show_many(ctx: Context, app: App, ids: list[str], wait_s: float) -> list[dict[str, Any]]:
    """``GET /api/sandboxes?ids=``: the app's own among ``ids``, in order, as a list page shows them."""
    return sandboxes.show_many(ctx.settings, get_many(ctx, app, ids, wait_s))
