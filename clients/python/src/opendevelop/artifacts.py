"""Writing a sandbox's artifacts (the files its program left in ``out/``) into a folder, safely.

The API answers them as one tar (``GET /api/sandboxes/{id}/artifacts``).  It is
read here as a stream (never whole in memory) and each entry is written only
if it is a regular file whose name stays inside the folder: no absolute
names, no ``..``, no entry that would pass through (or replace) a symlink
already in the folder.  Anything else is refused with ``UnsafeArtifactError``
before a byte of it is written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO

from opendevelop.errors import OpenDevelopError


class UnsafeArtifactError(OpenDevelopError):
    """An artifact's name would escape the folder it is written to (or is not a plain file)."""


def extract(stream: IO[bytes], folder: str | os.PathLike[str]) -> list[Path]:
    """Write the tar read from ``stream`` into ``folder`` (made if missing); the paths written, in order."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written: list[Path] = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            target = _target(root, member)
            source = tar.extractfile(member)
            assert source is not None  # a regular file, checked by ``_target``
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(target, flags, 0o755 if member.mode & 0o111 else 0o644)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
            written.append(target)
    return written


def _target(root: Path, member: tarfile.TarInfo) -> Path:
    """Where ``member`` goes under ``root``; ``UnsafeArtifactError`` when it may not go anywhere."""
    name = member.name
    if not member.isreg():
        raise UnsafeArtifactError(f"artifact {name!r} is not a regular file")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise UnsafeArtifactError(f"artifact name {name!r} would escape {root}")
    here = root
    for part in parts[:-1]:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            here.mkdir()
            continue
        if not stat.S_ISDIR(mode):  # a symlink (or a file) where a folder should be: never followed
            raise UnsafeArtifactError(f"artifact {name!r}: {here} is not a folder")
    target = here / parts[-1]
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise UnsafeArtifactError(f"artifact {name!r}: {target} exists and is not a regular file")
    return target
