"""``chalice local``, with Nagle's algorithm off, a cap on declared bodies, and idle connections timed out.

Chalice's development server (Python's ``http.server``) writes a response's
headers and its body in two ``send`` calls.  With Nagle's algorithm on, the
body waits for the client to acknowledge the headers, and clients delay that
acknowledgement by up to 40 ms: every answer paid ~40 ms for nothing.  This
runs Chalice's own command line (``python -m infra.local.chalice_local local
--port ...`` takes exactly ``chalice local``'s arguments) after setting the
standard ``socketserver`` switch that turns the delay off.

Chalice's handler reads as many bytes as ``Content-Length`` claims before the
app sees the request (before authentication, before the app's own size
check).  Here a declared length over ``OPENDEVELOP_MAX_UPLOAD_BYTES`` (plus
room for multipart framing) is answered 413 without reading the body, a
malformed one 400, and a connection that sends nothing for ``IDLE_TIMEOUT_S``
is closed (API Gateway does both in the deployed stack).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from chalice import local
from chalice.cli import main

IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FRAMING_BYTES = 64 * 1024  # multipart boundaries and headers around the largest accepted upload


def max_body_bytes(environ: Any = os.environ) -> int:
    raw = environ.get("OPENDEVELOP_MAX_UPLOAD_BYTES", "")
    try:
        limit = int(raw) if raw.strip() else DEFAULT_MAX_UPLOAD_BYTES
    except ValueError:
        limit = DEFAULT_MAX_UPLOAD_BYTES  # the app's settings refuse it at start-up with a clear message
    return limit + FRAMING_BYTES


class BodyRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_chalice_parse_payload = local.ChaliceRequestHandler._parse_payload
_chalice_generic_handle = local.ChaliceRequestHandler.do_POST


def _parse_payload(self: Any) -> Any:
    declared = self.headers.get_all("content-length") or []
    if len(declared) > 1 or (declared and not declared[0].strip().isdigit()):
        raise BodyRefused(400, "BadRequestError", "Content-Length: is not one whole number")
    if self.headers.get("transfer-encoding"):
        raise BodyRefused(411, "LengthRequired", "Transfer-Encoding: not supported; send a Content-Length")
    if declared and int(declared[0]) > max_body_bytes():
        raise BodyRefused(413, "RequestEntityTooLargeError", f"body: {int(declared[0])} bytes is more than the limit")
    return _chalice_parse_payload(self)


def _generic_handle(self: Any) -> None:
    try:
        _chalice_generic_handle(self)
    except BodyRefused as e:
        # The body was never read: the connection cannot carry another request.
        self.close_connection = True
        body = json.dumps({"Code": e.code, "Message": e.message}).encode()
        self.send_response(e.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


local.ChaliceRequestHandler.disable_nagle_algorithm = True
local.ChaliceRequestHandler.timeout = IDLE_TIMEOUT_S  # socketserver: a timeout on every read of the socket
local.ChaliceRequestHandler._parse_payload = _parse_payload  # type: ignore[method-assign]
for _verb in ("GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS"):  # bound to the original by name
    setattr(local.ChaliceRequestHandler, f"do_{_verb}", _generic_handle)

if __name__ == "__main__":
    sys.exit(main())
