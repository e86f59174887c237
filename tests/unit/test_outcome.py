"""How the dispatcher judges a failure, and retries AWS calls on a fake clock."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from dispatcher.engine import EngineUnavailable, PlatformError
from dispatcher.outcome import Abort, EngineStopped, Failure, classify
from dispatcher.retry import Retry


def engine(answers: bool):
    asked: list[bool] = []

    def healthy() -> bool:
        asked.append(True)
        return answers

    return healthy, asked


def test_a_platform_failure_counts_and_a_lasting_one_is_final():
    healthy, _ = engine(True)
    assert classify(PlatformError("boom"), healthy) == Failure("boom")
    assert classify(PlatformError("no image", transient=False), healthy) == Failure("no image", final=True)


def test_the_dispatchers_own_stops_do_not_count_and_do_not_ask_the_engine():
    healthy, asked = engine(False)
    assert classify(Abort("cold stop"), healthy) == Failure("cold stop", counted=False)
    assert not asked


def test_the_engine_gone_or_stopping_the_container_is_the_engines_fault():
    healthy, _ = engine(True)
    gone = classify(EngineUnavailable("ConnectionError: aborted"), healthy)
    assert (gone.counted, gone.final, gone.engine) == (False, False, True)
    assert gone.reason.startswith("the Docker engine became unreachable")
    stopped = classify(EngineStopped("kill signal 15"), healthy)
    assert (stopped.counted, stopped.engine) == (False, True)


def test_any_failure_while_the_engine_does_not_answer_is_not_the_sandboxs():
    healthy, _ = engine(False)
    failure = classify(PlatformError("no image", transient=False), healthy)
    assert (failure.counted, failure.final, failure.engine) == (False, False, True)
    unexpected = classify(KeyError("x"), healthy)
    assert not unexpected.expected and not unexpected.counted


def test_an_unexpected_error_counts_and_says_so():
    healthy, _ = engine(True)
    assert classify(ValueError("bad"), healthy) == Failure("ValueError: bad", expected=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_transient_failure_is_retried_until_the_budget_runs_out():
    clock = FakeClock()
    retry = Retry(budget_s=10, clock=clock, jitter=lambda: 1.0)
    calls = []

    def down() -> None:
        calls.append(clock.now)
        raise EndpointConnectionError(endpoint_url="http://aws")

    with pytest.raises(EndpointConnectionError):
        retry("testing", down)

    assert calls[:4] == pytest.approx([0.0, 0.2, 0.6, 1.4])  # doubling delays
    assert calls[-1] <= 10


def test_a_failure_that_is_not_transient_is_raised_at_once():
    retry = Retry(budget_s=10, clock=FakeClock())
    calls = []

    def refused() -> None:
        calls.append(1)
        raise ClientError({"Error": {"Code": "ValidationException"}}, "UpdateItem")

    with pytest.raises(ClientError):
        retry("testing", refused)
    assert calls == [1]


def test_a_call_that_recovers_returns_its_answer():
    answers = iter([ConnectionError("reset"), "done"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert Retry(budget_s=10, clock=FakeClock())("testing", flaky) == "done"
