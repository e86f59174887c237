"""Collecting a run's artifacts: the files its program left in ``out/``, read as a tar stream, never by path.

The host never opens a path inside the container (Judge0's CVE-2024-28185 was a
host reading a file that a program had made a symlink).  Docker's archive API
cannot serve here either: it reads the container's root filesystem from the
host, where the working folder (a tmpfs mounted inside the container) is not.
So the files come out the way everything else does, on the attach stream:

1. When the program ends on its own and left a folder ``out`` (not a symlink),
   the container's prologue (``container.PROLOGUE``) kills every process the
   program left behind and waits for them to go, so nothing of the program can
   write after it; then it writes a marker line, ``\\x1eOD-ARTIFACTS <nonce>
   <exit status>``, on stdout, and ``tar -c out`` after it.  The nonce is the
   run's own (``new_nonce``, sent on stdin with the command), so output that
   merely looks like a marker is output.
2. ``Splitter`` (fed all of stdout, before the output cap) passes the bytes
   before the marker on as the program's stdout, reads the exit status, and
   hands every byte after it to ``Collector``.
3. ``Collector`` parses that tar as a stream, 512-byte block by block, in
   bounded memory: regular files only (symlinks, hard links, devices, fifos and
   anything else are skipped, their data never looked at), names under
   ``out/`` checked like uploads (``chalicelib.files.clean_name``) and at most
   ``MAX_DEPTH`` folders deep, up to the cap of content bytes and ``MAX_FILES``
   files (the rest dropped, ``truncated``).  It writes the kept files into a
   tar of its own making, ``artifacts.tar`` in the run's spool folder, and one
   index line per file into ``artifacts.index``; the stream is never held
   whole, and a malformed stream ends the collection (what was whole is kept).

``dispatcher.artifact_store`` uploads them when the result is recorded.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tarfile
from pathlib import Path
from typing import IO, Any

from chalicelib.artifacts import MAX_DEPTH, MAX_FILES
from chalicelib.errors import InvalidInput
from chalicelib.files import clean_name

BLOCK = tarfile.BLOCKSIZE
MAX_META = 64 * 1024  # a pax header or GNU long name longer than this is not one tar would write
TAR_FILE = "artifacts.tar"
INDEX_FILE = "artifacts.index"
MARKER = b"\x1eOD-ARTIFACTS "
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_STATUS_MAX = 8  # bytes of "<exit status>\n"


def new_nonce() -> str:
    return secrets.token_hex(16)


class Collector:
    """A push parser of the tar stream that keeps what may be kept (see the module's docstring)."""

    def __init__(self, folder: Path | None, cap_bytes: int, max_files: int = MAX_FILES) -> None:
        self.cap = cap_bytes
        self.max_files = max_files
        self.count = 0
        self.bytes = 0
        self.skipped = 0  # entries that are not regular files with acceptable names (folders aside)
        self.truncated = False  # something was dropped for the caps, or the stream was cut
        self._names: set[bytes] = set()  # digests of the names kept: a name is kept once
        self.folder = folder
        self._out: IO[bytes] | None = None  # opened with the first file kept, closed by ``finish``
        self._index: IO[str] | None = None
        self._offset = 0  # bytes written to the tar of kept files
        self._buf = bytearray()  # a header block, or a pax header / long name, being gathered
        self._meta = ""  # "" (a header is next), or the kind of metadata being gathered ("L", "x")
        self._meta_size = 0
        self._skip = 0  # input bytes to pass over (an entry not kept, or padding)
        self._copy = 0  # bytes of the kept entry still to copy
        self._entry: list[Any] | None = None  # the kept entry being copied
        self._entry_start = 0
        self._long_name: str | None = None
        self._pax: dict[str, str] = {}
        self.ended = False  # the end-of-archive marker was read
        self.broken = False  # the stream did not parse: nothing more is read from it

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not (self.ended or self.broken):
            if self._copy:  # a kept file's bytes (then its padding, skipped)
                n = min(self._copy, len(view))
                self._write(view[:n])
                self._copy -= n
                view = view[n:]
                if not self._copy:
                    self._end_entry()
            elif self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
            else:
                need = (self._meta_size if self._meta else BLOCK) - len(self._buf)
                self._buf += view[:need]
                view = view[need:]
                if len(self._buf) == (self._meta_size if self._meta else BLOCK):
                    block, self._buf = bytes(self._buf), bytearray()
                    if self._meta:
                        self._read_meta(block)
                    else:
                        self._read_header(block)

    def _read_header(self, block: bytes) -> None:
        if block == b"\0" * BLOCK:
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.TarError:
            self._break()
            return
        size = info.size
        if size < 0:  # base-256 can say it; tar never would
            self._break()
            return
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
            if size > MAX_META:
                self._break()
                return
            self._meta, self._meta_size = info.type.decode(), size
            if size == 0:
                self._read_meta(b"")
            return
        padded = size + (-size) % BLOCK
        name = self._pax.pop("path", None) or self._long_name or info.name
        size = int(self._pax.pop("size", size)) if info.type in _REGULAR else size
        padded = size + (-size) % BLOCK if info.type in _REGULAR else padded
        self._long_name, self._pax = None, {}
        if info.type not in _REGULAR:
            self._skip = padded  # a folder, a link, a device, a fifo, metadata we do not use: never followed
            if info.type != tarfile.DIRTYPE and info.type not in (tarfile.GNUTYPE_LONGLINK, tarfile.XGLTYPE):
                self.skipped += 1
            return
        clean = _artifact_name(name)
        if clean is None:
            self.skipped += 1
            self._skip = padded
            return
        digest = hashlib.blake2b(clean.encode(), digest_size=16).digest()
        if digest in self._names:
            self.skipped += 1
            self._skip = padded
            return
        if self.count >= self.max_files or self.bytes + size > self.cap:
            self.truncated = True
            self._skip = padded
            return
        self._names.add(digest)
        out = tarfile.TarInfo(clean)
        out.size = size
        out.mode = 0o755 if info.mode & 0o111 else 0o644
        out.mtime = max(0, int(info.mtime))
        out.type = tarfile.REGTYPE
        self._entry_start = self._offset
        self._write(out.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
        self._entry = [clean, size, self._offset]
        self._copy = size
        self._skip = padded - size  # the input's padding, after the data
        if not size:
            self._end_entry()

    def _read_meta(self, data: bytes) -> None:
        kind, size = self._meta, self._meta_size
        self._meta, self._meta_size = "", 0
        self._skip = (-size) % BLOCK
        if kind == "L":
            self._long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            return
        pax = _pax_records(data)
        if pax is None:
            self._break()
            return
        self._pax = {k: v for k, v in pax.items() if k in ("path", "size")}
        if "size" in self._pax and not self._pax["size"].isdigit():
            self._break()

    def _end_entry(self) -> None:
        assert self._entry is not None
        size = self._entry[1]
        self._write(b"\0" * ((-size) % BLOCK))
        if self._index is not None:
            self._index.write(json.dumps(self._entry, ensure_ascii=False) + "\n")
        self.count += 1
        self.bytes += size
        self._entry = None

    def _write(self, data: bytes | memoryview) -> None:
        if self._out is None and self.folder is not None:
            self._out = open(self.folder / TAR_FILE, "wb")  # noqa: SIM115 - closed by ``finish``
            self._index = open(self.folder / INDEX_FILE, "w")  # noqa: SIM115
        if self._out is not None:
            self._out.write(data)
        self._offset += len(data)

    def _break(self) -> None:
        self.broken = True
        self.truncated = True

    def finish(self, started: bool = True) -> None:
        """The stream ended: drop a file it cut short, end the tar, close the files.

        ``started`` False: no artifacts' stream came at all (the program left no ``out``, or was killed)."""
        if started and not self.ended:
            self.truncated = True
        if self._entry is not None:  # cut in the middle of a kept file: it is not kept
            self._entry = None
            self._copy = 0
            if self._out is not None:
                self._out.truncate(self._entry_start)
                self._out.seek(self._entry_start)
            self._offset = self._entry_start
        if self._out is not None:
            self._out.write(b"\0" * (2 * BLOCK))
            self._out.close()
            self._out = None
        if self._index is not None:
            self._index.close()
            self._index = None


def _artifact_name(raw: str) -> str | None:
    """The name under ``out/`` that an entry may be kept as; None when it may not."""
    if not raw.startswith("out/"):
        return None
    try:
        raw.encode("utf-8")  # not valid UTF-8 (surrogate escapes): not a name a client can ask for
        name = clean_name(raw[len("out/") :])
    except (UnicodeEncodeError, InvalidInput):
        return None
    return name if name.count("/") < MAX_DEPTH else None


def _pax_records(data: bytes) -> dict[str, str] | None:
    """A pax header's ``"<length> <key>=<value>\\n"`` records; None when they do not parse."""
    records: dict[str, str] = {}
    at = 0
    while at < len(data) and data[at] != 0:
        space = data.find(b" ", at)
        if space < 0 or not data[at:space].isdigit():
            return None
        end = at + int(data[at:space])
        if end > len(data) or end <= space or data[end - 1 : end] != b"\n":
            return None
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            return None
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        at = end
    return records


class Splitter:
    """Stdout before the run's marker is the program's; after it, the artifacts' tar (see the module)."""

    def __init__(self, nonce: str, collector: Collector) -> None:
        self.marker = MARKER + nonce.encode() + b" "
        self.collector = collector
        self.status: int | None = None  # the program's exit status, once the marker's line is read
        self._held = b""  # the end of what was fed that may be the start of the marker
        self._line = b""  # the marker's status line, as it comes
        self._seen = False

    def feed(self, data: bytes) -> bytes:
        """What of ``data`` is the program's stdout (the rest goes to the collector)."""
        if self._seen:
            self._after(data)
            return b""
        data = self._held + data
        self._held = b""
        at = data.find(self.marker)
        if at >= 0:
            self._seen = True
            self._after(data[at + len(self.marker) :])
            return data[:at]
        start = data.rfind(MARKER[:1], max(0, len(data) - len(self.marker) + 1))
        if start >= 0 and self.marker.startswith(data[start:]):
            self._held = data[start:]  # perhaps the marker's start: decided by the next bytes
            return data[:start]
        return data

    def _after(self, data: bytes) -> None:
        if self.status is None:
            self._line += data
            end = self._line.find(b"\n")
            if end < 0:
                if len(self._line) > _STATUS_MAX:
                    self._malformed()
                return
            text, data = self._line[:end], self._line[end + 1 :]
            self._line = b""
            if not (text.isdigit() and len(text) <= 3):
                self._malformed()
                return
            self.status = int(text)
        self.collector.feed(data)

    def _malformed(self) -> None:
        """Not the status line the prologue writes: nothing after it is read (the exit code is the engine's)."""
        self._line = b""
        self.collector.broken = self.collector.truncated = True

    def finish(self) -> bytes:
        """The stream ended: what was held back is the program's after all; the collection ends."""
        held, self._held = self._held, b""
        self.collector.finish(started=self._seen)
        return held

    @property
    def seen(self) -> bool:
        return self._seen
