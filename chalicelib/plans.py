"""A create, checked and counted before anything is stored: ``plan`` makes a ``Plan``.

A single create (``sandboxes.create``) and each item of a batch
(``batches.create``) are planned here the same way: the image (cached rows),
the limits against the app's and the platform's ceilings, network and
webhook permissions, the server, and the app's quotas and fair share
(``quotas.take``).  The caller stores the plan, or gives its quotas back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pynamodb.exceptions import DoesNotExist, PynamoDBException

from chalicelib import callbacks, quotas, scheduling
from chalicelib.auth import new_id
from chalicelib.context import Context
from chalicelib.errors import InvalidInput, Unavailable
from chalicelib.files import bundle
from chalicelib.models import App, DockerServer, Image, Sandbox
from chalicelib.validation import SandboxRequest, resolve_limits


def _image(ctx: Context, name: str) -> Image:
    image = ctx.images.get(name)
    if image is None:
        try:
            image = Image.get(name)
        except DoesNotExist:
            raise InvalidInput("image", f"unknown image {name!r} (see GET /api/images)") from None
        except PynamoDBException as e:
            raise Unavailable(f"reading the image: {e}") from e
        ctx.images.put(name, image)
    if not image.enabled:
        raise InvalidInput("image", f"image {name!r} is disabled")
    return image


# Files (and stdin) this small travel in the sandbox's row: no S3 round trip to
# store them, none for the dispatcher to fetch them.  Larger ones go to S3.
INLINE_PAYLOAD_BYTES = 16 * 1024


@dataclass
class Plan:
    """A create checked against the app and the platform, its quotas taken, before anything is stored."""

    sandbox_id: str
    server: DockerServer
    fields: dict[str, Any]
    payload: bytes  # the files' tar and stdin: stored in S3 at ``fields["files_key"]`` when large
    taken: quotas.Taken  # given back (``quotas.give_back``) if it is not stored after all
    files: int

    @property
    def woken(self) -> bool:
        """Within the app's fair share: woken at once (else stored parked, woken by the app's settles)."""
        return bool(self.taken.woken)

    def row(self) -> Sandbox:
        return Sandbox(self.sandbox_id, status="queued", server=self.server.name, **self.fields)


def plan(ctx: Context, app: App, req: SandboxRequest) -> Plan:
    """Check ``req`` against the app and the platform, choose its server and take its quotas; store nothing.

    ``QuotaExceeded`` (a 429) having counted nothing; a caller that does not
    store the plan gives its quotas back.
    """
    settings = ctx.settings
    image = _image(ctx, req.image)
    limits = resolve_limits(req.limits, app.limits or {}, settings)
    if req.network and not app.network:
        raise InvalidInput("network", "this app may not give its sandboxes network access")
    if req.callback_url and not app.webhook_secret:
        raise InvalidInput("callback_url", "this app has no webhook secret yet (manage.py app-rotate-webhook-secret)")
    try:
        server = scheduling.choose_server(image.docker_image, settings.heartbeat_ttl_s, scheduling.servers(ctx))
    except PynamoDBException as e:
        raise Unavailable(f"reading servers: {e}") from e
    if req.network and not server.network:
        raise InvalidInput("network", f"server {server.name!r} does not allow network access")
    share = settings.fair_share or sum(int(s.slots) for s in scheduling.servers(ctx) if s.state == "active")
    try:
        taken = quotas.take(app, settings, limits["timeout"], share=max(1, share))
    except PynamoDBException as e:
        raise Unavailable(f"counting the app's quotas: {e}") from e
    try:
        sandbox_id = new_id()
        tar = bundle(req.files)
        payload = tar + req.stdin
        fields: dict[str, Any] = dict(
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
            quota_seconds=taken.seconds,
            parked_app=None if taken.woken else app.app_id,
            **callbacks.fields(req.callback_url),
        )
    except BaseException:
        quotas.give_back(taken)
        raise
    return Plan(sandbox_id, server, fields, payload, taken, len(req.files))
