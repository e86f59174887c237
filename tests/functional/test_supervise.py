"""infra/host/supervise.sh, the supervisor for hosts without systemd: it restarts a dispatcher
that exits, except one whose server was retired (exit 4, as the unit's RestartPreventExitStatus)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = ROOT / "infra" / "host" / "supervise.sh"


def fake_host(tmp_path: Path, exit_code: int) -> Path:
    """A host prefix whose 'dispatcher' counts its starts and exits with ``exit_code``."""
    prefix = tmp_path / "host"
    (prefix / "app").mkdir(parents=True)
    (prefix / "etc").mkdir()
    (prefix / "etc" / "dispatcher.env").write_text("")
    python = prefix / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho start >> "{prefix}/starts"\nexit {exit_code}\n')
    python.chmod(0o755)
    return prefix


def starts(prefix: Path) -> int:
    path = prefix / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_retired_dispatcher_exit_4_is_not_started_again(tmp_path: Path) -> None:
    prefix = fake_host(tmp_path, 4)
    done = subprocess.run(["sh", str(SUPERVISE), str(prefix), "run"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0
    assert "retired" in done.stderr
    assert starts(prefix) == 1


def supervising(prefix: Path, log: Path, until: Callable[[], bool], **env: str) -> bool:
    """Run the supervisor until ``until()`` holds (or 30 s pass: a loaded machine is slow), then stop it;
    whether it was still supervising then."""
    with open(log, "wb") as err:
        run = subprocess.Popen(
            ["sh", str(SUPERVISE), str(prefix), "run"],
            stderr=err,
            env={**os.environ, **env},
            start_new_session=True,  # its sleep is stopped with it
        )
    try:
        deadline = time.monotonic() + 30
        while not until() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.02)
        return run.poll() is None
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
        run.wait(10)


def test_a_dispatcher_that_exits_otherwise_is_started_again(tmp_path: Path) -> None:
    prefix, log = fake_host(tmp_path, 1), tmp_path / "supervise.log"

    alive = supervising(prefix, log, lambda: starts(prefix) >= 3, OPENDEVELOP_SUPERVISE_RESTART_S="0.1")

    assert alive, log.read_text()  # still supervising, as it should
    assert starts(prefix) >= 3
    assert "the dispatcher exited; starting it again in 0.1 s" in log.read_text()


def test_the_restart_delay_is_two_seconds_unless_set(tmp_path: Path) -> None:
    prefix, log = fake_host(tmp_path, 1), tmp_path / "supervise.log"

    alive = supervising(prefix, log, lambda: "starting it again" in log.read_text())

    assert alive
    assert "the dispatcher exited; starting it again in 2 s" in log.read_text()
    assert starts(prefix) == 1  # not yet: it waits the 2 s (as the unit's RestartSec=2)


@pytest.mark.parametrize("value", ["soon", "1.2.3", "-1", "."])
def test_a_restart_delay_that_is_not_seconds_is_refused(tmp_path: Path, value: str) -> None:
    prefix = fake_host(tmp_path, 1)
    env = {**os.environ, "OPENDEVELOP_SUPERVISE_RESTART_S": value}

    done = subprocess.run(
        ["sh", str(SUPERVISE), str(prefix), "run"], capture_output=True, text=True, env=env, timeout=20
    )

    assert done.returncode == 2
    assert "OPENDEVELOP_SUPERVISE_RESTART_S" in done.stderr
    assert starts(prefix) == 0
