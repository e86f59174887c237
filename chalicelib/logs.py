"""JSON log lines with the same keys everywhere (``sandbox_id``, ``server``, ``app_id``).

Never log a secret, submitted code or program output: log sizes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def log(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str))


def setup(level: str = "INFO") -> None:
    """Plain message lines on stderr: every message is already a JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("opendevelop")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
