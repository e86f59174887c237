"""``POST /api/sandboxes/batch``: many creates in one request, each checked as a single create is.

Every item is the JSON body of one ``POST /api/sandboxes``.  Each is validated
and planned on its own (``sandboxes.plan``: image, limits, network, server);
an item that fails is answered ``{"error": {"Code", "Message"}}`` in its place
and stores nothing.  The valid ones are stored together: their large inputs in
S3, their rows with ``BatchWriteItem`` (25 to a call; the ids are random, 64
bits, so the create-only condition a single create writes with is not needed),
their wake-ups with ``SendMessageBatch`` per server (10 to a call).  A wake-up
SQS does not take is not lost work: the row is ``queued`` and the reconciler
re-sends lost wake-ups.  If storing the rows fails, the whole request is a 503
and what was stored is removed.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from pynamodb.exceptions import PynamoDBException

from chalicelib import aws, lifecycle, sandboxes
from chalicelib.context import Context
from chalicelib.errors import InvalidInput, OpenDevelopError, PayloadTooLarge, Unavailable
from chalicelib.logs import describe, log
from chalicelib.models import App
from chalicelib.validation import from_json, media_type

logger = logging.getLogger("opendevelop.api")
MAX_ITEMS = 100


def parse(content_type: str | None, body: bytes, max_bytes: int) -> list[Any]:
    """The body's items (each still the JSON of one create), or a 4xx for the body as a whole."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body: {len(body)} bytes is more than the limit of {max_bytes}")
    if media_type(content_type) != "application/json":
        from chalicelib.errors import UnsupportedMediaType

        raise UnsupportedMediaType('Content-Type: a batch is application/json: {"sandboxes": [...]}')
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidInput("body", f"malformed JSON: {e}"[:200]) from None
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
    """Create the valid items; (each item's sandbox JSON or error, in order; whether any failed)."""
    answers: list[dict[str, Any] | None] = [None] * len(items)
    plans: list[tuple[int, sandboxes.Plan]] = []
    for i, item in enumerate(items):
        where = f"sandboxes[{i}]"
        try:
            plans.append((i, sandboxes.plan(ctx, app, from_json(item, ctx.settings, where))))
        except Unavailable:
            raise  # the platform, not the item: the whole request is a 503
        except OpenDevelopError as e:
            answers[i] = _error(e, where)
    stored = _store(ctx, [p for _, p in plans])
    for (i, _), row in zip(plans, stored, strict=True):
        answers[i] = sandboxes.to_json(row)
    log(logger, "sandbox.batch_created", app_id=app.app_id, created=len(plans), refused=len(items) - len(plans))
    return [a for a in answers if a is not None], len(plans) < len(items)


def _store(ctx: Context, plans: list[sandboxes.Plan]) -> list[Any]:
    settings = ctx.settings
    rows = [p.row() for p in plans]
    keys = [p.fields["files_key"] for p in plans if p.fields["files_key"]]
    try:
        for p in plans:
            if p.fields["files_key"]:
                aws.put_object(settings, p.fields["files_key"], p.payload)
        lifecycle.create_many(rows)
    except (PynamoDBException, Unavailable) as e:
        _undo(ctx, [p.sandbox_id for p in plans], keys)
        raise Unavailable(f"storing the sandboxes: {e}") from e
    by_queue: dict[str, list[str]] = defaultdict(list)
    for p in plans:
        by_queue[p.server.queue_url].append(p.sandbox_id)
    for queue_url, ids in by_queue.items():
        try:
            left = aws.send_wakeups(settings, queue_url, ids)
        except Unavailable as e:
            left = ids
            log(logger, "sandbox.batch_wakeups_failed", logging.WARNING, sandboxes=len(ids), error=describe(e))
        if left:  # stored queued: the reconciler wakes them (lost wake-ups)
            log(logger, "sandbox.batch_wakeups_left", logging.WARNING, sandboxes=len(left))
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


def show_many(ctx: Context, app: App, ids: list[str], wait_s: float) -> list[dict[str, Any]]:
    """``GET /api/sandboxes?ids=``: the app's own among ``ids``, in order (``sandboxes.get_many``)."""
    return sandboxes.show_many(ctx.settings, sandboxes.get_many(ctx, app, ids, wait_s))
