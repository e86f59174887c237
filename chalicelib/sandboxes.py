"""Creating, reading and listing sandboxes: the API's core, free of HTTP."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError

from chalicelib import aws, waiting
from chalicelib.auth import new_id, parse_basic, secret_matches
from chalicelib.errors import Conflict, InvalidInput, NotFound, Unauthorized, Unavailable
from chalicelib.files import bundle
from chalicelib.logs import log
from chalicelib.models import FINAL_STATES, App, Image, Sandbox, utcnow
from chalicelib.scheduling import choose_server
from chalicelib.settings import Settings
from chalicelib.validation import SandboxRequest, resolve_limits

logger = logging.getLogger("opendevelop.api")

MAX_PAGE = 100
DEFAULT_PAGE = 50
_CACHE_S = 5.0


class _TTLCache:
    """A tiny thread-safe cache for rows read on every request (apps, images)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        with self._lock:
            hit = self._rows.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            if len(self._rows) > 10_000:
                self._rows.clear()
            self._rows[key] = (time.monotonic(), value)


_apps = _TTLCache(_CACHE_S)
_images = _TTLCache(_CACHE_S)


def db_errors() -> Any:
    return aws.translated("the database")


def authenticate(settings: Settings, header: str | None) -> App:
    """The app whose id and secret the header carries, or ``Unauthorized``.

    App rows are cached for a few seconds.  A secret that does not match the
    cached row is checked again against a fresh read, so a rotated secret works
    at once (the old one keeps working until the cached row expires).
    """
    app_id, secret = parse_basic(header)
    cached = _apps.get(app_id)
    if cached is not None and secret_matches(settings.hmac_key, secret, cached.secret_hash):
        return cached
    try:
        with db_errors():
            app = App.get(app_id)
    except DoesNotExist:
        raise Unauthorized("unknown app id or wrong secret") from None
    except PynamoDBException as e:
        raise Unavailable(f"reading the app: {e}") from e
    _apps.put(app_id, app)
    if not secret_matches(settings.hmac_key, secret, app.secret_hash):
        raise Unauthorized("unknown app id or wrong secret")
    return app


def enabled_images() -> list[str]:
    try:
        return sorted(i.name for i in Image.scan() if i.enabled)
    except PynamoDBException as e:
        raise Unavailable(f"reading images: {e}") from e


def _image(name: str) -> Image:
    image = _images.get(name)
    if image is None:
        try:
            image = Image.get(name)
        except DoesNotExist:
            raise InvalidInput("image", f"unknown image {name!r} (see GET /api/images)") from None
        except PynamoDBException as e:
            raise Unavailable(f"reading the image: {e}") from e
        _images.put(name, image)
    if not image.enabled:
        raise InvalidInput("image", f"image {name!r} is disabled")
    return image


# Files (and stdin) this small travel in the sandbox's row: no S3 round trip to
# store them, none for the dispatcher to fetch them.  Larger ones go to S3.
INLINE_PAYLOAD_BYTES = 16 * 1024


def create(settings: Settings, app: App, req: SandboxRequest) -> Sandbox:
    """Validate against the app and the platform, store, and queue.  All or nothing."""
    image = _image(req.image)
    limits = resolve_limits(req.limits, app.limits or {}, settings)
    if req.network and not app.network:
        raise InvalidInput("network", "this app may not give its sandboxes network access")
    try:
        server = choose_server(image.docker_image, settings.heartbeat_ttl_s)
    except PynamoDBException as e:
        raise Unavailable(f"reading servers: {e}") from e
    if req.network and not server.network:
        raise InvalidInput("network", f"server {server.name!r} does not allow network access")
    sandbox_id = new_id()
    tar = bundle(req.files)
    payload = tar + req.stdin
    sandbox = Sandbox(
        sandbox_id,
        app_id=app.app_id,
        image=image.name,
        docker_image=image.docker_image,
        cmd=req.cmd,
        limits=limits,
        env=req.env,
        network=req.network,
        files_key=f"sandboxes/{sandbox_id}/input.tar" if len(payload) > INLINE_PAYLOAD_BYTES else None,
        files_inline=payload if 0 < len(payload) <= INLINE_PAYLOAD_BYTES else None,
        files_bytes=len(tar),
        stdin_bytes=len(req.stdin),
        file_count=len(req.files),
        status="queued",
        server=server.name,
    )
    if sandbox.files_key:
        aws.put_object(settings, sandbox.files_key, payload)
    try:
        sandbox.save(condition=Sandbox.sandbox_id.does_not_exist())
        aws.send_wakeup(settings, server.queue_url, sandbox_id)
    except (PynamoDBException, Unavailable) as e:
        _undo(settings, sandbox)
        raise Unavailable(f"storing the sandbox: {e}") from e
    log(
        logger,
        "sandbox.created",
        sandbox_id=sandbox_id,
        app_id=app.app_id,
        server=server.name,
        files=len(req.files),
        bytes=len(payload),
    )
    return sandbox


