"""The deadline watchdog: a container past its deadline is killed by the host's clock, never a live pid's namesake."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from dispatcher import watchdog


def test_a_deadline_is_the_files_kernel_time_plus_its_seconds_and_kills_only_once_passed(tmp_path: Path) -> None:
    killed: list[str] = []
    watchdog.write(tmp_path, "c1", "sandbox1", seconds=5)
    now = [time.time()]
    dog = watchdog.Watchdog(tmp_path, lambda cid: killed.append(cid) or True, now=lambda: now[0])

    assert dog.tick() == [] and killed == []  # not yet
    now[0] += 5 + watchdog.GRACE_S + 0.1

    assert dog.tick() == ["sandbox1"]
    assert killed == ["c1"]
    assert list(watchdog.pending(tmp_path)) == []  # done with


def test_a_local_container_is_killed_through_its_host_pid_when_the_engine_cannot(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        watchdog.write(tmp_path, "c2", "sandbox2", seconds=0, pid=victim.pid)
        now = [time.time() + watchdog.GRACE_S + 1]

        def engine_stalled(cid: str) -> bool:
            raise TimeoutError("the engine does not answer")

        assert watchdog.Watchdog(tmp_path, engine_stalled, now=lambda: now[0]).tick() == ["sandbox2"]
        assert victim.wait(5) == -9
    finally:
        victim.kill()


def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    watchdog.write(tmp_path, "c3", "sandbox3", seconds=0, pid=os.getpid())
    body = (tmp_path / "deadlines" / "c3").read_text().replace(watchdog._start_of(os.getpid()), "1")
    (tmp_path / "deadlines" / "c3").write_text(body)  # as if this pid had belonged to another process
    killed: list[str] = []
    now = time.time() + watchdog.GRACE_S + 1

    watchdog.Watchdog(tmp_path, lambda cid: killed.append(cid) or True, now=lambda: now).tick()

    assert killed == ["c3"]  # through the engine, not the pid: this test is still alive to say so


def test_it_leaves_when_nothing_is_pending_and_no_dispatcher_lives(tmp_path: Path) -> None:
    now = [time.time()]
    dog = watchdog.Watchdog(tmp_path, lambda cid: True, now=lambda: now[0])
    watchdog.touch_alive(tmp_path)
    assert not dog.idle()
    watchdog.write(tmp_path, "c4", "sandbox4", seconds=600)
    now[0] += watchdog.IDLE_EXIT_S + 1
    assert not dog.idle()  # a deadline is pending
    watchdog.clear(tmp_path, "c4")
    assert dog.idle()


def test_a_deadline_kill_is_recorded_with_the_runs_token_and_retried_while_aws_does_not_answer(tmp_path: Path) -> None:
    watchdog.write(tmp_path, "c5", "sandbox5", seconds=0, token="tok5")
    attempts: list[tuple[str, str]] = []

    def record(deadline: watchdog.Deadline) -> None:
        attempts.append((deadline.sandbox_id, deadline.token))
        if len(attempts) == 1:
            raise ConnectionError("the AWS endpoint does not answer")

    now = time.time() + watchdog.GRACE_S + 1
    dog = watchdog.Watchdog(tmp_path, lambda cid: True, now=lambda: now, record=record)

    assert dog.tick() == ["sandbox5"]
    assert dog.unrecorded and not dog.idle()  # killed, its result still to write
    dog.tick()  # first try failed: tried again
    dog.tick()
    assert attempts == [("sandbox5", "tok5")] * 2
    assert dog.unrecorded == []
