"""``python -m tests.drills.faketime_boot MODULE ARGS...``: ``python -m MODULE ARGS...`` under libfaketime.

With only the wall clock faked, libfaketime 0.9.10 makes ``clock_nanosleep``
(``time.sleep``) fail with EINVAL; a ``select`` timeout sleeps the same.
See ``faketime.py``.
"""

from __future__ import annotations

import runpy
import select
import sys
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


if __name__ == "__main__":
    time.sleep = _sleep
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
