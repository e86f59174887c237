"""A sandbox's output: where each stream's bytes live, its inline text, and downloads.

The dispatcher stores each stream (``stdout``, ``stderr`` and ``logs``, the
two interleaved as they came) as the bytes the program wrote.  The row keeps
at most ``PREVIEW_BYTES`` of each as text (UTF-8 with replacement) and each
stream's full size.  A stream that the row's text holds exactly (valid UTF-8,
no longer than the preview) has no object; every other stream is one S3
object, ``sandboxes/<id>/output/<token>/<stream>`` (the token of the run
that stored it, ``output_token``), listed in the row's ``output_objects``.
So showing a sandbox never reads S3, and a download is the row's text or a
presigned redirect to the object (S3 itself honours ``Range`` there, and the
API never holds the bytes).  A program that wrote to one stream only has
``logs`` byte for byte equal to that stream: it is not stored twice, its
entry says whose object it reads (``"logs=stdout"``, see ``object_key``).
Each run stores under its own token, so a run that lost the sandbox (its
result refused) never replaces the recorded run's bytes; rows recorded
before this have no ``output_token`` and their objects no token in the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from chalicelib import aws
from chalicelib.errors import Gone, RangeNotSatisfiable, Unavailable
from chalicelib.settings import Settings

STREAMS = ("stdout", "stderr", "logs")
DOWNLOADS = ("stdout", "stderr")
PREVIEW_BYTES = 64 * 1024  # of each stream, inline in the sandbox's JSON
LIST_PREVIEW_BYTES = 4 * 1024  # of each stream, in a list page (keeps a page of 100 small)
PRESIGNED_TTL_S = 300
CHUNK_BYTES = 1024 * 1024  # the most a live chunk holds (``dispatcher.live``)
TAIL_BYTES = 64 * 1024  # the most one answer of the live tail carries
LIVE_ANSWER_BYTES = 1024 * 1024  # the most a download of a running sandbox answers at once
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def key(sandbox_id: str, stream: str, token: str | None = None) -> str:
    """Where the run ``token`` stores ``stream`` (each run its own keys: see ``Sandbox.output_token``)."""
    return f"sandboxes/{sandbox_id}/output/{token}/{stream}" if token else f"sandboxes/{sandbox_id}/output/{stream}"


def object_key(sb: Any, stream: str) -> str | None:
    """The S3 object holding a recorded sandbox's ``stream``, or None when the row's text holds it."""
    for entry in sb.output_objects or []:
        name, _, same_as = str(entry).partition("=")
        if name == stream:
            return key(sb.sandbox_id, same_as if same_as in STREAMS else stream, sb.output_token)
    return None


def live_prefix(sandbox_id: str, stream: str) -> str:
    return f"sandboxes/{sandbox_id}/live/{stream}/"


def live_key(sandbox_id: str, stream: str, offset: int) -> str:
    """A chunk of a running sandbox's stream that starts at byte ``offset`` (keys sort by offset)."""
    return f"{live_prefix(sandbox_id, stream)}{offset:015d}"


