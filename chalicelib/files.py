"""Uploaded files: name checks and the tar bundle that carries them to the container.

Files never touch a host path: the API packs them into one tar, stored in S3,
and the dispatcher streams that tar (followed by the program's stdin) into the
container, where it is unpacked into the working folder's tmpfs.
"""

from __future__ import annotations

import io
import tarfile
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import InvalidInput

MAX_NAME_BYTES = 1024
MAX_PART_BYTES = 255
SANDBOX_UID = 1000


@dataclass(frozen=True)
class UploadedFile:
    name: str
    content: bytes
    executable: bool = False


def clean_name(raw: str | None, field: str = "files") -> str:
    """A safe relative path inside the working folder, or ``InvalidInput``.

    Sub-folders are allowed (``lib/util.py``); absolute paths, ``..``,
    backslashes and control characters are not.  ``a//b`` and ``./a`` are
    normalised to ``a/b`` and ``a``.
    """
    if raw is None or raw.strip() == "":
        raise InvalidInput(field, "a file has no name")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field, "a file name is not valid Unicode text (it holds a lone surrogate)") from None
    if len(raw) > 4 * MAX_NAME_BYTES:
        raise InvalidInput(field, f"file name {raw[:64]!r}... is too long")
    # isprintable() is one C loop; only a name it doubts is looked at character by character.
    if not raw.isprintable() and any(unicodedata.category(c) in ("Cc", "Cf") for c in raw):
        raise InvalidInput(field, f"file name {raw!r} contains control characters")
    if "\\" in raw:
        raise InvalidInput(field, f"file name {raw!r} contains a backslash; use '/' between folders")
    if raw.startswith("/"):
        raise InvalidInput(field, f"file name {raw!r} is an absolute path; names are relative to the working folder")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(field, f"file name {raw!r} contains '..'")
    if not parts:
        raise InvalidInput(field, f"file name {raw!r} names no file")
    if raw.endswith("/"):
        raise InvalidInput(field, f"file name {raw!r} names a folder, not a file")
    name = "/".join(parts)
    if len(name.encode()) > MAX_NAME_BYTES or any(len(p.encode()) > MAX_PART_BYTES for p in parts):
        raise InvalidInput(field, f"file name {raw[:64]!r}... is too long")
    return name


def check_tree(files: list[UploadedFile], max_files: int) -> None:
    """No duplicates, and no file that is also another file's folder.

    The names go into a tree of folders, one step per path component, so the
    check costs time in proportion to the names' total length (comparing every
    folder prefix of every name was quadratic in a name's depth).
    """
    if len(files) > max_files:
        raise InvalidInput("files", f"{len(files)} files is more than the limit of {max_files}")
    root: dict[str, Any] = {}
    for f in files:
        node = root
        parts = f.name.split("/")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is _FILE:
                folder = "/".join(parts[: depth + 1])
                raise InvalidInput("files", f"{folder!r} is both a file and the folder of {f.name!r}")
            node = child
        leaf = node.get(parts[-1])
        if leaf is _FILE:
            raise InvalidInput("files", f"file name {f.name!r} appears twice")
        if leaf is not None:
            raise InvalidInput("files", f"{f.name!r} is both a file and the folder of another file")
        node[parts[-1]] = _FILE


_FILE: Any = object()  # a leaf of check_tree's tree: a file, not a folder


def bundle(files: list[UploadedFile]) -> bytes:
    """A tar of the files, owned by the sandbox user, regular files only.

    It ends at the end-of-archive marker: ``tarfile`` pads an archive to a
    10 KiB record, which would make a one-line script a 10 KiB upload.
    """
    if not files:
        return b""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.name)
            info.size = len(f.content)
            info.mode = 0o755 if f.executable else 0o644
            info.mtime = now
            info.uid = info.gid = SANDBOX_UID
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(f.content))
        end = tar.offset + 2 * tarfile.BLOCKSIZE  # the two zero blocks that end an archive
    return buf.getvalue()[:end]
