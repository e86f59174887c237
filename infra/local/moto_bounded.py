"""moto's S3 in bounded memory: objects on disk, large bodies one at a time, parts joined on disk.

moto keeps each object in a ``SpooledTemporaryFile`` that moves to disk past
~5 MiB, but on its way there a body was copied three times more (into the
spooled ``BytesIO``, out of it when it rolled over, and for a multipart
upload into one ``bytearray`` of the whole object, then ``bytes`` of it);
and every request holds its whole body as it is read.  Four sandboxes
flooding 10 + 10 MiB grew the endpoint's peak RSS by ~264 MiB (issue #12's
bound for every process of the stack is 64 MiB).

``bounded_s3_memory()`` changes three things, none of them an answer:

* an object over ``KEY_BUFFER`` (moto's default: 5 MiB) is kept in a file, so
  the live chunks of running floods (up to 1 MiB each, many at once) are not
  held in memory, and a value larger than the key's buffer goes to disk before
  it is written (no copy in memory on the way); each such object holds an
  open (unlinked) file, so the soft limit on open files goes up to the hard
  one (``make dev`` keeps every object until it stops);
* completing a multipart upload joins the parts' files into the object's file
  in ``COPY_BYTES`` pieces (moto built the whole object in memory twice);
* requests carrying more than ``LARGE_BODY`` bytes are answered
  ``LARGE_AT_ONCE`` at a time, and their garbage collected as each is
  answered (each holds its body, a few times over, while moto reads it, and
  moto's request objects keep it in a reference cycle), so the endpoint's
  memory is bounded by the largest part a client sends, not by how many send
  at once.  The dispatcher sends output over ``chalicelib.aws.PART_BYTES`` in
  parts of that size.  A request that waited ``LARGE_WAIT_S`` for its turn
  goes without (a client stopped in the middle of its body, a dispatcher
  under SIGSTOP, holds the turn): liveness over the bound.

And one deviation from S3 mended: a part or a completion of an upload moto
does not know (aborted, or completed already) is ``NoSuchUpload``, not a 500.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import os
import resource
import shutil
import tempfile
import threading
from typing import Any

LARGE_BODY = 1 << 20
LARGE_AT_ONCE = 1
LARGE_WAIT_S = 10.0
COPY_BYTES = 1 << 20
KEY_BUFFER = 256 * 1024
M_MMAP_THRESHOLD = -3  # mallopt's parameter
MMAP_THRESHOLD = 256 * 1024

_large = threading.BoundedSemaphore(LARGE_AT_ONCE)


class Joined:
    """The parts of a completed multipart upload, in order: what moto's ``complete`` gave as one ``bytes``.

    It takes the parts' files (each part is left an empty one): moto disposes of the upload's parts
    before it stores the object they make."""

    def __init__(self, parts: list[Any]) -> None:
        self.size = sum(part.contentsize for part in parts)
        self.files = []
        for part in parts:
            with part.lock:
                self.files.append(part._value_buffer)
                part._value_buffer = tempfile.SpooledTemporaryFile(part._max_buffer_size)

    def __len__(self) -> int:
        return self.size

    def copy_into(self, target: Any) -> None:
        for f in self.files:
            f.seek(0)
            shutil.copyfileobj(f, target, COPY_BYTES)
            f.close()


def _large_buffers_returned() -> None:
    """glibc's malloc maps a buffer over ``MMAP_THRESHOLD`` on its own and gives it back when freed.  Left to
    itself it raises that threshold to the largest buffer freed so far (up to 32 MiB), after which a body's
    buffers come from the heap of the thread that read it, and stay there: the server's threads each kept
    the peak of the bodies they had read, and the process's grew with their number."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's own ways


def _known_upload(method: Any) -> Any:
    """S3 answers a part or a completion of an upload it does not know (aborted, completed) with
    ``NoSuchUpload``; moto with a 500 (its ``KeyError``)."""
    from moto.s3.exceptions import NoSuchUpload

    def known(self: Any, bucket_name: str, multipart_id: str, *args: Any, **kwargs: Any) -> Any:
        if multipart_id not in self.get_bucket(bucket_name).multiparts:
            raise NoSuchUpload(upload_id=multipart_id)
        return method(self, bucket_name, multipart_id, *args, **kwargs)

    return known


def _files_enough() -> None:
    """Each object moto keeps in a file holds that file open (an unlinked temporary file): the soft limit
    on open files (1024 where systemd starts a shell) goes up to the hard one."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (OSError, ValueError):
        pass  # as it was: objects in files are then bounded by it


def bounded_s3_memory() -> None:
    """Idempotent: see the module's text."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.s3.models import FakeKey, FakeMultipart, S3Backend

    if getattr(FakeKey, "_bounded", False):
        return
    FakeKey._bounded = True
    _large_buffers_returned()
    _files_enough()
    # moto reads this for each object it makes: one over it is kept in a file, not in memory.
    os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(KEY_BUFFER)
    setter = FakeKey.value.fset

    def value(self: Any, new_value: Any) -> None:
        if isinstance(new_value, Joined):
            self._value_buffer.seek(0)
            self._value_buffer.truncate()
            self._value_buffer.rollover()
            new_value.copy_into(self._value_buffer)
            self.contentsize = len(new_value)
            return
        if isinstance(new_value, (bytes, bytearray)) and len(new_value) > self._max_buffer_size:
            self._value_buffer.rollover()  # straight to the file: no copy in memory first
        setter(self, new_value)

    FakeKey.value = FakeKey.value.setter(value)  # type: ignore[attr-defined]

    complete = FakeMultipart.complete

    def joined_complete(self: Any, body: Any) -> tuple[Any, str, Any]:
        checksum = self.metadata.get("x-amz-checksum-algorithm")
        if checksum:
            return complete(self, body)  # the parts' checksums are built from their bytes: moto's way
        body = list(body)
        parts = [self.parts.get(number) for number, _ in body]
        if not parts or any(part is None for part in parts):
            return complete(self, body)  # moto's errors, as moto raises them
        for part, (_, etag) in zip(parts, body, strict=True):
            if part.etag.replace('"', "") != etag.replace('"', ""):
                return complete(self, body)
        for part in parts[:-1]:
            if part.contentsize < 5 * 1024 * 1024:  # S3_UPLOAD_PART_MIN_SIZE
                return complete(self, body)
        md5s = b"".join(bytes.fromhex(part.etag.replace('"', "")) for part in parts)
        return Joined(parts), f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}", None  # noqa: S324 - S3's ETag

    FakeMultipart.complete = joined_complete

    for name in ("upload_part", "complete_multipart_upload"):
        setattr(S3Backend, name, _known_upload(getattr(S3Backend, name)))

    call = DomainDispatcherApplication.__call__

    def one_large_at_a_time(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= LARGE_BODY:
            return call(self, environ, start_response)
        turn = _large.acquire(timeout=LARGE_WAIT_S)  # a client stopped mid-body holds its turn: not forever
        try:
            return call(self, environ, start_response)
        finally:
            gc.collect(1)  # moto's request objects hold the body in a cycle: freed now, not at a later collection
            if turn:
                _large.release()

    # moto_calls.count_calls() knows it wrapped the app by this mark: kept through this wrapper too.
    one_large_at_a_time._counted = getattr(call, "_counted", False)  # type: ignore[attr-defined]
    DomainDispatcherApplication.__call__ = one_large_at_a_time
