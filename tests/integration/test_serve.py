"""``make serve``: its data survives a stop and a ``kill -9`` of everything, and its queued work runs after.

Each test runs ``python -m infra.local.serve`` (what ``make serve`` and the
systemd unit run) on free ports with its own state folder and Docker server,
and speaks HTTP to its front (nginx) like a user.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.local.stack import DOCKER_URL
from tests.drills.events import EventWatcher

from .helpers import ROOT, Client, models_bound_to, remove_containers, wait_for_text
from .serve_stack import Serve

BINARY = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 200)"  # 50 KiB, not UTF-8: an S3 object


@pytest.fixture
def serve(tmp_path: Path, docker_client: Any, show_logs_on_failure: list[Path]) -> Any:
    running = Serve(tmp_path)
    show_logs_on_failure += [running.logs, *[tmp_path / f"serve-{n}.out" for n in range(1, 4)]]
    yield running
    running.stop()
    remove_containers(docker_client, running.server)


def _download(client: Client, sandbox_id: str, stream: str) -> bytes:
    response = client.get(f"/api/sandboxes/{sandbox_id}/{stream}")  # follows the 307 to s3rver
    assert response.status_code == 200, f"{response.status_code}: {response.text[:300]}"
    return response.content


def test_a_stop_and_a_start_keep_every_user_app_image_server_sandbox_and_output(serve: Serve) -> None:
    from chalicelib import admin
    from chalicelib.models import App, DockerServer, User

    client = serve.start()
    settings = serve.settings()
    with models_bound_to(settings):
        admin.user_create("alice", "alice@example.com", "s3cret!", organization=True)
        app, secret = admin.app_create("alices-app", "alice", settings=settings)
        demo_app = App.get(client.auth[0])  # type: ignore[index]
        server_row = DockerServer.get(serve.server)
    alice = Client(serve.url, (app.app_id, secret))
    images = client.get("/api/images").json()
    binary = client.submit(["python -c " + repr(BINARY).replace("'", '"')])
    hers = alice.submit(["echo hers"])
    assert alice.wait_done(hers, 60)["status"] == "terminated"
    assert client.wait_done(binary, 60)["status"] == "terminated"
    expected = bytes(range(256)) * 200
    assert _download(client, binary, "stdout") == expected
    # Work still queued when the service stops: 2 slots, 6 sandboxes of 2 s, stopped at once.
    queued = [client.submit(["sleep 2", f"echo queued {n}"]) for n in range(6)]
    serve.stop()

    client = serve.start()
    assert client.auth == (demo_app.app_id, client.auth[1]), "the demo app is the same one"  # type: ignore[index]
    with models_bound_to(serve.settings()):
        assert User.get("alice").email == "alice@example.com"
        assert App.get(demo_app.app_id).created_at == demo_app.created_at, "the demo app was not made again"
        kept = DockerServer.get(serve.server)
        assert (kept.created_at, kept.slots) == (server_row.created_at, server_row.slots)
    assert client.get("/api/images").json() == images
    assert client.sandbox(binary)["stdout_bytes"] == len(expected)
    assert _download(client, binary, "stdout") == expected
    assert alice.sandbox(hers)["stdout"] == "hers\n"  # her secret still checks: the HMAC key is kept
    assert client.get(f"/api/sandboxes/{hers}").status_code == 404  # and still only she sees it
    listed = client.listed_ids()
    assert binary in listed and set(queued) <= set(listed)
    for n, sandbox_id in enumerate(queued):
        result = client.wait_done(sandbox_id, 90)
        assert (result["status"], result["stdout"]) == ("terminated", f"queued {n}\n"), result


def test_kill_9_of_every_process_mid_flood_loses_nothing_accepted_and_runs_nothing_twice(serve: Serve) -> None:
    client = serve.start()
    events = EventWatcher()
    events.watch("local", DOCKER_URL)
    accepted: dict[str, int] = {}
    lock = threading.Lock()
    stop_flood = threading.Event()

    def flood(worker: int) -> None:
        for n in range(worker, 60, 4):
            if stop_flood.is_set():
                return
            try:
                sandbox_id = client.submit(["sleep 0.3", f"echo run {n}"], timeout="10")
            except (requests.RequestException, AssertionError):
                return  # the stack is gone: a request cut off was never accepted
            with lock:
                accepted[sandbox_id] = n

    threads = [threading.Thread(target=flood, args=(w,)) for w in range(4)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(accepted) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = serve.kill_all()
        stop_flood.set()
        for thread in threads:
            thread.join(60)
        names = " ".join(killed)
        stack_parts = (
            "infra.local.serve",
            "dynalite",
            "s3_server.js",
            "moto_local",
            "nginx",
            "dispatcher",
            "reconciler",
        )
        for part in stack_parts:
            assert part in names, f"{part} was not among the killed: {killed}"
        assert len(accepted) >= 20, f"only {len(accepted)} accepted before the kill"

        client = serve.start()
        # Lost is stuck or gone.  A run whose program finished while everything was being killed, before
        # its result was kept, ends error saying so: it is never run again (one run, one result).
        for sandbox_id, n in accepted.items():
            result = client.wait_done(sandbox_id, 180)
            if result["status"] == "error":
                assert "not run again" in (result["error"] or ""), result
            else:
                assert (result["status"], result["return_code"], result["stdout"]) == ("terminated", 0, f"run {n}\n")
        assert events.violations({sandbox_id: 10.0 for sandbox_id in accepted}) == []
        # Their wake-ups died with moto's queues; they were sent again from the rows: by the reconciler
        # for those woken before the kill, by fair share's unpark for those parked (when the app had
        # its share running at the kill, only the second happens).
        logs = "".join(path.read_text() for path in serve.logs.glob("*.log"))
        assert '"sandbox.rewoken"' in logs or '"sandbox.unparked"' in logs
    finally:
        stop_flood.set()
        events.close()


def _documented_serve_blocks() -> list[list[str]]:
    """docs/operating.md's ``sh`` blocks that drive ``serve-supervise.sh``, in order, as written."""
    text = (ROOT / "docs" / "operating.md").read_text()
    found = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [[line for line in b.splitlines() if line.strip()] for b in found if "serve-supervise.sh" in b]


