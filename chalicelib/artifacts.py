"""A sandbox's artifacts: the files its program left in ``out/``, where they are stored, and their downloads.

The dispatcher (``dispatcher.artifacts``) reads them out of the container as a
tar stream, keeps the regular files whose names pass the upload rules, up to
``artifacts_kb`` of content and ``MAX_FILES`` files, and stores them under one
prefix per run, ``sandboxes/<id>/artifacts/<token>/`` (the token of the run
that recorded them, so a stale run's upload can never replace them):

* ``files.tar``: every kept file, in one tar written by the dispatcher
  (names relative to ``out/``, regular files only);
* ``index.jsonl``: one line ``[name, size, offset]`` per file, in the tar's
  order (``offset``: where its bytes start in ``files.tar``);
* ``f/<n>``: the ``n``-th file again on its own, for each file larger than
  ``DIRECT_BYTES`` (so it can be a presigned redirect, like a large stream).

The row keeps the totals and the first entries (at most ``LISTED`` of them and
``LISTED_NAME_BYTES`` of names): showing a sandbox never reads S3.  A file
among the listed entries is found without S3; another is found by streaming
the index, one line at a time.  Everything lives under ``sandboxes/``, so the
bucket's lifecycle rule expires it with the row (see infra/aws/resources.yaml).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from chalicelib import aws
from chalicelib.errors import Conflict, Gone, NotFound, Unavailable
from chalicelib.output import Download, answer_bytes, exists, get_range, presigned
from chalicelib.settings import Settings

MAX_FILES = 10_000  # files kept per run; beyond them the rest is dropped (``artifacts_truncated``)
MAX_DEPTH = 8  # parts of a name under out/ (a/b/.../h.txt): ``GET .../artifacts/{a}/{b}/...`` has a route per depth
DIRECT_BYTES = 1024 * 1024  # a file up to this size is answered by the API; a larger one is a redirect
LISTED = 100  # entries the row (and so the sandbox's JSON) lists
LISTED_NAME_BYTES = 16 * 1024  # and at most this much of their names (the row must stay small)
LIST_PAGE_LISTED = 10  # entries each sandbox of a list page shows
TAR = "files.tar"
INDEX = "index.jsonl"
EMPTY_TAR = b"\0" * 1024  # an archive with no files: the end-of-archive marker alone


def prefix(sandbox_id: str, token: str) -> str:
    return f"sandboxes/{sandbox_id}/artifacts/{token}/"


def file_key(key_prefix: str, n: int) -> str:
    return f"{key_prefix}f/{n}"


def to_json(sb: Any, listed: int = LISTED) -> dict[str, Any]:
    """The artifact fields of a sandbox's JSON: ``artifacts`` lists at most ``listed`` of ``artifacts_count``."""
    entries = sb.artifacts or []
    return {
        "artifacts": [{"name": e[0], "size": int(e[1])} for e in entries[:listed]],
        "artifacts_count": int(sb.artifacts_count or 0),
        "artifacts_bytes": int(sb.artifacts_bytes or 0),
        "artifacts_truncated": bool(sb.artifacts_truncated),
        "artifacts_skipped": int(sb.artifacts_skipped or 0),
    }


def _settled(sb: Any) -> None:
    if sb.status in ("queued", "running"):
        raise Conflict(f"sandbox {sb.sandbox_id!r} is {sb.status}; its artifacts are collected when its program ends")


def tar_download(settings: Settings, sb: Any) -> Download:
    """All the artifacts as one tar: a redirect to the stored tar, or an empty tar when there are none."""
    _settled(sb)
    if not sb.artifacts_key or not sb.artifacts_count:
        return Download(200, EMPTY_TAR, headers={"Content-Type": "application/x-tar"})
    key = sb.artifacts_key + TAR
    if not exists(settings, key):
        raise Gone(f"the artifacts of sandbox {sb.sandbox_id!r} are no longer stored")
    return Download(307, location=presigned(settings, key, f"{sb.sandbox_id}.artifacts.tar", "application/x-tar"))


def file_name(parts: list[str]) -> str:
    """The artifact a route's path parts name (each part may arrive percent-encoded)."""
    return "/".join(unquote(part) for part in parts)


def file_download(settings: Settings, sb: Any, name: str, range_header: str | None) -> Download:
    """One artifact's bytes (``application/octet-stream``): read from the tar, or a redirect to its own object."""
    _settled(sb)
    found = find(settings, sb, name) if sb.artifacts_key else None
    if found is None:
        raise NotFound(f"sandbox {sb.sandbox_id!r} has no artifact {name[:200]!r}")
    n, size, offset = found
    if size > DIRECT_BYTES:
        key = file_key(sb.artifacts_key, n)
        if not exists(settings, key):
            raise Gone(f"the artifacts of sandbox {sb.sandbox_id!r} are no longer stored")
        filename = name.rsplit("/", 1)[-1].replace('"', "")
        return Download(307, location=presigned(settings, key, filename, "application/octet-stream"))
    data = b""
    if size:
        try:
            data = get_range(settings, sb.artifacts_key + TAR, offset, offset + size - 1)
        except Unavailable as e:
            if e.__cause__ is not None and aws.is_missing(e.__cause__):
                raise Gone(f"the artifacts of sandbox {sb.sandbox_id!r} are no longer stored") from e
            raise
    return answer_bytes(data, range_header)


def find(settings: Settings, sb: Any, name: str) -> tuple[int, int, int] | None:
    """``(n, size, offset)`` of the artifact ``name``: from the row's entries, else from the stored index."""
    entries = sb.artifacts or []
    for n, entry in enumerate(entries):
        if entry[0] == name:
            return n, int(entry[1]), int(entry[2])
    if int(sb.artifacts_count or 0) <= len(entries):
        return None
    try:
        with aws.translated("reading the artifacts' index"):
            body = aws.s3(settings).get_object(Bucket=settings.bucket, Key=sb.artifacts_key + INDEX)["Body"]
            for n, line in enumerate(body.iter_lines()):  # one line at a time: never the whole index
                entry = json.loads(line)
                if entry[0] == name:
                    return n, int(entry[1]), int(entry[2])
    except Unavailable as e:
        if e.__cause__ is not None and aws.is_missing(e.__cause__):
            raise Gone(f"the artifacts of sandbox {sb.sandbox_id!r} are no longer stored") from e
        raise
    return None
