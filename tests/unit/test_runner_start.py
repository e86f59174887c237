"""The last step before a program starts: its gate, and a kill that came first (issue #13, cancel always wins)."""

from __future__ import annotations

import threading
from unittest import mock

import pytest

from dispatcher.engine import NotStarted, RunSpec
from dispatcher.runner import Runner, run_name


def spec(gate=None) -> RunSpec:
    return RunSpec("abc123", "opendevelop/base", ["true"], 5, 256, 1, 64, 64, 65536, gate=gate)


@pytest.fixture
def runner() -> Runner:
    return Runner(mock.MagicMock(), "local")


def test_a_run_starts_when_its_gate_says_so_and_nothing_killed_it(runner):
    runner._start("cid", spec(gate=lambda: ""), running=False)

    runner.api.start.assert_called_once_with("cid")


def test_a_gate_that_says_no_means_the_container_is_never_started(runner):
    with pytest.raises(NotStarted, match="cancelled"):
        runner._start("cid", spec(gate=lambda: "cancelled before its program started"), running=False)

    runner.api.start.assert_not_called()


def test_a_kill_before_the_container_existed_still_stops_its_start(runner):
    runner.kill("abc123")  # the watch loop saw the cancel while the container was being made

    with pytest.raises(NotStarted, match="killed"):
        runner._start("cid", spec(), running=False)
    runner.api.start.assert_not_called()
    runner.api.kill.assert_called_once_with(run_name("abc123"))


def test_a_kill_racing_the_start_either_stops_it_or_kills_the_started_container(runner):
    """The kill and the start take one lock: the kill is never lost between the check and the start."""
    started = threading.Event()
    release = threading.Event()

    def slow_start(cid):
        started.set()
        assert release.wait(5)

    runner.api.start.side_effect = slow_start
    starter = threading.Thread(target=runner._start, args=("cid", spec(), False))
    starter.start()
    assert started.wait(5)
    killer = threading.Thread(target=runner.kill, args=("abc123",))
    killer.start()
    killer.join(0.2)
    assert killer.is_alive()  # it waits for the start to finish...
    release.set()
    starter.join(5)
    killer.join(5)
    runner.api.kill.assert_called_once_with(run_name("abc123"))  # ...and then kills the started container
