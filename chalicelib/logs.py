"""JSON log lines with the same keys everywhere (``sandbox_id``, ``server``, ``app_id``).

Every line is one JSON object written by ``log``: ``ts``, ``event``, then the
fields.  A fault is logged in full once, where it is handled at the boundary
(``log_exception``: the error and its traceback as fields of the same line);
everywhere else an error is one short field (``describe``).

Never log a secret, submitted code or program output: log sizes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

ERROR_MAX_CHARS = 500
TRACEBACK_MAX_CHARS = 8000


def log(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str))


def describe(error: BaseException) -> str:
    """An error as one short field: its type and message."""
    return f"{type(error).__name__}: {error}"[:ERROR_MAX_CHARS]


def log_exception(
    logger: logging.Logger, event: str, error: BaseException, level: int = logging.ERROR, **fields: Any
) -> None:
    """An unexpected fault, in full, as one JSON line: ``error`` and its ``traceback`` (chained causes included)."""
    trace = "".join(traceback.format_exception(error))
    log(logger, event, level, **fields, error=describe(error), traceback=trace[-TRACEBACK_MAX_CHARS:])


def setup(level: str = "INFO") -> None:
    """Plain message lines on stderr: every message is already a JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("opendevelop")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
