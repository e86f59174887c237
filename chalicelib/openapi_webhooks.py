"""The OpenAPI description of webhooks (``callback_url``) and batches: schemas and the ``webhooks`` section.

Beside ``openapi_schemas`` (the sandbox and its request) so each stays short;
``openapi.document`` puts these in the document.
"""

from __future__ import annotations

from typing import Any

from chalicelib.batches import MAX_ITEMS
from chalicelib.params import MAX_IDS
from chalicelib.webhook_targets import MAX_URL

CALLBACK_URL_DOC = (
    f"Where to POST the sandbox once it has settled (`terminated`, `error`, `cancelled`): an http(s) URL of at "
    f"most {MAX_URL} characters, without credentials. The request is signed (see `webhooks.sandboxSettled`). "
    "Loopback, private, link-local, multicast and reserved addresses and the platform's own endpoints are "
    "refused (an address written in the URL at once, with a 400; a name when it is resolved, at delivery) "
    "unless the operator allows them."
)


def callback_url_field() -> dict[str, Any]:
    return {"type": "string", "maxLength": MAX_URL, "format": "uri", "description": CALLBACK_URL_DOC}


def callback_schema() -> dict[str, Any]:
    return {
        "type": ["object", "null"],
        "description": "The webhook, for a sandbox created with `callback_url` (else null).",
        "required": ["url", "status", "attempts", "last_error"],
        "properties": {
            "url": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "delivered", "failed"],
                "description": "pending until a 2xx answer (`delivered`) or the last attempt failed, or the "
                "target was refused (`failed`).",
            },
            "attempts": {"type": "integer", "minimum": 0, "description": "Delivery attempts made so far."},
            "last_error": {
                "type": ["string", "null"],
                "description": "What went wrong with the last attempt (a status, a timeout, a refusal).",
            },
        },
    }


def _header(description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": "", "in": "header", "required": True, "schema": schema, "description": description}


def webhooks_section() -> dict[str, Any]:
    """OpenAPI 3.1 ``webhooks``: the request the platform sends to a ``callback_url``."""
    headers = {
        "webhook-id": _header("`msg_<sandbox id>`: the same for every attempt of this delivery.", "^msg_[0-9a-f]+$"),
        "webhook-timestamp": _header("Seconds since 1970 when this attempt was signed.", "^[0-9]+$"),
        "webhook-signature": _header(
            '`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the app\'s webhook '
            "secret (`whsec_<base64 key>`: the decoded key). Verify with the `standardwebhooks` package or the "
            "Python client's `verify_webhook`; refuse a timestamp more than 5 minutes off.",
            "^v1,[A-Za-z0-9+/=]+$",
        ),
    }
    return {
        "sandboxSettled": {
            "post": {
                "operationId": "sandboxSettled",
                "summary": "A sandbox created with `callback_url` has settled",
                "description": "Sent at least once, from a queue, after the sandbox reaches `terminated`, `error` "
                "or `cancelled`. An attempt fails on a timeout (5 s), a connection error or any answer but 2xx "
                "(redirects are not followed); it is tried again after 30 s, 90 s, 270 s, 810 s and 2430 s "
                "(six attempts over about an hour, by default). Each attempt shows in the sandbox's `callback`.",
                "security": [],
                "parameters": [{**schema, "name": name} for name, schema in headers.items()],
                "requestBody": {
                    "required": True,
                    "description": "The sandbox, as `GET /api/sandboxes/{id}` shows it.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Sandbox"}}},
                },
                "responses": {"2XX": {"description": "Received: no more attempts."}},
            }
        }
    }


def batch_operation() -> dict[str, Any]:
    """``POST /api/sandboxes/batch``.

    An item is any JSON value here: each is checked as one create's body is
    (``createSandbox``'s JSON schema) and, when it fails, answered with its error
    in its place rather than failing the request.
    """
    request_item = {
        "description": "The JSON body of one `POST /api/sandboxes` (see `createSandbox`'s `application/json` "
        "schema). An item that is not one is answered with its 400 in its place; the others are created.",
    }
    answers = {
        "type": "object",
        "required": ["sandboxes"],
        "properties": {
            "sandboxes": {
                "type": "array",
                "description": "One per item, in request order: the created sandbox, or the item's error.",
                "items": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/Sandbox"},
                        {
                            "type": "object",
                            "required": ["error"],
                            "properties": {"error": {"$ref": "#/components/schemas/Error"}},
                            "additionalProperties": False,
                        },
                    ]
                },
            }
        },
    }
    return {
        "operationId": "createSandboxes",
        "summary": f"Create up to {MAX_ITEMS} sandboxes in one request",
        "description": "Each item is checked as one create is (and counts against the app's quotas as one); "
        "an invalid item stores nothing and is answered with its error in its place, the others run.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["sandboxes"],
                        "properties": {
                            "sandboxes": {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": request_item}
                        },
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "201": {"description": "Every item was created.", "content": {"application/json": {"schema": answers}}},
            "207": {
                "description": "Some items failed (each answered with its error); the others were created.",
                "content": {"application/json": {"schema": answers}},
            },
        },
    }


IDS_DOC = f"With `ids` (at most {MAX_IDS}): those sandboxes, in the order given, and `next` null."
