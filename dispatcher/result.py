"""A finished run's result as the row's attributes (written by ``lifecycle.record``, fenced by the run's token).

Each stream's first 64 KiB as text and its size; a stream the row's text does
not hold exactly is uploaded from the spool as it is (see ``chalicelib.output``;
a large one goes on from the parts sent while the program wrote it, ``parts``),
the streams at once (a flood's 10 + 10 + 20 MiB went one after the other: ~300
ms on the local stack, ~210 ms together); then the artifacts
(``artifact_store``).  ``upload(key, path)`` is the caller's, with its retries.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pynamodb.expressions.update import Action

from chalicelib import output
from chalicelib.models import Sandbox
from dispatcher import artifact_store, parts
from dispatcher.artifact_store import Upload
from dispatcher.engine import RunResult


def attributes(sandbox_id: str, token: str, result: RunResult, upload: Upload) -> list[Action]:
    """The row's result attributes; a stream the row's text does not hold exactly is uploaded, and so
    are the artifacts (``artifact_store``)."""
    actions: list[Action] = [
        Sandbox.return_code.set(result.return_code),
        Sandbox.timed_out.set(result.timed_out),
        Sandbox.oom_killed.set(result.oom_killed),
        Sandbox.output_truncated.set(result.output_truncated),
        Sandbox.files_inline.remove(),  # done with: keeps finished rows (and list pages) small
        Sandbox.output_key.remove(),
    ]
    folder = result.output_dir
    assert folder is not None  # spooled before it is recorded
    objects: list[str] = []
    sizes: dict[str, int] = {}
    cut = False
    for stream in output.STREAMS:
        path = folder / stream
        size = sizes[stream] = path.stat().st_size if path.exists() else 0
        head = _head(path, output.PREVIEW_BYTES + 1)
        text, whole = output.preview(head[: output.PREVIEW_BYTES])
        exact = size <= output.PREVIEW_BYTES and whole and _utf8(head)
        cut = cut or size > output.PREVIEW_BYTES or not whole
        if size and not exact:
            objects.append(stream)
        attribute = getattr(Sandbox, stream)
        actions.append(attribute.set(text) if text or stream == "logs" else attribute.remove())
        actions.append(getattr(Sandbox, f"{stream}_bytes").set(size))
    objects = _logs_as_one_stream(sizes, objects)
    _upload_all(sandbox_id, token, folder, [stream for stream in objects if "=" not in stream], upload)
    actions.append(Sandbox.output_objects.set(objects) if objects else Sandbox.output_objects.remove())
    actions.append(Sandbox.output_token.set(token) if objects else Sandbox.output_token.remove())
    actions.append(Sandbox.inline_truncated.set(cut))
    return actions + artifact_store.store(sandbox_id, token, result, upload)


def _logs_as_one_stream(sizes: dict[str, int], objects: list[str]) -> list[str]:
    """``objects`` with ``logs`` read from the one stream the program wrote, when it wrote to one only:
    the interleaved log is then that stream byte for byte (``attach.Capture`` writes each kept byte to
    both), so it is not uploaded twice (``chalicelib.output.object_key``)."""
    if "logs" not in objects:
        return objects
    for one, other in (("stdout", "stderr"), ("stderr", "stdout")):
        if one in objects and sizes[other] == 0 and sizes[one] == sizes["logs"]:
            return [f"logs={one}" if stream == "logs" else stream for stream in objects]
    return objects


def _upload_all(sandbox_id: str, token: str, folder: Path, streams: list[str], upload: Upload) -> None:
    """Each of ``streams`` uploaded from its spool file, at once (each streamed from disk, so memory stays a
    few buffers; at most ``parts.UPLOADS_AT_ONCE`` in the process); the first failure is raised once every upload
    has ended (``record`` tries them again)."""

    def one(stream: str) -> None:
        with parts.uploads:
            upload(output.key(sandbox_id, stream, token), folder / stream)

    if len(streams) <= 1:
        for stream in streams:
            one(stream)
        return
    with ThreadPoolExecutor(max_workers=len(streams), thread_name_prefix=f"upload-{sandbox_id}") as pool:
        futures = [pool.submit(one, stream) for stream in streams]
    for future in futures:
        future.result()


def _head(path: Path, n: int) -> bytes:
    if not path.exists():
        return b""
    with open(path, "rb") as f:
        return f.read(n)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def sizes(result: RunResult) -> dict[str, int]:
    """Each stream's size, for the log (never its content)."""
    folder = result.output_dir
    sizes = {}
    for stream in ("stdout", "stderr"):
        path = folder / stream if folder else None
        sizes[f"{stream}_bytes"] = path.stat().st_size if path and path.exists() else len(getattr(result, stream))
    return sizes
