"""A run's conversation with its container: what goes in on stdin, what comes back on the attach stream.

Everything a run needs arrives on the container's stdin, without any host
path: a header line, the command (with the sandbox's environment as
``export`` lines), the tar the API stored, then the program's own stdin.  The
container's prologue (``container.PROLOGUE``) reads exactly the header's byte
counts, unpacks the tar and ``exec``-s the command, which inherits the rest as
its stdin.  That works the same for a local engine and an ``ssh://`` one.

Output is read from the attach stream as it comes, kept up to the cap per
stream and counted beyond it, so a flood costs the dispatcher a fixed buffer.
What follows the run's artifacts marker on stdout is not output: it goes to
``dispatcher.artifacts`` (see there).
"""

from __future__ import annotations

import shlex
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from dispatcher.artifacts import Splitter
from dispatcher.engine import RunSpec

READ_CHUNK = 64 * 1024


def stdin_for(spec: RunSpec, payload: bytes, nonce: str = "") -> bytes:
    """What the prologue reads: the header, the command (environment first), then the tar and stdin.

    ``nonce``: the run's artifacts marker (``dispatcher.artifacts``); "" collects none."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in spec.env.items())
    script = (exports + " && ".join(spec.cmd)).encode()
    return f"{spec.files_bytes} {len(script)} {nonce}\n".encode() + script + payload


def send_input(raw: Any, payload: bytes, program_at: int = 0, on_program: Callable[[], None] | None = None) -> None:
    """Write the header, command, tar and stdin, then close our writing side so the program sees EOF.

    ``on_program`` is called once the first ``program_at`` bytes (all the prologue needs before it
    starts the program) are written: from then on the program may have run.
    """
    try:
        if on_program is not None:
            raw.sendall(payload[:program_at])
            on_program()
            payload = payload[program_at:]
        if payload:
            raw.sendall(payload)
    except OSError:
        pass  # the program exited without reading everything: that is its business
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Capture:
    """Keeps up to ``cap`` bytes per stream; ``logs`` interleaves exactly the kept parts.

    With a ``folder`` the kept bytes go straight to its files ``stdout``,
    ``stderr`` and ``logs`` as they arrive (unbuffered, so a reader of the
    files sees them at once) and nothing is held here; without one they are
    kept in memory (the bench, the tests' engines).
    """

    def __init__(self, cap: int, folder: Path | None = None, splitter: Splitter | None = None) -> None:
        self.cap = cap
        self.splitter = splitter  # takes the artifacts (after their marker) out of stdout
        self.sizes = {1: 0, 2: 0}
        self.kept = {1: bytearray(), 2: bytearray()}
        self.logs = bytearray()
        self.truncated = False
        self.files: dict[int, BinaryIO] = {}
        self.log_file: BinaryIO | None = None
        if folder is not None:
            self.files = {1: open(folder / "stdout", "wb", buffering=0), 2: open(folder / "stderr", "wb", buffering=0)}  # noqa: SIM115
            self.log_file = open(folder / "logs", "wb", buffering=0)  # noqa: SIM115

    def add(self, stream: int, data: bytes) -> None:
        if stream == 1 and self.splitter is not None:
            data = self.splitter.feed(data)  # all of stdout, past the cap too: the marker comes last
        self._keep(stream, data)

    def _keep(self, stream: int, data: bytes) -> None:
        size = self.sizes.get(stream)
        if size is None or not data:
            return
        room = self.cap - size
        if room <= 0:
            self.truncated = True
            return
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.sizes[stream] = size + len(data)
        if self.log_file is not None:
            self.files[stream].write(data)
            self.log_file.write(data)
        else:
            self.kept[stream] += data
            self.logs += data

    def close(self) -> None:
        if self.splitter is not None:
            self._keep(1, self.splitter.finish())
            self.splitter = None
        for f in [*self.files.values(), *([self.log_file] if self.log_file else [])]:
            f.close()


def demux(raw: Any, capture: Capture) -> None:
    """Read Docker's multiplexed attach stream to its end, frame by frame, in bounded memory."""
    header = b""
    stream, remaining = 0, 0
    while True:
        chunk = raw.recv(READ_CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            if remaining == 0:
                need = 8 - len(header)
                header += view[:need].tobytes()
                view = view[need:]
                if len(header) < 8:
                    break
                stream, remaining = struct.unpack(">BxxxL", header)
                header = b""
                continue
            take = view[:remaining]
            capture.add(stream, take.tobytes())
            remaining -= len(take)
            view = view[len(take) :]