def _ready_count(serve: Serve) -> int:
    log = serve.logs / "serve.log"
    return log.read_text(errors="replace").count("ready in") if log.exists() else 0


def _wait_ready(serve: Serve, count: int, timeout: float = 120) -> Client:
    deadline = time.monotonic() + timeout
    while _ready_count(serve) < count:
        assert time.monotonic() < deadline, f"the stack did not start a {count}th time"
        time.sleep(0.2)
    demo = json.loads((serve.state / "demo-app.json").read_text())
    return Client(serve.url, (demo["app_id"], demo["secret"]))


def test_the_supervisor_restarts_a_killed_stack_and_the_documented_backup_restores(
    tmp_path: Path, docker_client: Any, show_logs_on_failure: list[Path]
) -> None:
    """The guide's commands, run as written in a folder whose ``.opendevelop`` is this test's state."""
    (tmp_path / "infra").symlink_to(ROOT / "infra")
    serve = Serve(tmp_path, state_name=".opendevelop")
    show_logs_on_failure.append(serve.logs)
    start, backup, restore = _documented_serve_blocks()

    def run(lines: list[str]) -> None:
        for line in lines:
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=serve.env(), capture_output=True, timeout=120)
            assert done.returncode == 0, f"{line}: {done.stdout!r} {done.stderr!r}"

    try:
        run(start)
        client = _wait_ready(serve, 1)
        wait_for_text(serve.logs / "dispatcher.log", '"dispatcher.ready"', 60)
        before = client.submit(["echo before"])
        assert client.wait_done(before, 60)["stdout"] == "before\n"
        stack_pid = int(subprocess.check_output(["pgrep", "-f", "-P", _supervisor_pid(serve), "infra.local.serve"]))
        os.kill(stack_pid, signal.SIGKILL)  # the supervisor starts it again; its children died with it
        client = _wait_ready(serve, 2)
        assert client.sandbox(before)["stdout"] == "before\n"

        run(backup)
        client = _wait_ready(serve, 3)
        wait_for_text(serve.logs / "dispatcher.log", '"dispatcher.ready"', 60)
        after = client.submit(["echo after"])
        assert client.wait_done(after, 60)["stdout"] == "after\n"

        run(restore)
        client = _wait_ready(serve, 4)
        assert client.sandbox(before)["stdout"] == "before\n"
        assert client.get(f"/api/sandboxes/{after}").status_code == 404  # made after the backup
    finally:
        subprocess.run(["bash", "-c", "infra/local/serve-supervise.sh stop"], cwd=tmp_path, env=serve.env())
        remove_containers(docker_client, serve.server)


def _supervisor_pid(serve: Serve) -> str:
    return (serve.state / "run" / "serve-supervise.pid").read_text().strip()
