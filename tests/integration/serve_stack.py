"""``make serve``'s program (``python -m infra.local.serve``) as the tests run it: started, stopped, killed.

Each ``Serve`` keeps its ports, state folder, data folder and server name across
its starts, as an installation does across restarts of its service.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.local.stack import free_port

from .helpers import ROOT, Client, cmdline, descendants, wait_for_text


@dataclass
class Serve:
    base: Path
    server: str = field(default_factory=lambda: f"sv{secrets.token_hex(3)}")
    extra_env: dict[str, str] = field(default_factory=dict)
    state_name: str = "state"  # the state folder, in base
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    starts: int = 0
    ready_s: float | None = None  # what the last start printed ("ready in X s")

    def __post_init__(self) -> None:
        for name in ("API", "UPSTREAM", "AWS", "DYNAMODB", "S3"):
            self.ports.setdefault(name, free_port())

    @property
    def state(self) -> Path:
        return self.base / self.state_name

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def url(self) -> str:
        scheme = "https" if self.extra_env.get("OPENDEVELOP_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.ports['API']}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENDEVELOP_", "AWS_"))}
        env.update({f"OPENDEVELOP_{name}_PORT": str(port) for name, port in self.ports.items()})
        env.update(
            OPENDEVELOP_STATE_DIR=str(self.state),
            OPENDEVELOP_SERVER=self.server,
            OPENDEVELOP_POLL_WAIT="2",  # a warm stop in ~2 s, not a 20 s long poll
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        return env

    def settings(self) -> Any:
        """The settings the stack's processes run with (for in-process admin calls and boto3)."""
        from chalicelib.settings import Settings
        from infra.local.serve import build

        return Settings.from_env(build(self.env()).env())

    def start(self, timeout: float = 90) -> Client:
        self.starts += 1
        out_path = self.base / f"serve-{self.starts}.out"
        self.base.mkdir(parents=True, exist_ok=True)
        with open(out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infra.local.serve"],
                cwd=ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        banner = wait_for_text(out_path, "ready in", timeout, self.proc)
        ready = re.search(r"ready in ([0-9.]+) s", banner)
        demo = re.search(r"Demo app:\s+id (\S+)\s+secret (\S+)", banner)
        assert ready and demo, banner
        self.ready_s = float(ready.group(1))
        self.client = Client(self.url, (demo.group(1), demo.group(2)))
        wait_for_text(self.logs / "dispatcher.log", '"dispatcher.ready"', 60)
        return self.client

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM, as systemd stops the service: a warm stop of the whole stack."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        self.proc = None

    def processes(self) -> dict[int, str]:
        """Every process of the stack: the supervisor, what it started, and the dispatcher's watchdogs."""
        if self.proc is None:
            return {}
        found = {self.proc.pid: cmdline(self.proc.pid), **descendants(self.proc.pid)}
        for lock in (self.state / "spool").glob("*/watchdog.lock"):
            try:
                pid = int(lock.read_text().strip())
            except (OSError, ValueError):
                continue
            line = cmdline(pid)
            if "dispatcher.watchdog" in line:
                found[pid] = line
                found.update(descendants(pid))
        return found

    def kill_all(self) -> list[str]:
        """``kill -9`` of every process of the stack at once (a power cut, short of the engine); their names."""
        killed = self.processes()
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait()
        # Nothing of it may hold a port the next start needs.
        deadline = time.monotonic() + 10
        while any(cmdline(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.proc = None
        return sorted(killed.values())
