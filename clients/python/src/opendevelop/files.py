"""Turning what a caller means by "files" into named contents for the API.

``files`` may be:

* a list of paths (``str`` or ``Path``) to files or folders.  A relative path
  that stays below the current folder keeps its shape (``lib/util.py`` is
  uploaded as ``lib/util.py``); any other is uploaded under its last part.  A
  folder brings every file below it (``.git`` and ``__pycache__`` left out),
  named the same way (``.`` uploads the current folder's files at the top);
* a dict of ``name -> content``, where the content is ``bytes``, a ``str``
  (the text itself, sent as UTF-8), a ``Path`` (that file's content) or an
  open binary file;
* a list mixing paths and ``(name, content)`` pairs.

Files keep their executable bit, so ``./build.sh`` runs as it would locally.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Union

SKIPPED_FOLDERS = frozenset({".git", "__pycache__"})

Content = Union[bytes, bytearray, str, "os.PathLike[str]", IO[bytes]]
FilesArg = Union[Mapping[str, Content], Iterable[Union[str, "os.PathLike[str]", tuple[str, Content]]], str, None]


@dataclass(frozen=True)
class File:
    name: str
    content: bytes
    executable: bool = False


def collect(files: Any) -> list[File]:
    """Every file to upload, in a stable order; a name given twice is a ``ValueError``."""
    if files is None:
        return []
    out: list[File] = []
    if isinstance(files, Mapping):
        for name, content in files.items():
            out.append(_named(str(name), content))
    elif isinstance(files, (str, os.PathLike)):
        out += _from_path(Path(files))
    else:
        for item in files:
            if isinstance(item, tuple):
                name, content = item
                out.append(_named(str(name), content))
            elif isinstance(item, (str, os.PathLike)):
                out += _from_path(Path(item))
            else:
                raise TypeError(f"files: expected paths or (name, content) pairs, not {type(item).__name__}")
    seen: set[str] = set()
    for f in out:
        if f.name in seen:
            raise ValueError(f"files: {f.name!r} is given twice")
        seen.add(f.name)
    return out


def _named(name: str, content: Any) -> File:
    if isinstance(content, (bytes, bytearray)):
        return File(name, bytes(content))
    if isinstance(content, str):
        return File(name, content.encode("utf-8"))
    if isinstance(content, os.PathLike):
        path = Path(content)
        return File(name, path.read_bytes(), _executable(path))
    if hasattr(content, "read"):
        data = content.read()
        return File(name, data.encode("utf-8") if isinstance(data, str) else bytes(data))
    raise TypeError(f"files[{name!r}]: expected bytes, str, a Path or a binary file, not {type(content).__name__}")


def upload_name(path: Path) -> str:
    """``lib/util.py`` stays ``lib/util.py``; ``/tmp/x.py`` and ``../x.py`` become ``x.py``; ``.`` is ``""``."""
    if not path.is_absolute():
        parts = [p for p in PurePosixPath(path.as_posix()).parts if p != "."]
        if ".." not in parts:
            return "/".join(parts)
    return path.resolve().name


def _from_path(path: Path) -> list[File]:
    if path.is_dir():
        prefix = upload_name(path)
        found = []
        for root, folders, names in os.walk(path):
            folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS)
            for name in sorted(names):
                full = Path(root) / name
                relative = full.relative_to(path).as_posix()
                found.append(File(f"{prefix}/{relative}" if prefix else relative, full.read_bytes(), _executable(full)))
        return sorted(found, key=lambda f: f.name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [File(upload_name(path), path.read_bytes(), _executable(path))]


def _executable(path: Path) -> bool:
    return os.access(path, os.X_OK)
