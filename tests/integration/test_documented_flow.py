"""The documented example, end to end: upload test.py, run it, read the result.

printf 'print("hello opendevelop!")\\n' > test.py
curl -u ID:SECRET -F image=base -F 'cmd=["python test.py"]' -F timeout=10 -F file=@test.py $API/api/sandboxes
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import Client, cmdline, descendants, multipart, remove_containers, start_make_dev

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
    names = response.json()
    assert "base" in names and names == sorted(names)  # base, and the catalogue built here (test_images.py)


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


def test_make_dev_runs_the_example_and_ctrl_c_stops_everything(
    tmp_path: Path, docker_client: Any, show_logs_on_failure: list[Path]
) -> None:
    dev = start_make_dev(tmp_path, show_logs_on_failure)
    started: dict[int, str] = {}
    try:
        started = descendants(dev.proc.pid)
        wanted = (
            "-m infra.local.moto_local",
            "-m infra.local.chalice_local local",
            "-m dispatcher",
            "-m infra.local.webhooks",
        )
        kinds = {k for k in wanted if any(k in c for c in started.values())}
        assert kinds == set(wanted), started

        assert dev.client.url == f"http://127.0.0.1:{dev.api_port}"
        assert f'server "{dev.server}"' in dev.banner
        sandbox_id = dev.client.submit(["python test.py"], {"test.py": TEST_PY}, timeout="10")
        assert_hello(dev.client.wait_done(sandbox_id, timeout=30))

        stop_at = time.monotonic()
        dev.proc.send_signal(signal.SIGINT)
        try:
            assert dev.proc.wait(25) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("make dev still running 25 s after Ctrl-C")
        while any(cmdline(pid) == cmd for pid, cmd in started.items()) and time.monotonic() - stop_at < 25:
            time.sleep(0.1)
        left = {pid: cmd for pid, cmd in started.items() if cmdline(pid) == cmd}
        assert not left, f"still running {time.monotonic() - stop_at:.1f} s after Ctrl-C: {left}"
        assert "stopping..." in dev.out_path.read_text()
    finally:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()
        for pid, cmd in started.items():
            if cmdline(pid) == cmd:
                os.kill(pid, signal.SIGKILL)
        remove_containers(docker_client, dev.server)
