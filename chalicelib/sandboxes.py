"""Creating, reading and listing sandboxes: the API's core, free of HTTP.

The functions that use what the API keeps between requests (cached rows, the
wait reader) take its ``Context`` (``chalicelib.context``).  ``to_json`` is a
pure serializer: the row holds everything it shows (see ``chalicelib.output``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from pynamodb.exceptions import DoesNotExist, PynamoDBException

from chalicelib import artifacts, aws, callbacks, lifecycle, output, quotas, releases
from chalicelib.auth import parse_basic, secret_matches
from chalicelib.context import Context
from chalicelib.errors import Conflict, Gone, InvalidInput, NotFound, Unauthorized, Unavailable
from chalicelib.logs import describe, log
from chalicelib.models import FINAL_STATES, App, Image, Sandbox
from chalicelib.plans import Plan, plan
from chalicelib.settings import Settings
from chalicelib.validation import SandboxRequest

logger = logging.getLogger("opendevelop.api")


def db_errors() -> Any:
    return aws.translated("the database")


def authenticate(ctx: Context, header: str | None) -> App:
    """The app whose id and secret the header carries, or ``Unauthorized``.

    App rows are cached for a few seconds.  A secret that does not match the
    cached row is checked again against a fresh read, so a rotated secret works
    at once (the old one keeps working until the cached row expires).
    """
    app_id, secret = parse_basic(header)
    cached = ctx.apps.get(app_id)
    if cached is not None and secret_matches(ctx.settings.hmac_key, secret, cached.secret_hash):
        return cached
    try:
        with db_errors():
            app = App.get(app_id)
    except DoesNotExist:
        raise Unauthorized("unknown app id or wrong secret") from None
    except PynamoDBException as e:
        raise Unavailable(f"reading the app: {e}") from e
    ctx.apps.put(app_id, app)
    if not secret_matches(ctx.settings.hmac_key, secret, app.secret_hash):
        raise Unauthorized("unknown app id or wrong secret")
    return app


def enabled_images() -> list[str]:
    try:
        return sorted(i.name for i in Image.scan() if i.enabled)
    except PynamoDBException as e:
        raise Unavailable(f"reading images: {e}") from e


def create(ctx: Context, app: App, req: SandboxRequest) -> Sandbox:
    """Validate against the app and the platform, count its quotas, store, and queue.  All or nothing."""
    p = plan(ctx, app, req)  # chalicelib.plans
    try:
        return _store(ctx, app, p)
    except BaseException:
        quotas.give_back(p.taken)
        raise


def _store(ctx: Context, app: App, p: Plan) -> Sandbox:
    settings = ctx.settings
    if p.fields["files_key"]:
        aws.put_object(settings, p.fields["files_key"], p.payload)
    try:
        sandbox = lifecycle.create(p.sandbox_id, p.server.name, **p.fields)
        if p.woken:
            aws.send_wakeup(settings, p.server.queue_url, p.sandbox_id)
    except (PynamoDBException, Unavailable) as e:
        _undo(settings, p.sandbox_id, p.fields["files_key"])
        raise Unavailable(f"storing the sandbox: {e}") from e
    if not p.woken:
        unpark(app.app_id, p.sandbox_id)
    log(
        logger,
        "sandbox.created",
        sandbox_id=p.sandbox_id,
        app_id=app.app_id,
        server=p.server.name,
        files=p.files,
        bytes=len(p.payload),
        parked=not p.woken,
        quota_ms=round(p.taken.ms, 1),  # the quotas' share of the create: one DynamoDB round trip
    )
    return sandbox


def unpark(app_id: str, sandbox_id: str | None = None) -> None:
    """After storing parked rows: wake what the app's share allows now.

    Parked rows are woken by the app's next settle; one may have come between
    the count and the rows' write and found nothing to wake: look once more.
    """
    try:
        releases.unpark(app_id)
    except PynamoDBException as e:
        log(logger, "quota.unpark_failed", logging.WARNING, sandbox_id=sandbox_id, app_id=app_id, error=describe(e))


def _undo(settings: Settings, sandbox_id: str, files_key: str | None) -> None:
    """Best effort: leave nothing half-made behind a failed create (the row may or may not have been stored)."""
    # The caller logs and answers the fault that brought us here; these lines say only what was left behind.
    try:
        Sandbox(sandbox_id).delete()
    except Exception as e:  # noqa: BLE001 - the original error is what the caller needs
        log(logger, "sandbox.undo_failed", logging.WARNING, sandbox_id=sandbox_id, left="row", error=describe(e))
    if files_key:
        try:
            aws.delete_objects(settings, [files_key])
        except Exception as e:  # noqa: BLE001
            log(logger, "sandbox.undo_failed", logging.WARNING, sandbox_id=sandbox_id, left="files", error=describe(e))


def wait_settled(ctx: Context, app: App, sandbox_id: str, wait_s: float) -> Sandbox:
    """The sandbox, once it has left queued/running or ``wait_s`` has passed (see ``waiting``)."""
    return ctx.reader.wait(get(app, sandbox_id), wait_s)


def get(app: App, sandbox_id: str) -> Sandbox:
    if not sandbox_id or len(sandbox_id) > 64 or not sandbox_id.isalnum():
        raise NotFound(f"no sandbox {sandbox_id[:64]!r}")
    try:
        sandbox = Sandbox.get(sandbox_id, consistent_read=True)
    except DoesNotExist:
        raise NotFound(f"no sandbox {sandbox_id!r}") from None
    except PynamoDBException as e:
        raise Unavailable(f"reading the sandbox: {e}") from e
    if sandbox.app_id != app.app_id:
        raise NotFound(f"no sandbox {sandbox_id!r}")  # exactly like one that does not exist
    return sandbox


def cancel(app: App, sandbox_id: str) -> Sandbox:
    """``queued`` or ``running`` -> ``cancelled``; ``Conflict`` when it has already finished.

    A queued sandbox then never runs: the dispatcher's claim requires ``queued``.
    A running one's dispatcher sees the new state within a second or so and
    kills the container; its result write requires ``running``, so it cannot
    overwrite ``cancelled``.
    """
    sandbox = get(app, sandbox_id)
    for _ in range(3):
        if sandbox.status in FINAL_STATES:
            raise Conflict(
                f"sandbox {sandbox_id!r} has already finished ({sandbox.status}); there is nothing to cancel"
            )
        try:
            cancelled = lifecycle.cancel(sandbox)
        except PynamoDBException as e:
            raise Unavailable(f"cancelling the sandbox: {e}") from e
        if not cancelled:
            sandbox = get(app, sandbox_id)  # it moved on meanwhile (claimed, finished): look again
            continue
        log(logger, "sandbox.cancelled", sandbox_id=sandbox_id, app_id=app.app_id, server=sandbox.server)
        return sandbox
    raise Unavailable(f"sandbox {sandbox_id!r} kept changing state; try again")


def list_page(app: App, limit: int, cursor: str | None) -> tuple[list[Sandbox], str | None]:
    """One page of the app's sandboxes, newest first, and the cursor of the next page."""
    start = _decode_cursor(cursor, app.app_id) if cursor else None
    try:
        result = Sandbox.by_app.query(
            app.app_id, scan_index_forward=False, limit=limit, last_evaluated_key=start, page_size=limit
        )
        items = list(result)
        last = result.last_evaluated_key
    except PynamoDBException as e:
        raise Unavailable(f"listing sandboxes: {e}") from e
    return items, _encode_cursor(last) if last and len(items) == limit else None


