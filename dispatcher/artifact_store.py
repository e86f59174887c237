"""Storing a run's artifacts when its result is recorded: S3 objects first, then the row's fields.

What ``dispatcher.artifacts`` kept in the run's spool folder (``artifacts.tar``
and ``artifacts.index``) goes under the run's prefix (``chalicelib.artifacts``):
the tar as it is, the index when the row cannot list every file, and each file
larger than ``DIRECT_BYTES`` once more on its own (copied out of the tar
through a spool file, so no file is ever whole in memory).  The row's fields
come back as update actions, written by ``lifecycle.record`` in the same write
as the rest of the result, fenced by the run's token: the uploads of a run that
lost its token are never referenced (and expire with the bucket's rule).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynamodb.expressions.update import Action

from chalicelib import artifacts
from chalicelib.models import Sandbox
from dispatcher.artifacts import INDEX_FILE, TAR_FILE
from dispatcher.engine import RunResult

Upload = Callable[[str, Path], None]
COPY_CHUNK = 1024 * 1024


def store(sandbox_id: str, token: str, result: RunResult, upload: Upload) -> list[Action]:
    """Upload the run's artifacts (if any) and answer the row's artifact attributes."""
    actions: list[Action] = [
        Sandbox.artifacts_count.set(result.artifacts_count),
        Sandbox.artifacts_bytes.set(result.artifacts_bytes),
        Sandbox.artifacts_truncated.set(result.artifacts_truncated),
        Sandbox.artifacts_skipped.set(result.artifacts_skipped),
    ]
    folder = result.output_dir
    tar = folder / TAR_FILE if folder is not None else None
    if not result.artifacts_count or tar is None or not tar.exists():
        return [*actions, Sandbox.artifacts.remove(), Sandbox.artifacts_key.remove()]
    assert folder is not None
    prefix = artifacts.prefix(sandbox_id, token)
    upload(prefix + artifacts.TAR, tar)
    listed = _each_entry(folder, tar, prefix, upload)
    if result.artifacts_count > len(listed):
        upload(prefix + artifacts.INDEX, folder / INDEX_FILE)
    return [*actions, Sandbox.artifacts.set(listed), Sandbox.artifacts_key.set(prefix)]


def _each_entry(folder: Path, tar: Path, prefix: str, upload: Upload) -> list[list[Any]]:
    """The entries the row lists (the index's first, within ``LISTED`` and ``LISTED_NAME_BYTES``);
    each large file is uploaded on its own on the way."""
    listed: list[list[Any]] = []
    names = 0
    full = False
    with open(folder / INDEX_FILE) as index:
        for n, line in enumerate(index):
            name, size, offset = json.loads(line)
            fits = len(listed) < artifacts.LISTED and names + len(name.encode()) <= artifacts.LISTED_NAME_BYTES
            if not full and fits:
                listed.append([name, size, offset])
                names += len(name.encode())
            else:
                full = True  # the row lists a prefix of the index: ``chalicelib.artifacts.find`` counts on it
            if size > artifacts.DIRECT_BYTES:
                part = folder / "artifact.part"
                _copy_range(tar, offset, size, part)
                try:
                    upload(artifacts.file_key(prefix, n), part)
                finally:
                    part.unlink(missing_ok=True)
    return listed


def _copy_range(source: Path, offset: int, size: int, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        src.seek(offset)
        left = size
        while left:
            chunk = src.read(min(COPY_CHUNK, left))
            if not chunk:
                raise OSError(f"{source} ends before byte {offset + size}")
            dst.write(chunk)
            left -= len(chunk)
