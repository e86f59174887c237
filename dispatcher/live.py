"""A running sandbox's output, made visible while it runs.

The engine writes each stream into the run's spool folder as it comes (see
``attach.Capture``).  ``Live`` looks at those files every ``LOOK_S`` and puts
what is new of a stream into S3 as one more chunk, at most once per ``TICK_S``
per stream (so a line shows within ``LOOK_S`` while a program writes up to ten
lines a second, and a steady writer costs at most ten writes a second per
stream; at 250 ms, a program printing five lines a second had every line wait
for the next allowed write, ~170 ms from the spool to S3), the first no sooner than
``FIRST_S`` after the program's start (``begin``; ``TICK_S`` after the run's
start when the engine says nothing) -- most programs end sooner, and then cost
no chunk, no delete, at all (their result holds their output) --
``sandboxes/<id>/live/<stream>/<offset>`` (``chalicelib.output.live_key``),
so the API can answer downloads and the live tail (``/logs?offset=``) before
the run ends.  A tick writes at most one chunk per stream of at most
``CHUNK_BYTES``: a run costs at most 30 writes a second and one chunk of
memory, however fast its program writes; a flood is stored whole from the
spool when the run ends anyway (``result.attributes``), and the chunks are
deleted once the result is recorded: by the keys this run wrote (one S3 call,
no listing), or by listing the sandbox's live folder when those are not known
(more than ``TRACKED_KEYS`` chunks, or a sandbox tried before, whose earlier
try may have left chunks of its own).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from chalicelib import aws, output
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.settings import Settings

logger = logging.getLogger("opendevelop.dispatcher")

TICK_S = 0.1
FIRST_S = 0.25  # the first flush after the program starts: within the tail's promise of 250 ms
LOOK_S = 0.05  # a stat of three files: cheap
TRACKED_KEYS = 1000  # one DeleteObjects' worth; a longer run's chunks are found by listing
_LOGS_FIRST = sorted(output.STREAMS, key=lambda stream: stream != "logs")  # what the live tail reads goes first


class Live(threading.Thread):
    def __init__(self, settings: Settings, sandbox_id: str, folder: Path, tick_s: float = TICK_S) -> None:
        super().__init__(name=f"live-{sandbox_id}", daemon=True)
        self.settings = settings
        self.sandbox_id = sandbox_id
        self.folder = folder
        self.tick_s = tick_s
        self.sent = dict.fromkeys(output.STREAMS, 0)
        # When each stream's last chunk went.  The run's start counts as one: output shows within
        # ``tick_s`` of it, and a run that ends sooner (most do) costs no chunk at all (no PUTs, no
        # list and delete after it): its result holds its output.
        self.last = dict.fromkeys(output.STREAMS, time.monotonic())
        self.chunks = 0
        self.keys: list[str] = []  # what this run wrote, while there are at most TRACKED_KEYS
        self._stop_event = threading.Event()

    def begin(self) -> None:
        """The program starts now: its first chunk may go ``FIRST_S`` from now, not sooner."""
        later = time.monotonic() + FIRST_S - self.tick_s
        self.last = {stream: max(last, later) for stream, last in self.last.items()}

    def run(self) -> None:
        while not self._stop_event.wait(min(LOOK_S, self.tick_s)):
            try:
                self.tick()
            except Unavailable as e:  # S3 away: the next tick tries again; the result does not depend on it
                log(logger, "live.upload_failed", logging.WARNING, sandbox_id=self.sandbox_id, error=str(e)[:300])

    def tick(self) -> None:
        now = time.monotonic()
        for stream in _LOGS_FIRST:
            if now - self.last[stream] < self.tick_s:
                continue
            path = self.folder / stream
            try:
                size = path.stat().st_size
            except OSError:
                continue
            start = self.sent[stream]
            if size <= start:
                continue
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(min(size - start, output.CHUNK_BYTES))
            key = output.live_key(self.sandbox_id, stream, start)
            aws.put_object(self.settings, key, data)
            self.sent[stream] = start + len(data)
            self.last[stream] = now
            self.chunks += 1
            if self.chunks <= TRACKED_KEYS:
                self.keys.append(key)
            else:
                self.keys.clear()

    def written(self, tried_before: bool) -> list[str] | None:
        """The keys to delete once the result is recorded; None when the live folder must be listed."""
        return None if tried_before or self.chunks > TRACKED_KEYS else list(self.keys)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def forget(settings: Settings, sandbox_id: str, keys: list[str] | None = None) -> None:
    """Delete the run's live chunks (its result is recorded): ``keys``, or all under the sandbox's live
    folder when None; best effort: the bucket's rule expires them too."""
    try:
        if keys is None:
            keys = output.live_keys(settings, sandbox_id)
        for i in range(0, len(keys), 1000):
            aws.delete_objects(settings, keys[i : i + 1000])
    except Unavailable as e:
        log(logger, "live.cleanup_failed", logging.WARNING, sandbox_id=sandbox_id, error=str(e)[:300])