def _undo(settings: Settings, sandbox: Sandbox) -> None:
    """Best effort: leave nothing half-made behind a failed create."""
    try:
        sandbox.delete()
    except Exception:  # noqa: BLE001 - the original error is what the caller needs
        logger.exception("undo: could not delete sandbox row %s", sandbox.sandbox_id)
    if sandbox.files_key:
        try:
            aws.delete_objects(settings, [sandbox.files_key])
        except Exception:  # noqa: BLE001
            logger.exception("undo: could not delete files of %s", sandbox.sandbox_id)


MAX_WAIT_S = 20


def parse_wait(raw: str | None) -> float:
    """``?wait=N``: hold the request until the sandbox is settled or N seconds (at most 20) pass."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput("wait", f"{raw!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_WAIT_S or value != value:
        raise InvalidInput("wait", f"must be between 0 and {MAX_WAIT_S} seconds")
    return value


def wait_settled(app: App, sandbox_id: str, wait_s: float) -> Sandbox:
    """The sandbox, once it has left queued/running or ``wait_s`` has passed (see ``waiting``)."""
    return waiting.wait(get(app, sandbox_id), wait_s)


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
            sandbox.update(
                actions=[Sandbox.status.set("cancelled"), Sandbox.finished_at.set(utcnow())],
                condition=Sandbox.status == sandbox.status,
            )
        except UpdateError as e:
            if e.cause_response_code != "ConditionalCheckFailedException":
                raise Unavailable(f"cancelling the sandbox: {e}") from e
            sandbox = get(app, sandbox_id)  # it moved on meanwhile (claimed, finished): look again
            continue
        except PynamoDBException as e:
            raise Unavailable(f"cancelling the sandbox: {e}") from e
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


def _encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, app_id: str) -> dict[str, Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if key["app_id"]["S"] != app_id:
            raise ValueError("another app's cursor")
        return dict(key)
    except (ValueError, KeyError, TypeError):
        raise InvalidInput("cursor", "is not a cursor this API returned") from None


def parse_page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("limit", f"{raw!r} is not a whole number") from None
    if not 1 <= value <= MAX_PAGE:
        raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}")
    return value


def _iso(dt: Any) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def to_json(sb: Sandbox, settings: Settings | None = None) -> dict[str, Any]:
    """A sandbox as the API shows it: the original fields first, then ours.

    Output too large for the row lives in S3 (``output_key``) and is read back
    whole here, so clients never see the difference.
    """
    stdout: str | None = sb.stdout
    stderr: str | None = sb.stderr
    logs: str | None = sb.logs
    if sb.output_key and settings is not None:
        output = json.loads(aws.get_object(settings, sb.output_key))
        stdout, stderr, logs = output["stdout"] or None, output["stderr"] or None, output["logs"]
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
        "error": sb.error,
        "files": int(sb.file_count or 0),
        "created_at": _iso(sb.created_at),
        "started_at": _iso(sb.started_at),
        "finished_at": _iso(sb.finished_at),
        "duration_ms": duration,
        "server": sb.server,
    }
