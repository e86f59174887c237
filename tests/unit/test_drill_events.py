"""What the drills' event watcher counts as a completed run (one run, one result)."""

from __future__ import annotations

from tests.drills.events import EventWatcher, Run


def run(started: float, ended: float, exit_code: int) -> Run:
    return Run("s1", "local", f"c{started}", started, ended, exit_code)


def watcher(*runs: Run) -> EventWatcher:
    w = EventWatcher()
    w._runs["s1"] = list(runs)
    return w


def test_a_start_after_a_run_that_ended_by_itself_is_a_violation() -> None:
    found = watcher(run(0, 1, 0), run(5, 6, 0)).violations({"s1": 10}, now=7)
    assert found == ["s1: started again on local 4.0 s after a run on local had completed (exit 0)"]


def test_a_start_after_a_kill_before_the_deadline_is_not() -> None:
    assert watcher(run(0, 1, 137), run(5, 6, 0)).violations({"s1": 10}, now=7) == []


def test_a_start_after_the_prologue_never_got_its_input_is_not() -> None:
    """Exit 125: the dispatcher died while writing the run's input; the program never ran."""
    assert watcher(run(0, 1, 125), run(5, 6, 0)).violations({"s1": 10}, now=7) == []
