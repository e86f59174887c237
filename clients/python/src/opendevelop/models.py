"""What the API returns, as Python values."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

FINAL_STATES = frozenset({"terminated", "error", "cancelled"})


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _cmd(value: Any) -> list[str]:
    """The API shows ``cmd`` as a JSON-encoded list (as the original did); here it is the list."""
    if isinstance(value, list):
        return [str(line) for line in value]
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return [str(value)]
    return [str(line) for line in decoded] if isinstance(decoded, list) else [str(decoded)]


@dataclass(frozen=True)
class Artifact:
    """A file the program left in ``out/``: its name relative to ``out/``, and its size."""

    name: str
    size: int


@dataclass(frozen=True)
class Sandbox:
    """One sandbox: what was asked, where it is, and (once finished) how it ended.

    ``status`` is ``queued``, ``running``, or a final one: ``terminated`` (the
    program ended: see ``return_code``, ``timed_out``, ``oom_killed``),
    ``error`` (the platform failed: see ``error``) or ``cancelled``.  The
    outputs are ``""`` until there are some.  ``raw`` is the API's JSON as it
    came, fields this client does not know included.
    """

    id: str
    status: str
    image: str
    cmd: list[str]
    return_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    logs: str = ""
    timeout: float | None = None
    limits: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False
    oom_killed: bool = False
    output_truncated: bool = False
    error: str | None = None
    files: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    server: str | None = None
    stdout_bytes: int = 0  # the whole stream's size (``stdout`` holds at most its first 64 KiB, as text)
    stderr_bytes: int = 0
    inline_truncated: bool = False  # some of stdout, stderr, logs is shorter than its stream: see ``read``
    output_gone: bool = False  # the stored output has expired
    # The files the program left in out/: the first 100 listed (``artifacts_count`` in all); see ``download``.
    artifacts: list[Artifact] = field(default_factory=list)
    artifacts_count: int = 0
    artifacts_truncated: bool = False  # some were dropped: over ``artifacts_kb`` (or 10,000 files)
    # The webhook, when created with ``callback_url``: {"url", "status", "attempts", "last_error"}.
    callback: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The client that fetched it, for ``stream`` and ``read``; None for a sandbox made by hand.
    client: Any = field(default=None, repr=False, compare=False)

    def stream(self, stream: str = "logs") -> Iterator[str]:
        """The output as it comes, chunk by chunk, until the sandbox has settled (see ``Client.stream``)."""
        return self._client().stream(self.id, stream)

    def read(self, stream: str = "stdout") -> bytes:
        """``stdout`` or ``stderr``: the exact bytes the program wrote (see ``Client.output``)."""
        return bytes(self._client().output(self.id, stream))

    def download(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the artifacts (the files the program left in ``out/``) into ``folder`` (see ``Client.download``)."""
        return list(self._client().download(self.id, folder))

    def _client(self) -> Any:
        if self.client is None:
            raise RuntimeError("this sandbox was not fetched by a Client: use Client.stream / Client.output")
        return self.client

    @property
    def finished(self) -> bool:
        """It will not change any more."""
        return self.status in FINAL_STATES

    @property
    def ok(self) -> bool:
        """The program ran to its end and exited 0."""
        return self.status == "terminated" and self.return_code == 0 and not self.timed_out and not self.oom_killed

    @classmethod
    def from_json(cls, data: dict[str, Any], client: Any = None) -> Sandbox:
        return cls(
            client=client,
            stdout_bytes=int(data.get("stdout_bytes") or 0),
            stderr_bytes=int(data.get("stderr_bytes") or 0),
            inline_truncated=bool(data.get("inline_truncated")),
            output_gone=bool(data.get("output_gone")),
            artifacts=[Artifact(str(a["name"]), int(a["size"])) for a in data.get("artifacts") or []],
            artifacts_count=int(data.get("artifacts_count") or 0),
            artifacts_truncated=bool(data.get("artifacts_truncated")),
            id=str(data["id"]),
            status=str(data["status"]),
            image=str(data.get("image") or ""),
            cmd=_cmd(data.get("cmd", "[]")),
            return_code=None if data.get("return_code") is None else int(data["return_code"]),
            stdout=data.get("stdout") or "",
            stderr=data.get("stderr") or "",
            logs=data.get("logs") or "",
            timeout=None if data.get("timeout") is None else float(data["timeout"]),
            limits=dict(data.get("limits") or {}),
            timed_out=bool(data.get("timed_out")),
            oom_killed=bool(data.get("oom_killed")),
            output_truncated=bool(data.get("output_truncated")),
            error=data.get("error"),
            files=int(data.get("files") or 0),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            duration_ms=None if data.get("duration_ms") is None else int(data["duration_ms"]),
            server=data.get("server"),
            callback=data.get("callback"),
            raw=data,
        )


_PLACEHOLDER = re.compile(r"\{(file|stem)\}")


@dataclass(frozen=True)
class Image:
    """An image as ``GET /api/images/{name}`` describes it.

    ``run`` is a command line for one file (``"go run {file}"``): ``{file}`` is
    the file's path as uploaded, ``{stem}`` its name without folder or extension;
    ``run_by_extension`` holds the templates of extensions ``run`` does not fit
    (``{".c": "gcc ..."}``).  ``extensions`` are the files the image claims.
    """

    name: str
    description: str = ""
    language: str = ""
    version: str = ""
    run: str = ""
    extensions: list[str] = field(default_factory=list)
    run_by_extension: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def claims(self, file: str) -> bool:
        """Whether this image claims ``file`` by its extension."""
        return bool(_extension(file)) and _extension(file) in self.extensions

    def command_for(self, file: str) -> str:
        """The command line that runs ``file`` (a name as uploaded); ``ValueError`` if the image has no template."""
        template = self.run_by_extension.get(_extension(file)) or self.run
        if not template:
            raise ValueError(f"image {self.name!r} does not say how to run a file")
        name = file.rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        return _PLACEHOLDER.sub(lambda m: shlex.quote(file if m.group(1) == "file" else stem), template)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            language=str(data.get("language") or ""),
            version=str(data.get("version") or ""),
            run=str(data.get("run") or ""),
            extensions=[str(e) for e in data.get("extensions") or []],
            run_by_extension={str(k): str(v) for k, v in (data.get("run_by_extension") or {}).items()},
            raw=data,
        )


def _extension(file: str) -> str:
    name = file.rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[1] if "." in name.lstrip(".") else ""
