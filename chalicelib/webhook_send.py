"""One webhook request: signed the Standard Webhooks way, sent to an address already checked.

Signature (https://www.standardwebhooks.com): ``webhook-signature`` is
``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``, keyed
with the app's secret ``whsec_<base64 key>`` (the key is the decoded part).

The request goes over ``http.client`` on a socket this module connected to an
address ``webhook_targets.resolve`` checked, so nothing resolves the host a
second time; the ``Host`` header and (for https) the TLS server name and
certificate check use the URL's host.  Redirects are answers like any other
non-2xx: never followed.  Each network step (connect, TLS, send, each read)
has the rest of ``TIMEOUT_S``, and at most ``READ_BYTES`` of the answer's body
are read (for the error message).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence

from chalicelib.webhook_targets import IPAddress, Target

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
TIMEOUT_S = 5.0
READ_BYTES = 512
USER_AGENT = "OpenDevelop-Webhooks/1"
Connector = Callable[[tuple[str, int], float], socket.socket]


def new_secret() -> str:
    """A fresh app webhook secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def _connect(address: tuple[str, int], timeout: float) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def post(
    target: Target,
    addresses: Sequence[IPAddress],
    body: bytes,
    request_headers: dict[str, str],
    connect: Connector = _connect,
    timeout_s: float = TIMEOUT_S,
) -> tuple[int, str]:
    """POST ``body`` to the first of ``addresses`` that answers; (status, a short piece of the answer).

    Raises ``OSError`` (refused, unreachable, timed out), ``ssl.SSLError`` or
    ``http.client.HTTPException`` when no answer came.
    """
    deadline = time.monotonic() + timeout_s
    sock: socket.socket | None = None
    error: OSError | None = None
    for address in addresses:
        try:
            sock = connect((str(address), target.port), max(0.1, deadline - time.monotonic()))
            break
        except OSError as e:
            error = e
    if sock is None:
        raise error or OSError("no address to connect to")
    try:
        if target.scheme == "https":
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        conn = kind(target.host, target.port, timeout=timeout_s)  # the Host header omits a default port
        conn.sock = sock  # already connected to the checked address: http.client never connects (or resolves)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        conn.request("POST", target.path, body=body, headers=request_headers)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        response = conn.getresponse()
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        piece = response.read(READ_BYTES).decode("utf-8", errors="replace")
        return response.status, piece
    finally:
        sock.close()