CURSOR_KEYS = {"app_id", "created_at", "sandbox_id"}  # the by_app index's key and the table's


def _encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, app_id: str) -> dict[str, Any]:
    # A cursor is small; a long one, or one that does not decode to our key's shape, was not ours.
    try:
        if len(cursor) > 2048 or not cursor.isascii():
            raise ValueError("not a cursor")
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(key, dict) or set(key) != CURSOR_KEYS or key["app_id"]["S"] != app_id:
            raise ValueError("another app's cursor")
        for value in key.values():  # {"name": {"S": "..."}} only, as DynamoDB's own keys
            if not isinstance(value, dict) or len(value) != 1 or not all(isinstance(v, str) for v in value.values()):
                raise ValueError("not a key")
            for v in value.values():
                v.encode("utf-8")
        return dict(key)
    except (ValueError, KeyError, TypeError, RecursionError):  # UnicodeError is a ValueError
        raise InvalidInput("cursor", "is not a cursor this API returned") from None


def show(settings: Settings, sb: Sandbox) -> dict[str, Any]:
    """One sandbox as JSON: each stream's first 64 KiB as text (never read from S3)."""
    return to_json(sb)


def show_many(settings: Settings, rows: list[Sandbox]) -> list[dict[str, Any]]:
    """Sandboxes as JSON, in order, each stream cut to ``output.LIST_PREVIEW_BYTES``: a page never reads S3."""
    return [to_json(sb, inline_bytes=output.LIST_PREVIEW_BYTES, listed=artifacts.LIST_PAGE_LISTED) for sb in rows]


def download(settings: Settings, app: App, sandbox_id: str, stream: str, range_header: str | None) -> output.Download:
    """One stream's exact bytes (or a redirect to them); ``Gone`` when storage lost them."""
    sb = get(app, sandbox_id)
    try:
        return output.download(settings, sb, stream, range_header)
    except Gone:
        try:
            lifecycle.output_gone(sandbox_id)
        except PynamoDBException as e:
            log(logger, "sandbox.output_gone_unrecorded", logging.WARNING, sandbox_id=sandbox_id, error=describe(e))
        raise


def artifacts_tar(settings: Settings, app: App, sandbox_id: str) -> output.Download:
    """All the sandbox's artifacts as one tar (or a redirect to it); 409 while it has not finished."""
    return artifacts.tar_download(settings, get(app, sandbox_id))


