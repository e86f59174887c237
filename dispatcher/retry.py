"""Retrying AWS calls in place: which failures are worth it, and how long to keep at it.

A transient DynamoDB or S3 failure (endpoint unreachable, throttling, a 5xx) is
retried with jittered exponential backoff for a budget (``retry_budget_s``);
the message stays hidden meanwhile.  Anything else -- and a transient failure
past the budget -- is raised to the caller.  The clock is injectable, so tests
spend no real time in backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import DoesNotExist, PynamoDBException

from chalicelib.errors import Unavailable
from chalicelib.logs import log
from dispatcher.engine import PlatformError

logger = logging.getLogger("opendevelop.dispatcher")

T = TypeVar("T")

FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0
COLD_BUDGET_S = 5.0  # a cold stop is asked to end now
# DynamoDB/SQS error codes that are worth retrying (everything else is the request's own fault).
RETRYABLE_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
}


def transient(e: BaseException) -> bool:
    """Whether retrying the same call may succeed: transport trouble, throttling, a 5xx."""
    if isinstance(e, Unavailable):
        cause = e.__cause__
        return cause is None or transient(cause)
    if isinstance(e, PlatformError):
        return e.transient and (e.__cause__ is None or transient(e.__cause__))
    if isinstance(e, DoesNotExist):
        return False
    if isinstance(e, PynamoDBException):
        code = e.cause_response_code
        return code is None or code in RETRYABLE_CODES
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in RETRYABLE_CODES or status >= 500
    return isinstance(e, BotoCoreError | ConnectionError | TimeoutError)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Retry:
    """``retry(what, call)``: ``call()``, again while it fails transiently and the budget lasts."""

    def __init__(
        self,
        budget_s: float,
        server: str = "",
        cold: threading.Event | None = None,
        clock: Clock | None = None,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
    ) -> None:
        self.budget_s = budget_s
        self.server = server
        self.cold = cold or threading.Event()
        self.clock = clock or SystemClock()
        self.jitter = jitter

    def __call__(self, what: str, call: Callable[[], T], budget_s: float | None = None, sandbox_id: str = "") -> T:
        budget = self.budget_s if budget_s is None else budget_s
        if self.cold.is_set():
            budget = min(budget, COLD_BUDGET_S)
        deadline = self.clock.monotonic() + budget
        delay = FIRST_DELAY_S
        tries = 0
        while True:
            try:
                return call()
            except Exception as e:
                tries += 1
                if not transient(e) or self.clock.monotonic() + delay > deadline:
                    raise
                log(
                    logger,
                    "retry",
                    logging.WARNING,
                    what=what,
                    sandbox_id=sandbox_id or None,
                    server=self.server,
                    tries=tries,
                    error=str(e)[:300],
                )
                self.clock.sleep(delay * self.jitter())
                delay = min(delay * 2, MAX_DELAY_S)
