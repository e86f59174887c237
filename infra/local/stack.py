"""The local stack as code: moto's server, the tables and queues, ``chalice local`` and dispatchers.

``make dev`` (``infra/local/dev.py``) and the integration tests both build the
stack with these functions, so what the tests exercise is what a newcomer runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BASE_IMAGE = "opendevelop/base:latest"
DOCKER_URL = "unix:///var/run/docker.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers, even if with an error status
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def aws_command(port: int) -> list[str]:
    """moto's server on 127.0.0.1:``port`` (see ``infra/local/moto_local.py``)."""
    return [str(VENV_BIN / "python"), "-m", "infra.local.moto_local", "-H", "127.0.0.1", "-p", str(port)]


def register_catalogue() -> list[str]:
    """``base`` and every catalogue image this engine has built (``infra/images``), described; their names."""
    from infra.images import catalogue

    return catalogue.register_built(DOCKER_URL)


@dataclass
class Stack:
    """One local stack: its ports, its environment and the processes it started."""

    aws_port: int = 5000
    api_port: int = 8000
    table_prefix: str = "opendevelop-local"
    state_dir: Path = ROOT / ".opendevelop"
    log_dir: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENDEVELOP_", "AWS_"))}
        env.update(
            OPENDEVELOP_STAGE="local",
            OPENDEVELOP_TABLE_PREFIX=self.table_prefix,
            OPENDEVELOP_STATE_DIR=str(self.state_dir),
            AWS_ENDPOINT_URL=self.aws_url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            PYTHONUNBUFFERED="1",
            # glibc gives each thread its own malloc arena; with a thread per slot that
            # fragments into 100+ MB of RSS for nothing.  Two arenas are plenty here.
            MALLOC_ARENA_MAX="2",
            PYTHONPATH=str(ROOT),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        env.update(self.extra_env)
        return env

    def settings(self) -> Any:
        from chalicelib.settings import Settings

        return Settings.from_env(self.env())

    # Processes

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        out: IO[bytes] | int | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = self._logs[name] = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start_aws(self) -> None:
        if port_open(self.aws_port):
            raise RuntimeError(
                f"port {self.aws_port} is taken: is another local stack running? (stop it, or set OPENDEVELOP_AWS_PORT)"
            )
        proc = self.spawn("aws", aws_command(self.aws_port))
        wait_http(f"{self.aws_url}/moto-api/", 30, proc)

    def start_api(self) -> None:
        if port_open(self.api_port):
            raise RuntimeError(
                f"port {self.api_port} is taken: is another local stack running? (stop it, or set OPENDEVELOP_API_PORT)"
            )
        proc = self.spawn(
            "api",
            [
                str(VENV_BIN / "python"),
                "-m",
                "infra.local.chalice_local",  # `chalice local`, minus a 40 ms delay per answer
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--stage",
                "local",
                "--no-autoreload",
            ],
        )
        wait_http(f"{self.api_url}/api/images", 60, proc)

    def start_dispatcher(
        self, server: str = "local", name: str | None = None, extra: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self.spawn(
            name or f"dispatcher-{server}", [sys.executable, "-m", "dispatcher", "--server", server, *(extra or [])]
        )

    def start_reconciler(self, name: str = "reconciler") -> subprocess.Popen[bytes]:
        """What the cloud's schedule runs every minute, here every OPENDEVELOP_RECONCILE_INTERVAL (10) s."""
        return self.spawn(name, [sys.executable, "-m", "chalicelib.reconciler", "--loop"])

    def start_webhooks(self, name: str = "webhooks") -> subprocess.Popen[bytes]:
        """What SQS invokes on AWS (``app.deliver_webhook``), run by a local poller of the webhooks queue."""
        return self.spawn(name, [sys.executable, "-m", "infra.local.webhooks"])

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log = self._logs.pop(name, None)
        if log:
            log.close()

    def stop_all(self) -> None:
        # Dispatchers first (they may still write results), the AWS endpoint last.
        order = sorted(self.procs, key=lambda n: (n == "aws", n == "api"))
        for name in order:
            self.stop(name)
        self.stop_watchdogs()

    def stop_watchdogs(self) -> None:
        """The dispatchers' deadline watchdogs outlive them on purpose (``dispatcher.watchdog``); a stopped
        stack ends them too.  Each names itself in its spool's lock file."""
        for lock in (self.state_dir / "spool").glob("*/watchdog.lock"):
            try:
                pid = int(lock.read_text().strip())
                # Only a live watchdog: the pid of one that left by itself may belong to anyone now.
                if pid > 1 and b"dispatcher.watchdog" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGTERM)
            except (ValueError, OSError):
                pass

    # Data

    def bootstrap(
        self, slots: int | None = None, servers: tuple[str, ...] = ("local",), runtime: str = "runc"
    ) -> dict[str, str]:
        """Tables, bucket, the images built here, the servers and a demo app; returns the demo credentials."""
        from chalicelib import admin, models
        from chalicelib.auth import secret_digest
        from chalicelib.models import App, User

        settings = self.settings()
        models.configure(settings)
        admin.init(settings)
        register_catalogue()
        for server in servers:
            admin.server_create(
                settings, server, DOCKER_URL, "", slots or os.cpu_count() or 2, runtime=runtime, replace=True
            )
        demo = self.demo_credentials()
        if not User.count(hash_key="demo"):
            User("demo", email="demo@localhost", password_hash="!", organization=False).save()
        App(
            demo["app_id"],
            name="demo",
            owner="demo",
            secret_hash=secret_digest(settings.hmac_key, demo["secret"]),
            limits={},
            webhook_secret=demo["webhook_secret"],
        ).save()
        return demo

    def demo_credentials(self) -> dict[str, str]:
        """The demo app's id, secret and webhook secret, made once per checkout so the README's curl keeps working."""
        from chalicelib.auth import new_id, new_secret
        from chalicelib.webhook_send import new_secret as new_webhook_secret

        path = self.state_dir / "demo-app.json"
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("webhook_secret"):
                return {"app_id": data["app_id"], "secret": data["secret"], "webhook_secret": data["webhook_secret"]}
            data["webhook_secret"] = new_webhook_secret()  # a file from before webhooks
        else:
            data = {"app_id": new_id(), "secret": new_secret(), "webhook_secret": new_webhook_secret()}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        path.chmod(0o600)
        return data
