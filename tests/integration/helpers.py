"""Speaking to the integration stack like a user, and small waits that poll instead of sleeping."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import requests

from dispatcher.runner import LABEL_SERVER
from infra.local.stack import ROOT, Stack, free_port

__all__ = [
    "ROOT",
    "Client",
    "MakeDev",
    "RunningStack",
    "children",
    "cmdline",
    "descendants",
    "dockerd_pid",
    "multipart",
    "remove_containers",
    "run_containers",
    "start_make_dev",
    "wait_for_text",
]

UNFINISHED = ("queued", "running")
SLOTS = 2  # the test server's slots


@dataclass
class Client:
    """The API as a user sees it: HTTP Basic with an app's id and secret."""

    url: str
    auth: tuple[str, str] | None

    def post(self, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("auth", self.auth)
        timeout = kwargs.pop("timeout", 30)
        return requests.post(f"{self.url}/api/sandboxes", timeout=timeout, **kwargs)

    def submit(
        self,
        cmd: list[str] | str,
        files: dict[str, str | bytes] | None = None,
        image: str = "base",
        timeout: str | None = "10",
        **fields: str,
    ) -> str:
        """POST a sandbox as multipart/form-data, as the original documentation does; return its id."""
        response = self.post(files=multipart(cmd, files, image=image, timeout=timeout, **fields))
        assert response.status_code == 201, f"{response.status_code}: {response.text}"
        return str(response.json()["id"])

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("auth", self.auth)
        return requests.get(f"{self.url}{path}", timeout=30, **kwargs)

    def sandbox(self, sandbox_id: str) -> dict[str, Any]:
        response = self.get(f"/api/sandboxes/{sandbox_id}")
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        data: dict[str, Any] = response.json()
        return data

    def wait_done(self, sandbox_id: str, timeout: float = 30) -> dict[str, Any]:
        """Poll GET /api/sandboxes/{id} until its status leaves queued/running; return the sandbox."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.sandbox(sandbox_id)
            if data["status"] not in UNFINISHED:
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"sandbox {sandbox_id} still {data['status']} after {timeout:g} s: {data}")
            time.sleep(0.1)

    def listed_ids(self) -> list[str]:
        response = self.get("/api/sandboxes", params={"limit": "100"})
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        return [s["id"] for s in response.json()["sandboxes"]]


def multipart(
    cmd: list[str] | str | None, files: dict[str, str | bytes] | None = None, **fields: str | None
) -> list[tuple[str, tuple[str | None, str | bytes]]]:
    """``requests``' ``files=`` for a form: fields are parts without a filename, files parts with one."""
    parts: list[tuple[str, tuple[str | None, str | bytes]]] = []
    if cmd is not None:
        parts.append(("cmd", (None, cmd if isinstance(cmd, str) else json.dumps(cmd))))
    parts += [(name, (None, value)) for name, value in fields.items() if value is not None]
    parts += [("file", (name, content)) for name, content in (files or {}).items()]
    return parts


@dataclass
class RunningStack:
    stack: Stack
    server: str  # the Docker server's name, which labels its containers
    demo: dict[str, str]

    @property
    def client(self) -> Client:
        return Client(self.stack.api_url, (self.demo["app_id"], self.demo["secret"]))

    def boto(self, service: str) -> Any:
        import boto3

        return boto3.client(service, **self.stack.settings().boto_kwargs())

    def queue_depth(self) -> int:
        """Messages on the server's queue, visible or in flight."""
        from chalicelib.aws import queue_name

        sqs = self.boto("sqs")
        url = sqs.get_queue_url(QueueName=queue_name(self.stack.settings(), self.server))["QueueUrl"]
        attrs = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def run_containers(docker_client: Any, server: str) -> list[Any]:
    """The containers of ``server`` other than the pool's idle spares (see ``dispatcher.pool``)."""
    listed = docker_client.containers.list(all=True, filters={"label": f"{LABEL_SERVER}={server}"}, ignore_removed=True)
    return [c for c in listed if not c.name.startswith("od-spare-")]


def remove_containers(docker_client: Any, server: str) -> list[str]:
    """Remove what a dispatcher of ``server`` may have left (spares included); return their names."""
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_SERVER}={server}"}, ignore_removed=True
    )
    for container in leftovers:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass  # the dispatcher removed it between the listing and now
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: the dispatcher (or its recovery) is removing it right now
                raise
    return [c.name for c in leftovers]


def wait_for_text(path: Path, text: str, timeout: float, proc: Any = None) -> str:
    """Poll a log file until it contains ``text``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before writing {text!r} to {path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} did not appear in {path} within {timeout:g} s")
        time.sleep(0.1)


@contextmanager
def models_bound_to(settings: Any) -> Iterator[None]:
    """Bind the in-process models to this module's tables, and back to what they were after."""
    keys = ("table_name", "region", "host", "aws_access_key_id", "aws_secret_access_key")
    from chalicelib import models

    saved = [(m, {k: getattr(m.Meta, k, None) for k in keys}) for m in models.MODELS]
    models.configure(settings)
    try:
        yield
    finally:
        for model, values in saved:
            for key, value in values.items():
                setattr(model.Meta, key, value)
            model._connection = None


# Processes


def children(parent: int) -> list[int]:
    """The living direct children of ``parent``."""
    return _process_tree().get(parent, [])


def descendants(parent: int) -> dict[int, str]:
    """Every living process below ``parent``, with its command line."""
    tree = _process_tree()
    found: dict[int, str] = {}
    todo = list(tree.get(parent, []))
    while todo:
        pid = todo.pop()
        line = cmdline(pid)
        if line:
            found[pid] = line
        todo += tree.get(pid, [])
    return found


def cmdline(pid: int) -> str:
    """A process's command line; empty once it is gone (or a zombie)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def dockerd_pid() -> int | None:
    """The Docker engine's process on this machine, if one runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "dockerd":
                    return int(entry.name)
            except OSError:
                continue
    return None


def _process_tree() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


# `make dev`, as a newcomer runs it


@dataclass
class MakeDev:
    proc: subprocess.Popen[bytes]
    server: str
    api_port: int
    state: Path  # its state folder; logs in state / "logs"
    out_path: Path  # what it printed
    banner: str
    client: Client  # the demo app's, as the banner shows it


def start_make_dev(tmp_path: Path, show_logs_on_failure: list[Path]) -> MakeDev:
    """``make dev``'s program on free ports, its own state folder and server, until its banner."""
    server = f"dev{secrets.token_hex(3)}"
    state = tmp_path / "state"
    out_path = tmp_path / "make-dev.out"
    show_logs_on_failure += [out_path, state / "logs"]
    api_port = free_port()
    env = {
        **os.environ,
        "OPENDEVELOP_AWS_PORT": str(free_port()),
        "OPENDEVELOP_API_PORT": str(api_port),
        "OPENDEVELOP_STATE_DIR": str(state),
        "OPENDEVELOP_SERVER": server,
        "PYTHONUNBUFFERED": "1",
    }
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.local.dev"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        banner = wait_for_text(out_path, "ready in", 60, proc)
        api = re.search(r"API\s+(http://\S+)", banner)
        demo = re.search(r"Demo app:\s+id (\S+)\s+secret (\S+)", banner)
        assert api and demo, banner
    except BaseException:
        for pid in descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        raise
    client = Client(api.group(1), (demo.group(1), demo.group(2)))
    return MakeDev(proc, server, api_port, state, out_path, banner, client)
