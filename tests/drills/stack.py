"""The drills' stack: the local stack of ``infra.local.stack``, with two engines and a fault proxy per process.

* moto on a free port; the test process and the API talk to it directly;
* two Docker servers: ``a`` on the machine's engine, ``b`` on an engine of
  the drills' own (``engines.Engine``), so a second start of a sandbox on the
  other server is seen, never hidden by a name clash;
* each dispatcher and the reconciler reach AWS through their own
  ``aws_proxy`` (``AWS_ENDPOINT_URL``), so a drill cuts one service of one
  process;
* ``docker events`` of both engines followed from the start (``events``).

Timings are scaled down as in ``tests/integration/test_faults.py``: heartbeat
every 1 s, TTL 6 s (so a dispatcher's lease is 4 s), a reconciler pass every
1 s.  ``restore()`` brings everything back to that baseline between drills.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import requests
from pynamodb.exceptions import DoesNotExist

from infra.local.stack import DOCKER_URL, ROOT, Stack, aws_command, free_port, wait_http

from . import faketime
from .engines import Engine
from .events import EventWatcher

TTL_S = 6
SLOTS = 3
ENV = {
    "OPENDEVELOP_POLL_WAIT": "1",
    "OPENDEVELOP_HEARTBEAT_TTL": str(TTL_S),
    "OPENDEVELOP_HEARTBEAT_INTERVAL": "1",
    "OPENDEVELOP_RECONCILE_INTERVAL": "1",
    "OPENDEVELOP_RESEND_AFTER": "30",
    "OPENDEVELOP_RETRY_BACKOFF": "0.25",
    "OPENDEVELOP_RETRY_BUDGET": "30",  # 120 s against a 30 s TTL by default: scaled with the TTL
    "OPENDEVELOP_VISIBILITY": "10",
    "OPENDEVELOP_POOL": "2",
}
FINAL = ("terminated", "error", "cancelled")


class AwsProxy:
    """Controls one ``aws_proxy.py`` process (see its docstring for the modes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def fault(self, service: str, mode: str, action: str = "", contains: str = "") -> None:
        params = {"service": service, "mode": mode, "action": action, "contains": contains}
        response = requests.post(f"{self.url}/__drill__/fault", params=params, timeout=5)
        response.raise_for_status()

    def clear(self) -> None:
        requests.post(f"{self.url}/__drill__/clear", timeout=5).raise_for_status()

    def timeline(self, since: float) -> list[tuple[float, str]]:
        """(epoch time, "service:action") of every request since ``since``."""
        data = requests.get(f"{self.url}/__drill__/timeline", params={"since": since}, timeout=10).json()
        return [(float(t), str(k)) for t, k in data["timeline"]]

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = requests.get(f"{self.url}/__drill__/stats", timeout=5).json()
        return data


@dataclass
class DrillStack(Stack):
    servers: dict[str, str] = field(default_factory=dict)  # "a" / "b" -> the server's name
    engines: dict[str, str] = field(default_factory=dict)  # engine name -> its URL
    proxies: dict[str, AwsProxy] = field(default_factory=dict)  # process role -> its proxy
    events: EventWatcher = field(default_factory=EventWatcher)
    demo: dict[str, str] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)  # process name -> how it differs from the baseline
    own_engine: Engine | None = None
    moto_port: int = 0

    # Processes

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """As ``Stack.spawn``, with extra environment for this process only; its log is appended to."""
        assert self.log_dir is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = self._logs[name] = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> Path:
        assert self.log_dir is not None
        return self.log_dir / f"{name}.log"

    def start_proxy(self, role: str) -> AwsProxy:
        port = free_port()
        proc = self.spawn(
            f"aws-proxy-{role}",
            [sys.executable, str(Path(__file__).with_name("aws_proxy.py")), str(port), str(self.moto_port)],
        )
        deadline = time.monotonic() + 10
        while "up" not in self.log(f"aws-proxy-{role}").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, f"the aws proxy of {role} did not start"
            time.sleep(0.05)
        self.proxies[role] = AwsProxy(port)
        return self.proxies[role]

    def start_dispatcher_of(
        self, key: str, env: dict[str, str] | None = None, skew_s: int = 0, wait: bool = True, name: str | None = None
    ) -> subprocess.Popen[bytes]:
        """The dispatcher of server ``key`` ("a", "b", ...), through its proxy; ``skew_s``: its clock that far off."""
        server = self.servers[key]
        name = name or f"dispatcher-{server}"
        proc_env = {"AWS_ENDPOINT_URL": self.proxies[key].url, **(env or {})}
        args = ["dispatcher", "--server", server]
        if skew_s:
            proc_env.update(faketime.ENV)
            argv = faketime.skewed(args, skew_s)
        else:
            argv = [sys.executable, "-m", *args]
        if env or skew_s:
            self.variants[name] = f"env={env} skew={skew_s}"
        else:
            self.variants.pop(name, None)
        log = self.log(name)
        ready_before = log.read_text().count('"dispatcher.ready"') if log.exists() else 0
        proc = self.spawn(name, argv, proc_env)
        if wait:
            deadline = time.monotonic() + 40
            while log.read_text().count('"dispatcher.ready"') <= ready_before:
                tail = log.read_text()[-1500:]
                assert proc.poll() is None, f"dispatcher {server} exited with {proc.returncode}: {tail}"
                assert time.monotonic() < deadline, f"dispatcher {server} not ready after 40 s"
                time.sleep(0.1)
        return proc

    def start_reconciler_with(self, env: dict[str, str] | None = None, skew_s: int = 0) -> subprocess.Popen[bytes]:
        proc_env = {"AWS_ENDPOINT_URL": self.proxies["reconciler"].url, **(env or {})}
        args = ["chalicelib.reconciler", "--loop"]
        if skew_s:
            proc_env.update(faketime.ENV)
            argv = faketime.skewed(args, skew_s)
        else:
            argv = [sys.executable, "-m", *args]
        if env or skew_s:
            self.variants["reconciler"] = f"env={env} skew={skew_s}"
        else:
            self.variants.pop("reconciler", None)
        return self.spawn("reconciler", argv, proc_env)

    def dispatcher_proc(self, key: str) -> subprocess.Popen[bytes] | None:
        return self.procs.get(f"dispatcher-{self.servers[key]}")

    def kill_9(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log = self._logs.pop(name, None)
        if log:
            log.close()

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, sig)

    # Baseline

    def restore(self) -> None:
        """Back to the baseline: proxies clear, engines going, both servers active with their usual dispatchers."""
        from chalicelib import admin
        from chalicelib.models import DockerServer

        for proxy in self.proxies.values():
            proxy.clear()
        if self.own_engine is not None:
            self.own_engine.resume()
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # whatever a drill stopped
        settings = self.settings()
        for key, server in self.servers.items():
            if key not in ("a", "b"):
                continue
            url = DOCKER_URL if key == "a" else self.engines["b"]
            try:
                if DockerServer.get(server).state != "active":
                    admin.server_set_state(server, "active")
            except DoesNotExist:  # a drill deleted it
                admin.server_create(settings, server, url, "", SLOTS, replace=True)
            name = f"dispatcher-{server}"
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None or name in self.variants:
                if proc is not None:
                    self.stop(name)
                self._end_strays(server)
                self._start_again(key)
        proc = self.procs.get("reconciler")
        if proc is None or proc.poll() is not None or "reconciler" in self.variants:
            self.stop("reconciler")
            self.start_reconciler_with()
        self.wait_alive(("a", "b"), 30)

    def _end_strays(self, server: str) -> None:
        """Every other process still serving ``server`` is killed before its usual dispatcher starts again: one
        a drill started under another name, or one left behind when a name was reused.  A killed one's beat
        stops moving, so the new one takes the server after its watch (``worker.take_server``)."""
        for name, proc in list(self.procs.items()):
            if name.startswith("dispatcher") and server in proc.args and proc.poll() is None:
                self.kill_9(name)
        wanted = f"\0--server\0{server}\0".encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes() + b"\0"
                if wanted in args and b"dispatcher" in args:
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass  # gone meanwhile

    def _start_again(self, key: str) -> None:
        """``start_dispatcher_of``, tried again while the server is still held by a dispatcher that is ending
        (its beat moved during the new one's watch; it exits 3 and says so): at most twice the TTL."""
        deadline = time.monotonic() + 2 * TTL_S
        while True:
            try:
                self.start_dispatcher_of(key)
                return
            except AssertionError as e:
                if "exited with 3" not in str(e) or time.monotonic() > deadline:
                    raise
                self._end_strays(self.servers[key])
                time.sleep(1)

    def wait_alive(self, keys: tuple[str, ...], timeout_s: float) -> None:
        from chalicelib.models import DockerServer, utcnow

        deadline = time.monotonic() + timeout_s
        while True:
            fresh = []
            for key in keys:
                row = DockerServer.get(self.servers[key])
                if row.last_heartbeat is not None and (utcnow() - row.last_heartbeat).total_seconds() < 2.5:
                    fresh.append(key)
            if len(fresh) == len(keys):
                return
            assert time.monotonic() < deadline, f"servers {set(keys) - set(fresh)} not heartbeating after {timeout_s} s"
            time.sleep(0.2)

    # Work

    def create(self, cmd: list[str], timeout_s: float, on: str | None = None, **fields: Any) -> str:
        """A sandbox made by the API's own code (``chalicelib.sandboxes.create``), on server ``on`` when given."""
        from chalicelib import context, sandboxes, scheduling
        from chalicelib.models import App, DockerServer
        from chalicelib.validation import parse_request

        settings = self.settings()
        body = json.dumps({"image": "base", "cmd": cmd, "timeout": timeout_s, **fields}).encode()
        req = parse_request("application/json", body, settings)
        app = App.get(self.demo["app_id"])
        if on is None:
            return str(sandboxes.create(context.for_settings(settings), app, req).sandbox_id)
        server = DockerServer.get(self.servers[on])
        with _create_lock, mock.patch.object(scheduling, "choose_server", lambda *a, **k: server):
            return str(sandboxes.create(context.for_settings(settings), app, req).sandbox_id)

    def create_many(
        self, count: int, cmd: list[str], timeout_s: float, on: tuple[str, ...] = (), wake: bool = True
    ) -> list[str]:
        """``count`` sandboxes made by the API's own code, stored and woken in batches (25 rows, 10 messages
        a request) instead of one request each: the API's rows and wake-ups, at a backlog's pace.

        ``on``: the servers (keys) to place them on, in turn; ``wake`` False: no wake-up is sent.
        """
        from chalicelib import aws, context, sandboxes, scheduling
        from chalicelib.models import App, DockerServer, Sandbox
        from chalicelib.validation import parse_request

        settings = self.settings()
        body = json.dumps({"image": "base", "cmd": cmd, "timeout": timeout_s}).encode()
        req = parse_request("application/json", body, settings)
        app = App.get(self.demo["app_id"])
        rows: list[Any] = []
        wakeups: dict[str, list[str]] = {}
        with (
            _create_lock,
            mock.patch.object(Sandbox, "save", lambda row, *a, **k: rows.append(row)),
            mock.patch.object(aws, "send_wakeup", lambda s, url, sid, **k: wakeups.setdefault(url, []).append(sid)),
        ):
            if on:
                servers = [DockerServer.get(self.servers[key]) for key in on]
                for i in range(count if wake else min(count, 1)):
                    server = servers[i % len(servers)]
                    with mock.patch.object(scheduling, "choose_server", lambda *a, server=server, **k: server):
                        sandboxes.create(context.for_settings(settings), app, req)
            else:
                for _ in range(count if wake else min(count, 1)):
                    sandboxes.create(context.for_settings(settings), app, req)
        if not wake and rows:  # rows nobody runs: one made by the API's code, the rest its copies
            from chalicelib.auth import new_id

            values = {k: getattr(rows[0], k) for k in Sandbox.get_attributes() if k != "sandbox_id"}
            rows = [rows[0], *(Sandbox(new_id(), **values) for _ in range(count - 1))]
        with Sandbox.batch_write() as batch:
            for row in rows:
                batch.save(row)
        sqs = aws.sqs(settings)
        for url, ids in wakeups.items() if wake else ():
            for i in range(0, len(ids), 10):
                batch_ids = ids[i : i + 10]
                entries = [
                    {"Id": str(n), "MessageBody": json.dumps({"sandbox_id": sid})} for n, sid in enumerate(batch_ids)
                ]
                failed = sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
                assert not failed, failed
        return [str(row.sandbox_id) for row in rows]