def artifact_file(
    settings: Settings, app: App, sandbox_id: str, name: str, range_header: str | None
) -> output.Download:
    """One artifact's bytes (or a redirect to them); 404 when the sandbox has no such artifact."""
    return artifacts.file_download(settings, get(app, sandbox_id), name, range_header)


# How often a held live tail looks for new output, and (in polls) re-reads the row.
TAIL_POLL_S = 0.1
TAIL_ROW_EVERY = 10


def tail(settings: Settings, app: App, sandbox_id: str, stream: str, offset: int, wait_s: float) -> dict[str, Any]:
    """The stream's text from byte ``offset``, held up to ``wait_s`` until there is some or the sandbox settles.

    ``next`` is the offset to ask for next; ``done`` says the sandbox has settled and
    everything up to its end has been answered.  ``data`` never ends in a cut
    UTF-8 character (the rest comes with the next answer).
    """
    sb = get(app, sandbox_id)
    deadline = time.monotonic() + wait_s
    polls = 0
    while True:
        settled = sb.status in FINAL_STATES
        if output.recorded(sb):
            data = output.read_stored(settings, sb, stream, offset, output.TAIL_BYTES)
            end = output.stored_size(sb, stream)
        else:
            # A chunk deleted as it is read (the result was just recorded) ends the read early
            # (output.read_live); the row, read again below, then says where the output is.
            data = output.read_live(settings, sandbox_id, stream, offset, output.TAIL_BYTES)
            end = offset + len(data)  # a settled sandbox with no recorded output: its chunks are all there is
        data = output.text_upto(data, final=settled and offset + len(data) >= end)
        done = settled and offset + len(data) >= end
        if data or done or time.monotonic() >= deadline:
            break
        time.sleep(TAIL_POLL_S)
        polls += 1
        if polls % TAIL_ROW_EVERY == 0:
            sb = _reread(sb)
    return {"data": data.decode("utf-8", errors="replace"), "offset": offset, "next": offset + len(data), "done": done}


def _reread(sb: Sandbox) -> Sandbox:
    try:
        return Sandbox.get(sb.sandbox_id, consistent_read=True)
    except DoesNotExist:
        raise NotFound(f"no sandbox {sb.sandbox_id!r}") from None
    except PynamoDBException as e:
        raise Unavailable(f"reading the sandbox: {e}") from e


def _iso(dt: Any) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def to_json(sb: Sandbox, inline_bytes: int = output.PREVIEW_BYTES, listed: int = artifacts.LISTED) -> dict[str, Any]:
    """A sandbox as the API shows it: the original fields first, then ours.  No I/O.

    ``stdout``, ``stderr`` and ``logs`` are text of at most ``inline_bytes``
    each; ``stdout_bytes`` and ``stderr_bytes`` are the streams' full sizes and
    ``inline_truncated`` says some text is shorter than its stream (the whole is
    at ``/stdout``, ``/stderr``).  ``artifacts`` lists at most ``listed`` of the
    ``artifacts_count`` files (all of them are in ``/artifacts``).
    """
    stdout, cut_out = output.clip(sb.stdout, inline_bytes)
    stderr, cut_err = output.clip(sb.stderr, inline_bytes)
    logs, cut_logs = output.clip(sb.logs, inline_bytes)
    duration = None
    if sb.started_at and sb.finished_at:
        duration = int((sb.finished_at - sb.started_at).total_seconds() * 1000)
    limits = sb.limits or {}
    return {
        "id": sb.sandbox_id,
        "status": sb.status,
        "image": sb.image,
        "cmd": json.dumps(list(sb.cmd)),
        "return_code": None if sb.return_code is None else int(sb.return_code),
        "logs": logs,
        "stdout": stdout,
        "stderr": stderr,
        "timeout": limits.get("timeout"),
        "limits": limits,
        "timed_out": bool(sb.timed_out),
        "oom_killed": bool(sb.oom_killed),
        "output_truncated": bool(sb.output_truncated),
        "stdout_bytes": _size(sb.stdout_bytes, sb.stdout),
        "stderr_bytes": _size(sb.stderr_bytes, sb.stderr),
        "logs_bytes": _size(sb.logs_bytes, sb.logs),
        "inline_truncated": bool(sb.inline_truncated) or cut_out or cut_err or cut_logs,
        "output_gone": bool(sb.output_gone),
        **artifacts.to_json(sb, listed),
        "error": sb.error,
        "files": int(sb.file_count or 0),
        "created_at": _iso(sb.created_at),
        "started_at": _iso(sb.started_at),
        "finished_at": _iso(sb.finished_at),
        "duration_ms": duration,
        "server": sb.server,
        "callback": callbacks.show(sb),
    }


def _size(stored: Any, text: str | None) -> int:
    """A stream's full size: as recorded, or (rows from before sizes were) its text's."""
    return int(stored) if stored is not None else len((text or "").encode())
