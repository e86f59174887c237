"""Writing a sandbox's artifacts into a folder: every file where it belongs, nothing outside it."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from opendevelop import UnsafeArtifactError
from opendevelop.artifacts import extract


def tar_of(*entries: tuple[str, bytes | str]) -> io.BytesIO:
    """A tar of files (bytes) and symlinks (str: the target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return buf


def test_files_land_in_their_folders(tmp_path: Path) -> None:
    written = extract(tar_of(("a/b/c.txt", b"deep"), ("top", b"\x00\xff")), tmp_path / "new")

    assert written == [tmp_path / "new" / "a" / "b" / "c.txt", tmp_path / "new" / "top"]
    assert (tmp_path / "new" / "a" / "b" / "c.txt").read_bytes() == b"deep"
    assert (tmp_path / "new" / "top").read_bytes() == b"\x00\xff"


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/tmp/escape", "a//b", "./a"])
def test_a_name_that_would_escape_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeArtifactError):
        extract(tar_of((name, b"x")), tmp_path / "dir")
    assert not (tmp_path / "escape").exists()


def test_a_symlink_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArtifactError):
        extract(tar_of(("pw", "/etc/passwd")), tmp_path)
    assert not os.path.lexists(tmp_path / "pw")


def test_a_symlink_already_in_the_folder_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "dir"
    target.mkdir()
    (target / "a").symlink_to(outside)
    (target / "f").symlink_to(outside / "f")

    for entry in ("a/x", "f"):
        with pytest.raises(UnsafeArtifactError):
            extract(tar_of((entry, b"x")), target)
    assert list(outside.iterdir()) == []
