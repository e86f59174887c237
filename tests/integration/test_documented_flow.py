"""The documented example, end to end: upload test.py, run it, read the result.

printf 'print("hello opendevelop!")\\n' > test.py
curl -u ID:SECRET -F image=base -F 'cmd=["python test.py"]' -F timeout=10 -F file=@test.py $API/api/sandboxes
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import free_port

from .helpers import ROOT, Client, multipart, remove_containers, wait_for_text

pytestmark = pytest.mark.timeout(120)

TEST_PY = 'print("hello opendevelop!")\n'
HELLO = "hello opendevelop!\n"


def assert_hello(sandbox: dict) -> None:
    assert sandbox["status"] == "terminated", sandbox
    assert sandbox["return_code"] == 0, sandbox
    assert sandbox["logs"] == HELLO
    assert sandbox["stdout"] == HELLO
    assert not sandbox["stderr"]
    assert sandbox["timed_out"] is False and sandbox["oom_killed"] is False and sandbox["error"] is None


def test_the_images_a_client_can_choose_from(client: Client) -> None:
    response = client.get("/api/images")
    assert response.status_code == 200
    assert response.json() == ["base"]


def test_multipart_upload_runs_and_the_result_can_be_read(client: Client) -> None:
    response = client.post(files=multipart(["python test.py"], {"test.py": TEST_PY}, image="base", timeout="10"))

    assert response.status_code == 201, response.text
    created = response.json()
    sandbox_id = created["id"]
    assert re.fullmatch(r"[0-9a-f]{16,}", sandbox_id)
    assert response.headers["Location"] == f"/api/sandboxes/{sandbox_id}"
    assert created["status"] in ("queued", "running")
    assert created["cmd"] == '["python test.py"]'  # a JSON-encoded string, as the original showed it

    done = client.wait_done(sandbox_id, timeout=30)
    assert_hello(done)
    assert done["image"] == "base"
    assert done["cmd"] == '["python test.py"]'
    assert done["timeout"] == 10
    assert done["files"] == 1
    assert done["started_at"] and done["finished_at"] and done["duration_ms"] >= 0
    assert sandbox_id in client.listed_ids()


def test_a_client_asking_for_text_plain_gets_the_bare_id(client: Client) -> None:
    response = client.post(
        files=multipart(["python test.py"], {"test.py": TEST_PY}, image="base", timeout="10"),
        headers={"Accept": "text/plain"},
    )

    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    sandbox_id = response.text
    assert re.fullmatch(r"[0-9a-f]{16,}", sandbox_id), sandbox_id
    assert_hello(client.wait_done(sandbox_id))


def test_a_json_body_runs_the_same_example(client: Client) -> None:
    body = {
        "image": "base",
        "cmd": ["python test.py", "python other.py"],
        "timeout": "10",
        "files": [
            {"name": "test.py", "content": TEST_PY},
            {"name": "other.py", "content": base64.b64encode(b'print("from base64")\n').decode(), "encoding": "base64"},
        ],
    }
    response = client.post(json=body)

    assert response.status_code == 201, response.text
    done = client.wait_done(response.json()["id"])
    assert done["status"] == "terminated" and done["return_code"] == 0, done
    assert done["logs"] == HELLO + "from base64\n"
    assert done["files"] == 2


# `make dev`, as a newcomer runs it


def _descendants(pid: int) -> dict[int, str]:
    """Every living process below ``pid``, with its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        cmdline = _cmdline(child)
        if cmdline:
            found[child] = cmdline
        todo += children.get(child, [])
    return found


def _cmdline(pid: int) -> str:
    """A process's command line; empty once it is gone (or a zombie)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_make_dev_runs_the_example_and_ctrl_c_stops_everything(
    tmp_path: Path, docker_client: Any, show_logs_on_failure: list[Path]
) -> None:
    server = f"dev{secrets.token_hex(3)}"
    state = tmp_path / "state"
    out_path = tmp_path / "make-dev.out"
    show_logs_on_failure += [out_path, state / "logs"]
    env = {
        **os.environ,
        "OPENDEVELOP_AWS_PORT": str(free_port()),
        "OPENDEVELOP_API_PORT": str(free_port()),
        "OPENDEVELOP_STATE_DIR": str(state),
        "OPENDEVELOP_SERVER": server,
        "PYTHONUNBUFFERED": "1",
    }
    with open(out_path, "wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "infra.local.dev"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: dict[int, str] = {}
    try:
        banner = wait_for_text(out_path, "ready in", 60, dev)
        started = _descendants(dev.pid)
        wanted = ("-m infra.local.moto_local", "-m infra.local.chalice_local local", "-m dispatcher")
        kinds = {k for k in wanted if any(k in c for c in started.values())}
        assert kinds == set(wanted), started

        api = re.search(r"API\s+(http://\S+)", banner)
        demo = re.search(r"Demo app:\s+id (\S+)\s+secret (\S+)", banner)
        assert api and demo, banner
        assert api.group(1) == f"http://127.0.0.1:{env['OPENDEVELOP_API_PORT']}"
        assert f'server "{server}"' in banner
        client = Client(api.group(1), (demo.group(1), demo.group(2)))
        sandbox_id = client.submit(["python test.py"], {"test.py": TEST_PY}, timeout="10")
        assert_hello(client.wait_done(sandbox_id, timeout=30))

        stop_at = time.monotonic()
        dev.send_signal(signal.SIGINT)
        try:
            assert dev.wait(25) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("make dev still running 25 s after Ctrl-C")
        while any(_cmdline(pid) == cmd for pid, cmd in started.items()) and time.monotonic() - stop_at < 25:
            time.sleep(0.1)
        left = {pid: cmd for pid, cmd in started.items() if _cmdline(pid) == cmd}
        assert not left, f"still running {time.monotonic() - stop_at:.1f} s after Ctrl-C: {left}"
        assert "stopping..." in out_path.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        for pid, cmd in started.items():
            if _cmdline(pid) == cmd:
                os.kill(pid, signal.SIGKILL)
        remove_containers(docker_client, server)
