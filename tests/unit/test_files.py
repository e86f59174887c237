"""Uploaded file names, the tree they make, and the tar that carries them to the container."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from chalicelib.errors import InvalidInput
from chalicelib.files import SANDBOX_UID, UploadedFile, bundle, check_tree, clean_name


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("test.py", "test.py"),
        ("lib/util.py", "lib/util.py"),
        ("./test.py", "test.py"),
        ("a//b/./c.txt", "a/b/c.txt"),
        ("..hidden", "..hidden"),  # only a whole ".." part is a way out
        ("dir.../x", "dir.../x"),
        ("naïve café.py", "naïve café.py"),
        (" spaced name ", " spaced name "),
    ],
)
def test_a_safe_relative_name_is_kept_normalised(raw, name):
    assert clean_name(raw) == name


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "has no name"),
        ("", "has no name"),
        ("   ", "has no name"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("a/..", "'..'"),
        ("/etc/passwd", "absolute path"),
        ("//server/share", "absolute path"),
        ("lib\\util.py", "backslash"),
        ("..\\..\\x", "backslash"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("zero\u200bwidth", "control characters"),
        (".", "names no file"),
        ("./", "names no file"),
        ("lib/", "names a folder"),
        ("x" * 256, "too long"),
        ("/".join(["d" * 200] * 6), "too long"),
    ],
)
def test_an_unsafe_name_is_refused_with_the_reason(raw, reason):
    with pytest.raises(InvalidInput) as error:
        clean_name(raw)
    assert error.value.field == "files"
    assert reason in error.value.reason


def test_the_error_names_the_field_it_is_given():
    with pytest.raises(InvalidInput, match=r"^files\[2\]\.name: "):
        clean_name("../x", "files[2].name")


def files(*names: str) -> list[UploadedFile]:
    return [UploadedFile(name, b"") for name in names]


def test_a_tree_of_distinct_files_is_fine():
    check_tree(files("main.py", "lib/util.py", "lib/sub/deep.py", "lib2"), max_files=4)


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["test.py", "test.py"], "appears twice"),
        (["a/b", "a/b"], "appears twice"),
        (["lib", "lib/util.py"], "both a file and the folder"),
        (["a/b/c", "a/b"], "both a file and the folder"),
        (["1", "2", "3"], "more than the limit of 2"),
    ],
)
def test_a_bad_tree_is_refused(names, reason):
    with pytest.raises(InvalidInput, match=f"^files: .*{reason}"):
        check_tree(files(*names), max_files=2)


def test_no_files_make_no_bundle():
    assert bundle([]) == b""


def test_the_bundle_is_a_tar_of_regular_files_owned_by_the_sandbox_user():
    data = bundle(
        [
            UploadedFile("test.py", b'print("hello opendevelop!")\n'),
            UploadedFile("bin/run", b"#!/bin/sh\n", executable=True),
            UploadedFile("empty.txt", b""),
        ]
    )

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        contents = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]

    assert [m.name for m in members] == ["test.py", "bin/run", "empty.txt"]
    assert contents == {"test.py": b'print("hello opendevelop!")\n', "bin/run": b"#!/bin/sh\n", "empty.txt": b""}
    assert all(m.isreg() and (m.uid, m.gid) == (SANDBOX_UID, SANDBOX_UID) for m in members)
    assert {m.name: m.mode for m in members} == {"test.py": 0o644, "bin/run": 0o755, "empty.txt": 0o644}


def test_the_bundle_keeps_long_and_non_ascii_names():
    long_name = "/".join(["folder"] * 20) + "/café.py"

    data = bundle([UploadedFile(long_name, b"x")])

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [long_name]


def test_checking_a_thousand_files_510_folders_deep_costs_time_linear_in_their_size():
    """Once ~2 s of CPU per request (every folder prefix of every name was rebuilt): now a few ms."""
    deep = "/".join(["a"] * 509)
    started = time.process_time()
    files = [UploadedFile(clean_name(f"{deep}/f{i}"), b"") for i in range(1000)]
    check_tree(files, 1000)
    assert time.process_time() - started < 1.0  # the quadratic check took ~2 s


def test_a_lone_surrogate_in_a_file_name_is_refused():
    with pytest.raises(InvalidInput, match="lone surrogate"):
        clean_name("a\ud800.py")
