"""When a run fails: what kind of failure it was, and the sandbox settled accordingly.

A failure is the platform's, never the program's (a non-zero exit is a
result).  ``classify`` says what kind it is:

* ``counted``: it counts against the sandbox's ``max_attempts``.  A cold stop,
  a lost lease, the engine gone or stopping the container do not: the sandbox
  did nothing wrong.
* ``final``: no retry can help (a malformed stored request, a missing image,
  files gone from S3): ``error`` at once.
* ``engine``: the engine is at fault; the dispatcher takes no work until it
  answers again (its heartbeat goes stale meanwhile, so work goes elsewhere).

``settle`` then gives the sandbox back (``queued``, to run again) or marks it
``error``, through ``chalicelib.lifecycle``, and says which happened.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pynamodb.exceptions import PynamoDBException
from pynamodb.expressions.condition import Condition

from chalicelib import lifecycle
from chalicelib.logs import log
from chalicelib.models import Sandbox
from dispatcher.engine import EngineBroken, EngineUnavailable, PlatformError
from dispatcher.retry import Retry

logger = logging.getLogger("opendevelop.dispatcher")

ENGINE_GONE = "the Docker engine became unreachable"


class Abort(Exception):
    """A run stopped for the dispatcher's own reasons (a cold stop, a lost lease): not the sandbox's try.

    ``started`` False: the program never started, so even a sandbox with network may run again.
    """

    def __init__(self, reason: str, started: bool = True) -> None:
        super().__init__(reason)
        self.started = started


class EngineStopped(Exception):
    """The engine or an operator stopped the container from outside the dispatcher: not the sandbox's try."""


@dataclass(frozen=True)
class Failure:
    reason: str
    counted: bool = True
    final: bool = False
    engine: bool = False
    broken: bool = False  # the engine cannot make containers: the server takes no work until it can
    expected: bool = True  # False: a bug or a failure nobody foresaw, worth its traceback in the log


NETWORK_ONCE = "interrupted after it started; a sandbox with network access is never run twice"


def classify(e: BaseException, engine_answers: Callable[[], bool], network: bool = False) -> Failure:
    """The failure ``e`` was; ``engine_answers`` is asked only when the sandbox would be blamed.

    A sandbox with network that may have started is never given back: its effects may have happened.
    """
    failure = _classify(e, engine_answers)
    if network and not (isinstance(e, Abort) and not e.started):
        return Failure(
            f"{NETWORK_ONCE} ({failure.reason})", final=True, engine=failure.engine, expected=failure.expected
        )
    return failure


def _classify(e: BaseException, engine_answers: Callable[[], bool]) -> Failure:
    if isinstance(e, Abort):
        return Failure(str(e), counted=False)
    if isinstance(e, EngineStopped):
        return Failure(str(e), counted=False, engine=True)
    if isinstance(e, EngineBroken):
        return Failure(f"the Docker engine cannot make containers: {e}", counted=False, broken=True)
    if isinstance(e, EngineUnavailable):
        return Failure(f"{ENGINE_GONE}: {e}", counted=False, engine=True)
    if isinstance(e, PlatformError):
        failure = Failure(str(e), final=not e.transient)
    else:
        failure = Failure(f"{type(e).__name__}: {e}", expected=False)
    if not engine_answers():
        # Not the sandbox's fault after all: the engine went away under it.
        return Failure(f"{ENGINE_GONE}: {failure.reason}", counted=False, engine=True, expected=failure.expected)
    return failure


class Settled(enum.Enum):
    QUEUED = "queued"  # given back, to run again
    ERROR = "error"  # marked error with the reason
    GONE = "gone"  # someone else settled it first (a cancel, the reconciler)
    UNSETTLED = "unsettled"  # the row could not be written: the message comes back, or the reconciler settles it


def settle(
    sandbox: Sandbox, leaving: Condition, failure: Failure, max_attempts: int, retry: Retry, server: str
) -> Settled:
    """Give the sandbox back or mark it ``error``; ``leaving`` names the run it leaves."""
    attempts = int(sandbox.attempts or 0)  # the claim counted this try already
    final = failure.final or (failure.counted and attempts >= max_attempts)
    sandbox_id = sandbox.sandbox_id
    try:
        if final:
            won = retry(
                "settling after a failure",
                lambda: lifecycle.fail(sandbox_id, leaving, failure.reason),
                sandbox_id=sandbox_id,
            )
        else:
            won = retry(
                "settling after a failure",
                lambda: lifecycle.give_back(sandbox_id, leaving, counted=failure.counted),
                sandbox_id=sandbox_id,
            )
    except PynamoDBException as e:
        log(logger, "sandbox.settle_failed", logging.ERROR, sandbox_id=sandbox_id, error=str(e))
        return Settled.UNSETTLED
    if not won:
        log(logger, "sandbox.settled_elsewhere", logging.WARNING, sandbox_id=sandbox_id)
        return Settled.GONE
    log(
        logger,
        "sandbox.error" if final else "sandbox.requeued",
        logging.WARNING,
        sandbox_id=sandbox_id,
        server=server,
        reason=failure.reason[:500],
        attempts=attempts,
        counted=failure.counted,
    )
    return Settled.ERROR if final else Settled.QUEUED
