"""infra/host/supervise.sh, the supervisor for hosts without systemd: it restarts a dispatcher
that exits, except one whose server was retired (exit 4, as the unit's RestartPreventExitStatus)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


def test_a_dispatcher_that_exits_otherwise_is_started_again(tmp_path: Path) -> None:
    prefix = fake_host(tmp_path, 1)
    try:
        subprocess.run(["sh", str(SUPERVISE), str(prefix), "run"], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        pass  # still supervising, as it should
    assert starts(prefix) >= 2