_create_lock = threading.Lock()


@contextmanager
def drill_stack(base: Path, name: str) -> Iterator[DrillStack]:
    """Everything started; everything stopped and removed on exit, whatever happened."""
    from tests.integration.helpers import models_bound_to, remove_containers

    from .engines import saved_base_image

    moto_port = free_port()
    stack = DrillStack(
        aws_port=moto_port,
        api_port=free_port(),
        table_prefix=name,
        state_dir=base / "state",
        log_dir=base / "logs",
        extra_env=ENV,
        moto_port=moto_port,
    )
    engine = Engine(f"{name}b")
    stack.own_engine = engine
    stack.servers = {"a": f"{name}a", "b": f"{name}b"}
    try:
        moto = stack.spawn("aws", aws_command(moto_port))
        engine.start(saved_base_image(base))
        stack.engines = {"a": DOCKER_URL, "b": engine.url}
        for key, url in stack.engines.items():
            stack.events.watch(key, url)
        wait_http(f"http://127.0.0.1:{moto_port}/moto-api/", 30, moto)
        for role in ("a", "b", "reconciler"):
            stack.start_proxy(role)
        with models_bound_to(stack.settings()):
            from chalicelib import admin

            stack.demo = stack.bootstrap(slots=SLOTS, servers=(stack.servers["a"],))
            admin.server_create(stack.settings(), stack.servers["b"], engine.url, "", SLOTS, replace=True)
            stack.start_api()
            for key in ("a", "b"):
                stack.start_dispatcher_of(key)
            stack.start_reconciler_with()
            stack.wait_alive(("a", "b"), 30)
            yield stack
    finally:
        engine.resume()
        for proc_name in list(stack.procs):  # whatever a drill stopped must be able to stop
            proc = stack.procs[proc_name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        # Dispatchers first (they may still write results), the AWS endpoint and its proxies last.
        for proc_name in sorted(stack.procs, key=lambda n: (n == "aws", n.startswith("aws-proxy"), n == "api")):
            stack.stop(proc_name, timeout_s=10)
        stack.events.close()
        import docker

        remove_containers(docker.DockerClient(base_url=DOCKER_URL, timeout=30), stack.servers["a"])
        engine.stop(keep_log=stack.log_dir / f"dockerd-{engine.name}.log" if stack.log_dir else None)
        (base / "base-image.tar").unlink(missing_ok=True)