def _list(settings: Settings, prefix: str, start_after: str = "") -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    kwargs: dict[str, Any] = {"Bucket": settings.bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    with aws.translated("listing the output"):
        for page in aws.s3(settings).get_paginator("list_objects_v2").paginate(**kwargs):
            found.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", []))
    return found


def live_keys(settings: Settings, sandbox_id: str) -> list[str]:
    return [k for k, _ in _list(settings, f"sandboxes/{sandbox_id}/live/")]


def read_live(settings: Settings, sandbox_id: str, stream: str, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of a running sandbox's stream from ``offset``, as far as its chunks go."""
    prefix = live_prefix(sandbox_id, stream)
    # A chunk holding ``offset`` starts less than CHUNK_BYTES before it.
    after = live_key(sandbox_id, stream, offset - CHUNK_BYTES) if offset >= CHUNK_BYTES else ""
    got = bytearray()
    position = offset
    for chunk_key, size in _list(settings, prefix, after):
        start = int(chunk_key[len(prefix) :])
        end = start + size
        if end <= position:
            continue
        if start > position or len(got) >= limit:
            break  # a gap (a chunk not there yet) or enough
        want = min(end, position + limit - len(got))
        try:
            got += get_range(settings, chunk_key, position - start, want - start - 1)
        except Unavailable as e:
            if e.__cause__ is not None and aws.is_missing(e.__cause__):
                # Listed, then deleted: the run was recorded meanwhile and its chunks cleared.  What
                # was read stands; the caller's next read finds the settled row and its stored output.
                break
            raise
        position = want
    return bytes(got)


def get_range(settings: Settings, object_key: str, first: int, last: int) -> bytes:
    """Bytes ``first``..``last`` (inclusive) of an object."""
    with aws.translated("reading the output"):
        body = aws.s3(settings).get_object(Bucket=settings.bucket, Key=object_key, Range=f"bytes={first}-{last}")
        data: bytes = body["Body"].read()
    return data


def read_stored(settings: Settings, sb: Any, stream: str, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of a finished sandbox's stream from ``offset`` (``Gone`` if storage lost them)."""
    size = stored_size(sb, stream)
    if offset >= size or limit <= 0:
        return b""
    stored = object_key(sb, stream)
    if stored:
        try:
            return get_range(settings, stored, offset, min(size, offset + limit) - 1)
        except Unavailable as e:
            if e.__cause__ is not None and aws.is_missing(e.__cause__):
                raise Gone(f"the {stream} of sandbox {sb.sandbox_id!r} is no longer stored") from e
            raise
    return (getattr(sb, stream, None) or "").encode()[offset : offset + limit]


def stored_size(sb: Any, stream: str) -> int:
    size = getattr(sb, f"{stream}_bytes", None)
    return int(size) if size is not None else len((getattr(sb, stream, None) or "").encode())


def recorded(sb: Any) -> bool:
    """Whether the sandbox's output is recorded (else, if any, it is in live chunks)."""
    return sb.stdout_bytes is not None or sb.status == "terminated"


def text_upto(data: bytes, final: bool) -> bytes:
    """``data`` without a UTF-8 character cut at its end (unless ``final``): the next answer starts there."""
    if final or not data:
        return data
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data  # ASCII: nothing cut
        if byte >= 0xC0:  # a lead byte: is its sequence whole?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


def preview(head: bytes, limit: int = PREVIEW_BYTES) -> tuple[str, bool]:
    """``head`` as text of at most ``limit`` UTF-8 bytes, and whether the text covers all of it."""
    text = head.decode("utf-8", errors="replace")
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, True
    return encoded[:limit].decode("utf-8", errors="ignore"), False


def clip(text: str | None, limit: int) -> tuple[str | None, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary); whether it was cut."""
    if text is None or len(text) * 4 <= limit:
        return text, False
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, False
    return encoded[:limit].decode("utf-8", errors="ignore"), True


@dataclass
class Download:
    """An answer to a download: a redirect (``location``), or the bytes themselves."""

    status: int = 200
    body: bytes = b""
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range ``header`` asks for, as ``(first, last)`` inclusive; None for the whole.

    Several ranges, or a header that is not a byte range, are ignored (the whole
    answers), as RFC 9110 allows; a range wholly past the end is 416.
    """
    match = _RANGE.match((header or "").strip())
    if not match or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if first == "":
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(f"an empty suffix range of a {size}-byte stream")
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"bytes {start}- of a {size}-byte stream")
    return start, end


def answer_bytes(data: bytes, range_header: str | None) -> Download:
    """``data`` as an answer to a GET that may carry ``Range``."""
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    wanted = byte_range(range_header, len(data))
    if wanted is None:
        return Download(200, data, headers=headers)
    first, last = wanted
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return Download(206, data[first : last + 1], headers=headers)


def presigned(settings: Settings, object_key: str, filename: str, content_type: str) -> str:
    url: str = aws.s3(settings).generate_presigned_url(
        "get_object",
        Params={
            "Bucket": settings.bucket,
            "Key": object_key,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        },
        ExpiresIn=PRESIGNED_TTL_S,
    )
    return url


def exists(settings: Settings, object_key: str) -> bool:
    """Whether the object is there; ``Unavailable`` when S3 cannot say."""
    try:
        with aws.translated("reading the output"):
            aws.s3(settings).head_object(Bucket=settings.bucket, Key=object_key)
    except Unavailable as e:
        cause = e.__cause__
        if cause is not None and (aws.is_missing(cause) or _code(cause) in {"NotFound", "404"}):
            return False
        raise
    return True


def _code(e: BaseException) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def download(settings: Settings, sb: Any, stream: str, range_header: str | None) -> Download:
    """One stream of ``sb``, exactly as the program wrote it (see the module's docstring)."""
    stored = object_key(sb, stream)
    if stored:
        if not exists(settings, stored):
            raise Gone(f"the {stream} of sandbox {sb.sandbox_id!r} is no longer stored")
        return Download(
            307, location=presigned(settings, stored, f"{sb.sandbox_id}.{stream}", "application/octet-stream")
        )
    if not recorded(sb):
        return _live_answer(settings, sb, stream, range_header)
    text = getattr(sb, stream, None) or ""
    return answer_bytes(text.encode(), range_header)


def _live_answer(settings: Settings, sb: Any, stream: str, range_header: str | None) -> Download:
    """What a running sandbox has written so far: at most ``LIVE_ANSWER_BYTES`` at once (206 when more)."""
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    match = _RANGE.match((range_header or "").strip())
    first = int(match.group(1)) if match and match.group(1) else 0
    last = int(match.group(2)) if match and match.group(1) and match.group(2) else None
    limit = LIVE_ANSWER_BYTES if last is None else min(LIVE_ANSWER_BYTES, last - first + 1)
    data = read_live(settings, sb.sandbox_id, stream, first, limit + 1) if limit > 0 else b""
    if first == 0 and last is None and len(data) <= limit:
        return Download(200, data, headers=headers)
    data = data[:limit]
    if not data:
        raise RangeNotSatisfiable(f"bytes {first}- of a stream {first} bytes long so far")
    headers["Content-Range"] = f"bytes {first}-{first + len(data) - 1}/*"  # the size is not known yet
    return Download(206, data, headers=headers)
