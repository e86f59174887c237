"""Issue #13 on the real local stack: hostile requests over HTTP, a quota's 429, a cancel that wins, fair share."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from .helpers import Client, RunningStack, models_bound_to, run_containers


def raw_post(stack: RunningStack, head: str) -> bytes:
    url = urlsplit(stack.stack.api_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_declared_terabyte_is_refused_before_it_is_read_or_authenticated(stack: RunningStack) -> None:
    started = time.monotonic()
    answer = raw_post(
        stack,
        "POST /api/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10**12}\r\nConnection: close\r\n\r\n",
    )

    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert time.monotonic() - started < 5


def test_former_500s_are_400s_naming_the_field(client: Client) -> None:
    cases = [
        (b"[" * 3000 + b"]" * 3000, "body"),
        (
            json.dumps({"image": "base", "cmd": ["true"], "files": [{"name": "\ud800", "content": ""}]}).encode(),
            "files[0].name",
        ),
        (json.dumps({"image": "base", "cmd": ["true"], "env": {"A": "\ud800"}}).encode(), "env"),
        (json.dumps({"image": "base", "cmd": "[" * 3000 + "]" * 3000}).encode(), "cmd"),
    ]
    for body, field in cases:
        response = client.post(data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (field, response.status_code, response.text[:200])
        assert response.json()["Message"].startswith(f"{field}: ")


def test_over_the_concurrency_quota_is_a_429_until_a_sandbox_settles(stack: RunningStack) -> None:
    from chalicelib import admin

    with models_bound_to(stack.stack.settings()):
        app, secret = admin.app_create("quota-probe", "demo", settings=stack.stack.settings())
        admin.app_set_limits(app.app_id, {}, stack.stack.settings(), app_quotas={"concurrency": 1})
    client = Client(stack.stack.api_url, (app.app_id, secret))
    first = client.submit(["sleep 20"], timeout="30")

    over = client.post(files=[("cmd", (None, '["true"]')), ("image", (None, "base"))])

    assert over.status_code == 429, over.text
    assert over.json()["Code"] == "TooManyRequests"
    assert int(over.headers["Retry-After"]) >= 1
    assert client.get("/api/usage").json()["limits"]["concurrency"] == 1
    assert client.get(f"/api/sandboxes/{first}").status_code == 200
    assert requests_delete(client, first) == 200
    client.wait_done(first)
    assert client.submit(["true"]) != first  # the slot came back


def requests_delete(client: Client, sandbox_id: str) -> int:
    import requests

    return requests.delete(f"{client.url}/api/sandboxes/{sandbox_id}", auth=client.auth, timeout=30).status_code


def test_a_cancel_as_soon_as_the_sandbox_runs_stops_it_within_a_second_or_two(
    client: Client, stack: RunningStack, docker_client: Any
) -> None:
    sandbox_id = client.submit(["sleep 30"], timeout="40")
    deadline = time.monotonic() + 30
    while client.sandbox(sandbox_id)["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)

    cancelled_at = time.monotonic()
    assert requests_delete(client, sandbox_id) == 200
    while any(sandbox_id in c.name and c.status == "running" for c in run_containers(docker_client, stack.server)):
        assert time.monotonic() - cancelled_at < 5, "the cancelled sandbox's container still runs"
        time.sleep(0.05)
    stopped_after = time.monotonic() - cancelled_at
    done = client.wait_done(sandbox_id, timeout=10)

    assert done["status"] == "cancelled"
    assert stopped_after < 3  # the watch loop looks every second; the kill takes the rest
    assert done["return_code"] is None and not done["stdout"]
