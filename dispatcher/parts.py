"""A running sandbox's large output, sent to S3 in parts while the program writes it.

The engine writes each stream into the run's spool folder as it comes (see
``attach.Capture``).  ``Sender`` looks at those files every ``LOOK_S``; each
time a stream has a whole part (``aws.PART_BYTES``) more than it has sent, the
part goes to S3 as the next part of the stream's multipart upload, read from
the spool file as it is sent.  When the run ends, ``result.attributes``
uploads each stream the row does not hold through ``aws.put_file`` with the
parts already sent (``for_key``): only the rest is left to send.  So a flood's
output is stored while it is made, and no request to S3 carries more than a
part, however much a program writes.

``logs`` is sent only once both stdout and stderr have bytes: a program that
writes to one stream only has its ``logs`` stored as that stream
(``result._logs_as_one_stream``), not uploaded at all.  A part that fails is
not tried again here: the end of the run sends whatever was not sent (the
spool holds every byte).  Uploads the run did not complete (it failed, or its
result was refused) are abandoned (``abandon``); any left by a dispatcher
killed meanwhile expire by the bucket's lifecycle rule.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from chalicelib import aws, output
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.settings import Settings

logger = logging.getLogger("opendevelop.dispatcher")

LOOK_S = 0.05  # a stat of three files: cheap

# Output uploads (whole files or parts) in flight at once in this dispatcher, whatever its slots: four
# floods together put at most this many bodies in the endpoint's hands, not twelve.
UPLOADS_AT_ONCE = 3
uploads = threading.BoundedSemaphore(UPLOADS_AT_ONCE)


class Sender(threading.Thread):
    def __init__(self, settings: Settings, sandbox_id: str, token: str, folder: Path, look_s: float = LOOK_S) -> None:
        super().__init__(name=f"parts-{sandbox_id}", daemon=True)
        self.settings = settings
        self.sandbox_id = sandbox_id
        self.token = token
        self.folder = folder
        self.look_s = look_s
        self.parts: dict[str, aws.Parts] = {}  # by stream
        self.failed = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.look_s) and not self.failed:
            try:
                self.tick()
            except (Unavailable, OSError) as e:
                self.failed = True  # the rest goes when the run ends
                log(logger, "parts.failed", logging.WARNING, sandbox_id=self.sandbox_id, error=str(e)[:300])

    def tick(self) -> None:
        sizes = {stream: _size(self.folder / stream) for stream in output.STREAMS}
        for stream in output.STREAMS:
            if stream == "logs" and not (sizes["stdout"] and sizes["stderr"]):
                continue  # perhaps the copy of one stream: stored as that stream
            while not self._stop_event.is_set():
                parts = self.parts.get(stream)
                if sizes[stream] - (parts.sent if parts else 0) < aws.PART_BYTES:
                    break
                with uploads:
                    if parts is None:
                        parts = self.parts[stream] = aws.start_parts(
                            self.settings, output.key(self.sandbox_id, stream, self.token)
                        )
                    aws.send_part(self.settings, parts, self.folder / stream)

    def stop(self) -> None:
        """No part begins after this; one being sent is finished first (its file is still in place)."""
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def for_key(self, key: str) -> aws.Parts | None:
        """The upload begun for the stream stored at ``key``, if one was."""
        return next((parts for parts in self.parts.values() if parts.key == key), None)

    def abandon(self) -> None:
        """Abort the uploads not completed (the run failed, or its output went otherwise): best effort."""
        for parts in self.parts.values():
            if not parts.done:
                try:
                    aws.abort_parts(self.settings, parts)
                except Unavailable as e:
                    log(logger, "parts.unabandoned", logging.WARNING, sandbox_id=self.sandbox_id, error=str(e)[:300])
        self.parts.clear()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
