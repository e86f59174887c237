"""Docker's answers in the dispatcher's terms: its transport and API errors, and its exit codes.

docker-py talks HTTP through ``requests``: a connection failure is the engine
gone (``EngineUnavailable``), any other Docker error a ``PlatformError``, each
raised again ``from`` the original.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from docker.errors import DockerException

from dispatcher.engine import EngineUnavailable, PlatformError

# Exit codes of a container ended by a signal: SIGKILL (the timeout, a cancel, the OOM killer,
# or someone outside), SIGTERM (only ever someone outside: the dispatcher sends SIGKILL).
SIGNALLED = (137, 143)


def engine_gone(e: BaseException | None) -> bool:
    """Whether the engine could not be reached (docker-py talks HTTP through ``requests``).

    A pooled connection can still answer a ping while a stopping engine has
    already closed its socket, so the failure itself is the better witness.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, requests.exceptions.ConnectionError):
            return True
        e = e.__cause__ or e.__context__
    return False


def translated(e: Exception) -> Exception:
    """The dispatcher's own error for an engine's: raise the answer ``from e``."""
    if engine_gone(e):
        return EngineUnavailable(f"{type(e).__name__}: {e}")
    if isinstance(e, PlatformError):
        return e
    if isinstance(e, DockerException):
        return PlatformError(f"docker: {e}")
    if isinstance(e, requests.exceptions.RequestException):
        return PlatformError(f"{type(e).__name__}: {e}")
    return e  # not the engine's: the dispatcher reports it as unexpected


def exit_code(container: dict[str, Any]) -> int | None:
    """The exit code a listed container's status line gives ("Exited (137) 5 seconds ago")."""
    match = re.match(r"^Exited \((-?\d+)\)", str(container.get("Status") or ""))
    return int(match.group(1)) if match else None
