"""Run a platform process with its wall clock skewed, through Debian's ``faketime`` (libfaketime).

``skewed(["python", "-m", "dispatcher", ...], 60)`` gives the command line
that runs it 60 s ahead (negative: behind).  Only the wall clock moves
(``FAKETIME_DONT_FAKE_MONOTONIC=1``), as when a host's clock is wrong:
timeouts and waits keep real time.  Two things of libfaketime 0.9.10 shape
this:

* with the monotonic clock faked too, Python's timed waits (``Event.wait``,
  ``Lock.acquire(timeout=)``, which use ``sem_clockwait``, a call libfaketime
  does not wrap) wait the skew on top of their timeout: +60 s on every wait;
* with it real, ``clock_nanosleep`` fails with EINVAL, so ``time.sleep``
  raises.  ``faketime_boot`` (run in place of ``python -m``) swaps
  ``time.sleep`` for a ``select`` timeout before running the module.

``faketime`` is installed with apt when missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

_install_lock = threading.Lock()


def ensure_faketime() -> str:
    """The path of ``faketime``, installing Debian's package first if it is missing."""
    with _install_lock:
        path = shutil.which("faketime")
        if path:
            return path
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        install = ["apt-get", "install", "-y", "-qq", "faketime"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=300)
            subprocess.run(install, env=env, check=True, capture_output=True, timeout=300)
        path = shutil.which("faketime")
        if not path:
            raise RuntimeError("faketime is not on PATH after `apt-get install faketime`")
        return path


def skewed(module_args: list[str], offset_s: int) -> list[str]:
    """``python -m <module_args>`` with the wall clock ``offset_s`` seconds off."""
    return [
        ensure_faketime(),
        "-f",
        f"{offset_s:+d}",
        sys.executable,
        "-m",
        "tests.drills.faketime_boot",
        *module_args,
    ]


# The environment ``skewed`` command lines need.
ENV = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
