"""A sandbox's webhook as its row holds it: what a new row gets, how the API shows it.

Apart from ``webhooks`` (which delivers) so that the create path (``plans``)
and the serializer (``sandboxes``) need not import the delivery code, which
itself renders the sandbox's JSON with ``sandboxes``.
"""

from __future__ import annotations

from typing import Any

from chalicelib.models import Sandbox

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def fields(callback_url: str | None) -> dict[str, Any]:
    """What a new row holds of its webhook."""
    if not callback_url:
        return {}
    return dict(callback_url=callback_url, callback_status=PENDING, callback_attempts=0, callback_pending="1")


def show(sb: Sandbox) -> dict[str, Any] | None:
    """The sandbox's ``callback`` as the API shows it (None without a ``callback_url``)."""
    if not sb.callback_url:
        return None
    return {
        "url": sb.callback_url,
        "status": sb.callback_status or PENDING,
        "attempts": int(sb.callback_attempts or 0),
        "last_error": sb.callback_error,
    }
