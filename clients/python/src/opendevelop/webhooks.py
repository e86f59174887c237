"""Checking a webhook OpenDevelop sent (Standard Webhooks signatures), with the standard library only.

    from opendevelop import verify_webhook
    sandbox = verify_webhook(request.headers, request.body, "whsec_...")  # the app's webhook secret

The signature is ``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``
keyed with the secret's base64 part; a timestamp more than ``tolerance`` seconds
from now is refused, so a captured request cannot be replayed later.  Every
attempt of one delivery carries the same ``webhook-id``: keep the ids you have
handled to drop repeats.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from opendevelop.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
TOLERANCE_S = 300


def verify_webhook(
    headers: Mapping[str, str], body: bytes | str, secret: str, *, tolerance: float = TOLERANCE_S
) -> dict[str, Any]:
    """The webhook's JSON (the sandbox, as ``GET`` shows it) if it is signed with ``secret``.

    Raises ``WebhookVerificationError`` otherwise.  ``body`` must be the bytes as
    received (parsing and re-encoding the JSON would change them).
    """
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs(time.time() - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    data = body.encode() if isinstance(body, str) else bytes(body)
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not whsec_<base64>") from None
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + data, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            try:
                parsed: dict[str, Any] = json.loads(data)
            except ValueError:
                raise WebhookVerificationError("the body is not JSON") from None
            return parsed
    raise WebhookVerificationError("no signature matches")
