"""What ``files=`` accepts, and the names the files get."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from opendevelop.files import File, collect, upload_name


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "main.py").write_text("print(1)\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("X = 1\n")
    (tmp_path / "lib" / "__pycache__").mkdir()
    (tmp_path / "lib" / "__pycache__" / "util.pyc").write_bytes(b"\x00")
    (tmp_path / "run.sh").write_text("echo hi\n")
    (tmp_path / "run.sh").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_relative_paths_keep_their_folders(project):
    assert collect(["main.py", "lib/util.py", "./run.sh"]) == [
        File("main.py", b"print(1)\n"),
        File("lib/util.py", b"X = 1\n"),
        File("run.sh", b"echo hi\n", executable=True),
    ]


def test_paths_outside_the_current_folder_keep_only_their_name(project):
    assert [f.name for f in collect([project / "main.py"])] == ["main.py"]
    assert [f.name for f in collect(["lib/../run.sh"])] == ["run.sh"]
    assert upload_name(project / "lib" / "util.py") == "util.py"
    assert upload_name(Path("../x/y.py")) == "y.py"
    assert upload_name(Path("lib/util.py")) == "lib/util.py"


def test_a_folder_brings_its_files_without_caches(project):
    assert [f.name for f in collect(["lib"])] == ["lib/util.py"]
    assert [f.name for f in collect(".")] == ["lib/util.py", "main.py", "run.sh"]
    assert [f.name for f in collect([project / "lib"])] == ["lib/util.py"]


def test_a_dict_maps_names_to_bytes_text_paths_or_open_files(project):
    files = collect(
        {
            "a.bin": b"\x00\xff",
            "b.txt": "héllo",
            "c/d.py": Path("main.py"),
            "e.dat": io.BytesIO(b"stream"),
        }
    )
    assert files == [
        File("a.bin", b"\x00\xff"),
        File("b.txt", "héllo".encode()),
        File("c/d.py", b"print(1)\n"),
        File("e.dat", b"stream"),
    ]


def test_pairs_and_paths_mix(project):
    assert [f.name for f in collect(["main.py", ("extra.txt", "x")])] == ["main.py", "extra.txt"]


def test_a_name_given_twice_is_refused(project):
    with pytest.raises(ValueError, match="'main.py' is given twice"):
        collect(["main.py", ("main.py", "again")])


def test_a_missing_file_says_which(project):
    with pytest.raises(FileNotFoundError, match="nope.py: no such file"):
        collect(["nope.py"])


def test_anything_else_is_a_type_error(project):
    with pytest.raises(TypeError):
        collect([42])
    with pytest.raises(TypeError):
        collect({"a": 42})
