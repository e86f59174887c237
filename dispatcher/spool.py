"""Finished results kept on the host until they are recorded.

A program that has finished is never run again for the platform's sake: its
result is written here before the dispatcher tries to record it, and removed
only once the record is written (or refused because the run lost its token).
Until then a DynamoDB or S3 outage of any length only delays the record, and a
dispatcher killed in the middle of recording finds the result here when it
starts again (``recovery``), with the token of the run that produced it.

One folder per result, ``<spool>/results/<sandbox id>.<token>/``: ``meta.json``
(return code, flags, duration) and the three output files.  A run writes its
output into ``.<sandbox id>.<token>.part/`` while it runs (``start``), and the
folder is renamed into place with its ``meta.json`` once the run has ended, so
a half-written result is never read and no output is ever held whole in memory.
Process crashes lose nothing (the page cache survives them); a crash of the
host also ends its containers, whose runs the reconciler then gives back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dispatcher.engine import RunResult

STREAMS = ("stdout", "stderr", "logs")


@dataclass(frozen=True)
class Kept:
    sandbox_id: str
    token: str
    result: RunResult
    path: Path


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "results"

    def _part(self, sandbox_id: str, token: str) -> Path:
        return self.results / f".{sandbox_id}.{token}.part"

    def start(self, sandbox_id: str, token: str) -> Path:
        """An empty folder for the output of a run about to start (``RunSpec.output_dir``)."""
        self.results.mkdir(parents=True, exist_ok=True)
        work = self._part(sandbox_id, token)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        return work

    def discard(self, sandbox_id: str, token: str) -> None:
        """The run failed: its partial output is not a result."""
        shutil.rmtree(self._part(sandbox_id, token), ignore_errors=True)

    def keep(self, sandbox_id: str, token: str, result: RunResult) -> Path:
        """The finished result, in place; ``result.output_dir`` then names the kept folder."""
        final = self.results / f"{sandbox_id}.{token}"
        work = self._part(sandbox_id, token)
        if result.output_dir is None or result.output_dir != work:
            self.start(sandbox_id, token)  # an engine that kept the output in memory
            for stream in STREAMS:
                (work / stream).write_bytes(getattr(result, stream))
        meta = {k: v for k, v in asdict(result).items() if k not in (*STREAMS, "output_dir")}
        (work / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        result.output_dir = final
        return final

    def drop(self, sandbox_id: str, token: str) -> None:
        shutil.rmtree(self.results / f"{sandbox_id}.{token}", ignore_errors=True)

    def has(self, sandbox_id: str) -> bool:
        return any(self.results.glob(f"{sandbox_id}.*")) if self.results.is_dir() else False

    def clean(self) -> None:
        """Remove half-written results (a dispatcher died writing them); only at start, when none is being written."""
        if self.results.is_dir():
            for path in self.results.glob(".*.part"):
                shutil.rmtree(path, ignore_errors=True)

    def kept(self) -> Iterator[Kept]:
        """Every whole result waiting to be recorded."""
        if not self.results.is_dir():
            return
        for path in sorted(self.results.iterdir()):
            if path.name.startswith("."):
                continue
            sandbox_id, _, token = path.name.partition(".")
            try:
                meta = json.loads((path / "meta.json").read_text())
                streams = {stream: b"" for stream in STREAMS}  # they stay on disk: ``output_dir``
                yield Kept(sandbox_id, token, RunResult(**{**meta, **streams}, output_dir=path), path)
            except (OSError, ValueError, TypeError):
                continue
