"""Reading a program's artifacts out of the stream: the marker split, and the tar entries kept or skipped."""

from __future__ import annotations

import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from dispatcher.artifacts import INDEX_FILE, MARKER, TAR_FILE, Collector, Splitter
from dispatcher.attach import stdin_for
from dispatcher.container import PROLOGUE
from dispatcher.engine import RunSpec

NONCE = "ab" * 16


def entry(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def hostile_tar(fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """What `tar -c out` could give for a folder a program filled with everything it could think of."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        entry(tar, "out", kind=tarfile.DIRTYPE)
        entry(tar, "out/a", kind=tarfile.DIRTYPE)
        entry(tar, "out/a/b.txt", b"nested\n", mode=0o600)
        entry(tar, "out/run.sh", b"#!/bin/sh\n", mode=0o700)
        entry(tar, "out/pw", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        entry(tar, "out/hard", kind=tarfile.LNKTYPE, linkname="out/a/b.txt")
        entry(tar, "out/fifo", kind=tarfile.FIFOTYPE)
        entry(tar, "out/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)
        entry(tar, "out/../escape", b"no")
        entry(tar, "/etc/cron.d/x", b"no")
        entry(tar, "elsewhere.txt", b"no")
        entry(tar, "out/" + "d/" * 8 + "deep", b"too deep")  # 9 parts
        entry(tar, "out/" + "d/" * 7 + "deepest", b"8")  # 8 parts: the deepest kept
        entry(tar, "out/" + "long-" * 40 + ".txt", b"a long name")
        entry(tar, "out/empty")
    return buf.getvalue()


def collect(stream: bytes, tmp_path: Path, cap: int = 1 << 20, chunks: bool = True, **kw: int) -> Collector:
    collector = Collector(tmp_path, cap, **kw)
    rng = random.Random(1)
    at = 0
    while at < len(stream):  # in uneven pieces, as a socket gives them
        n = rng.randint(1, 700) if chunks else len(stream)
        collector.feed(stream[at : at + n])
        at += n
    collector.finish()
    return collector


def kept(tmp_path: Path) -> dict[str, bytes]:
    with tarfile.open(tmp_path / TAR_FILE) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_only_regular_files_with_safe_names_are_kept(tmp_path, fmt):
    collector = collect(hostile_tar(fmt), tmp_path)

    files = kept(tmp_path)
    assert files == {
        "a/b.txt": b"nested\n",
        "run.sh": b"#!/bin/sh\n",
        "long-" * 40 + ".txt": b"a long name",
        "empty": b"",
        "d/" * 7 + "deepest": b"8",
    }
    # symlink, hard link, fifo, device, "..", absolute, outside out/, too deep: skipped, never followed
    assert collector.skipped == 8
    assert (collector.count, collector.bytes, collector.truncated) == (5, 29, False)
    with tarfile.open(tmp_path / TAR_FILE) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
        assert all(m.isreg() for m in tar.getmembers())
    assert (modes["a/b.txt"], modes["run.sh"]) == (0o644, 0o755)


def test_the_index_gives_each_files_offset_in_the_kept_tar(tmp_path):
    collect(hostile_tar(), tmp_path)

    data = (tmp_path / TAR_FILE).read_bytes()
    for line in (tmp_path / INDEX_FILE).read_text().splitlines():
        name, size, offset = json.loads(line)
        assert data[offset : offset + size] == kept(tmp_path)[name]


def test_files_over_the_cap_are_dropped_and_the_rest_kept(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry(tar, "out/small1", b"x" * 10)
        entry(tar, "out/big", b"y" * 5000)
        entry(tar, "out/small2", b"z" * 10)
    collector = collect(buf.getvalue(), tmp_path, cap=1000)

    assert set(kept(tmp_path)) == {"small1", "small2"}
    assert (collector.truncated, collector.bytes) == (True, 20)


def test_at_most_max_files_are_kept(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(30):
            entry(tar, f"out/f{i}", b"1")
    collector = collect(buf.getvalue(), tmp_path, max_files=25)

    assert (collector.count, collector.truncated) == (25, True)
    assert len(kept(tmp_path)) == 25


def test_a_stream_cut_in_a_file_keeps_the_whole_files_before_it(tmp_path):
    stream = hostile_tar()
    cut = stream.index(b"nested\n") + 3  # in the middle of out/a/b.txt's bytes
    collector = collect(stream[:cut], tmp_path)

    assert kept(tmp_path) == {}
    assert (collector.count, collector.truncated) == (0, True)


def test_garbage_ends_the_collection(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry(tar, "out/first", b"ok")
    stream = buf.getvalue()[:1024] + b"\xff" * 512 + buf.getvalue()
    collector = collect(stream, tmp_path)

    assert kept(tmp_path) == {"first": b"ok"}
    assert (collector.broken, collector.truncated) == (True, True)


def test_a_negative_size_ends_the_collection(tmp_path):
    info = tarfile.TarInfo("out/neg")
    info.size = 1
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    block[124:136] = b"\xff" * 12  # size -1 in base-256
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)  # the checksum again
    collector = collect(bytes(block) + b"x" * 1024, tmp_path)

    assert tarfile.TarInfo.frombuf(bytes(block), "utf-8", "strict").size == -1  # a header tarfile reads
    assert (collector.broken, collector.count) == (True, 0)


def test_the_splitter_finds_the_marker_across_pieces_and_passes_the_rest_on(tmp_path):
    collector = Collector(tmp_path, 1 << 20)
    splitter = Splitter(NONCE, collector)
    marker = MARKER + NONCE.encode() + b" 3\n"
    fake = MARKER + b"cd" * 16 + b" 0\n"  # looks like one, without the run's nonce: output
    stream = b"output\n" + fake + b"more" + marker + hostile_tar()
    program = b""
    for i in range(0, len(stream), 5):
        program += splitter.feed(stream[i : i + 5])
    program += splitter.finish()

    assert program == b"output\n" + fake + b"more"
    assert splitter.status == 3
    assert collector.count == 5 and not collector.truncated


def test_without_a_marker_everything_is_output_and_nothing_is_collected(tmp_path):
    collector = Collector(tmp_path, 1 << 20)
    splitter = Splitter(NONCE, collector)
    tail = (MARKER + NONCE.encode())[:-3]  # ends like the start of a marker: held, then given back
    out = splitter.feed(b"abc" + tail) + splitter.finish()

    assert out == b"abc" + tail
    assert splitter.status is None and not collector.truncated
    assert not (tmp_path / TAR_FILE).exists()


def test_the_prologue_writes_the_marker_and_a_tar_of_out_after_the_program(tmp_path):
    spec = RunSpec(
        "s1",
        "base",
        ["mkdir -p out/a && echo hi > out/a/b && ln -s /etc/passwd out/pw; exit 7"],
        10,
        256,
        1.0,
        64,
        64,
        1024,
    )
    script = PROLOGUE.replace("/sandbox", str(tmp_path))
    # Under an extra shell: the prologue kills what the program left only when its parent is the init
    # (PID 1), which it must never take a test runner for.
    done = subprocess.run(
        ["/bin/sh", "-c", '/bin/sh -c "$1"; exit $?', "sh", script],
        input=stdin_for(spec, b"", NONCE),
        capture_output=True,
    )
    out = tmp_path / "collected"
    out.mkdir()
    collector = Collector(out, 1 << 20)
    splitter = Splitter(NONCE, collector)
    program = splitter.feed(done.stdout) + splitter.finish()

    assert (done.returncode, splitter.status, program) == (7, 7, b"")
    assert kept(out) == {"a/b": b"hi\n"}
    assert collector.skipped == 1  # the symlink


def test_the_buckets_lifecycle_rule_covers_the_artifacts():
    import re

    from chalicelib import artifacts, output

    template = (Path(__file__).resolve().parents[2] / "infra" / "aws" / "resources.yaml").read_text()
    rule = re.search(r"Id: expire-sandbox-files\s+Status: Enabled\s+Prefix: (\S+)", template)
    assert rule is not None
    for key in (artifacts.prefix("0123", "tok") + artifacts.TAR, output.key("0123", "stdout")):
        assert key.startswith(rule.group(1))
