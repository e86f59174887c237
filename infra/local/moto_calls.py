"""Counting what the local stack asks of its AWS endpoint: one counter per service and action.

``count_calls()`` wraps moto's server application so each request adds one to
``"<service>:<action>"`` (the service from the SigV4 credential scope, the
action from ``X-Amz-Target`` for DynamoDB and SQS's JSON protocol, ``Action=``
for SQS's query protocol, the method for S3) before moto answers it.
``GET /_opendevelop/calls`` answers the counts since the start as JSON; the
bench reads them before and after a run of sandboxes to print the calls each
sandbox cost (``bench/run.py``).  A dictionary increment per request: cheap
enough to be always on.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

PATH = "/_opendevelop/calls"
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")

calls: Counter[str] = Counter()
_lock = threading.Lock()


def kind(environ: dict[str, Any]) -> str:
    """``"service:action"`` of one request, from its headers (the body is never read here)."""
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = scope.group(1) if scope else "unsigned"
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        action = target.rsplit(".", 1)[-1]
    elif service == "s3":
        action = environ.get("REQUEST_METHOD", "?")
    else:
        action = (parse_qs(environ.get("QUERY_STRING", "")).get("Action") or ["?"])[0]
    return f"{service}:{action}"


def count_calls() -> None:
    """Idempotent: count every request moto's server answers, and serve the counts at ``PATH``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__
    if getattr(original, "_counted", False):
        return

    def counted(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == PATH and environ.get("REQUEST_METHOD") == "GET":
            with _lock:
                body = json.dumps(dict(calls)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        key = kind(environ)
        with _lock:
            calls[key] += 1
        return original(self, environ, start_response)

    counted._counted = True  # type: ignore[attr-defined]
    DomainDispatcherApplication.__call__ = counted  # type: ignore[method-assign]
