"""moto's S3 holds an object's whole body in memory while it answers: one large body at a time.

moto reads a PUT's whole body (``request.data``), copies it into the object's
buffer (a ``SpooledTemporaryFile`` that rolls over to disk above
``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``, 5 MiB by default, only after the copy),
and answers a GET -- ranged or not -- by reading the whole object back into
memory (``FakeKey.value``).  No setting of moto bounds that: four dispatchers'
slots each storing a 20 MiB stream at once took moto's server 224 MiB above
its resting size (``make bench``'s ``bytes`` part).  The platform streams its
uploads from disk and its downloads through presigned URLs; real S3 and s3rver
(``make serve``) hold none of it.  So the stand-in is bounded here instead:
requests that move a large body through moto's S3 -- a PUT or POST with more
than ``LARGE`` bytes, and every GET of an object (its size is not known before
moto reads it) -- take turns, each holding the turn until its answer is sent.
Small requests (DynamoDB, SQS, listings, heads, small writes) never wait.

A turn not had within ``WAIT_S`` is taken anyway (a client that stops reading
an answer must not stall the stack): the bound is a memory bound, not a lock
anything depends on.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

LARGE = 1024 * 1024
WAIT_S = 30.0
_S3_SCOPE = re.compile(r"/\d{8}/[^/]+/s3/aws4_request")

_turn = threading.Semaphore(1)


def _is_s3(environ: dict[str, Any]) -> bool:
    """Signed in the header, or presigned in the query (the downloads' redirect)."""
    return bool(
        _S3_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        or _S3_SCOPE.search(environ.get("QUERY_STRING", "").replace("%2F", "/"))
    )


def moves_large_body(environ: dict[str, Any]) -> bool:
    """Whether moto will hold a large body in memory to answer this request."""
    if not _is_s3(environ):
        return False
    method = environ.get("REQUEST_METHOD", "")
    if method in ("PUT", "POST"):
        # boto3 sends a file's body aws-chunked (a checksum trailer), its size in a header of its own.
        size = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH")
        try:
            return size is None or int(size) > LARGE  # no size: a stream of unknown length
        except ValueError:
            return True
    # An object (path-style: /bucket/key), not a bucket's listing.
    return method == "GET" and environ.get("PATH_INFO", "").strip("/").count("/") >= 1


class _Released:
    """The answer's body, giving the turn back once it is sent (or the server stops sending it)."""

    def __init__(self, body: Iterable[bytes], environ: dict[str, Any]) -> None:
        self._body = body
        self._environ = environ
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if not self._done:
                self._done = True
                forget_body(self._environ)
                _turn.release()


def forget_body(environ: dict[str, Any]) -> None:
    """Drop the request's body once answered: werkzeug's server keeps the environ (and in it the request,
    which caches the body it read) until the connection's next request, so each idle keep-alive
    connection would pin the last body it carried."""
    for key in [k for k, v in environ.items() if not isinstance(v, str | int | tuple | bool)]:
        value = environ.pop(key)
        getattr(value, "__dict__", {}).pop("_cached_data", None)
    gc.collect()


def _large_blocks_mapped() -> None:
    """glibc serves blocks above a threshold it raises as large blocks are freed (to 32 MiB): 20 MiB
    bodies then come from heaps that fragment and stay.  Fixed at 1 MiB, each is mapped and given back."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-3, LARGE)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its own allocator's business


def one_large_body_at_a_time() -> None:
    """Idempotent: wrap moto's server application so large S3 bodies take turns."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__
    if getattr(original, "_turns", False):
        return

    def in_turn(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        if not moves_large_body(environ) or not _turn.acquire(timeout=WAIT_S):
            return original(self, environ, start_response)
        try:
            return _Released(original(self, environ, start_response), environ)
        except BaseException:
            _turn.release()
            raise

    _large_blocks_mapped()
    in_turn._turns = True  # type: ignore[attr-defined]
    DomainDispatcherApplication.__call__ = in_turn  # type: ignore[method-assign]
