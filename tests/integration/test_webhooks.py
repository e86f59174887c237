"""Webhooks and batches on the real stack: moto, ``chalice local``, a dispatcher and the webhook poller.

The receivers are this test's own listeners on 127.0.0.1, allowed by the
stack's configuration (``OPENDEVELOP_WEBHOOK_ALLOW=127.0.0.1:<port>``) and
nothing else: a trap listener on another port must never see a connection,
and the refused targets (169.254.169.254, 10.0.0.1, [::1], 127.0.0.1 on a port
not allowed) are refused at create, before anything could be sent; a name
that resolves to loopback (``localhost``, from /etc/hosts) is refused when it
is resolved at delivery.  Delivery's backoff is 1 s here (1 s, 3 s, 9 s).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from chalicelib import admin
from infra.local.stack import free_port

from .conftest import running_stack
from .helpers import RunningStack

pytestmark = pytest.mark.timeout(300)


class Receiver:
    """An HTTP listener on 127.0.0.1 that records each request and answers the next of ``statuses`` (then 200)."""

    def __init__(self, port: int, statuses: list[int] | None = None, location: str = "") -> None:
        self.port = port
        self.statuses = list(statuses or [])
        self.location = location
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                receiver.connections += 1
                return True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


PORTS = {name: free_port() for name in ("receiver", "late", "trap")}


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[RunningStack]:
    """A stack whose webhooks may reach this test's receiver ports on 127.0.0.1, and only those."""
    name = f"wh{secrets.token_hex(3)}"
    env = {
        "OPENDEVELOP_WEBHOOK_ALLOW": f"127.0.0.1:{PORTS['receiver']},127.0.0.1:{PORTS['late']}",
        "OPENDEVELOP_WEBHOOK_BACKOFF": "1",
        "OPENDEVELOP_WEBHOOK_ATTEMPTS": "4",
    }
    with running_stack(tmp_path_factory.mktemp(name), name, extra_env=env, webhooks=True) as running:
        yield running


@pytest.fixture
def trap() -> Iterator[Receiver]:
    """A listener no webhook may ever reach: any connection to it fails the test."""
    listener = Receiver(PORTS["trap"]).start()
    yield listener
    listener.stop()
    assert listener.connections == 0, "a webhook connected to a target that is not allowed"


def create(running: RunningStack, callback_url: str, cmd: str = "echo hi") -> requests.Response:
    return running.client.post(json={"image": "base", "cmd": [cmd], "timeout": 10, "callback_url": callback_url})


def wait_callback(running: RunningStack, sandbox_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        callback: dict[str, Any] = running.client.sandbox(sandbox_id)["callback"]
        if callback["status"] == status:
            return callback
        assert time.monotonic() < deadline, f"callback still {callback} after {timeout:g} s"
        time.sleep(0.2)


def test_a_settled_sandbox_is_posted_signed_and_retried_after_500s(hooked, trap, show_logs_on_failure):
    show_logs_on_failure.append(hooked.stack.log_dir)
    receiver = Receiver(PORTS["receiver"], statuses=[500, 500]).start()
    try:
        response = create(hooked, receiver.url)
        assert response.status_code == 201, response.text
        sandbox_id = response.json()["id"]

        callback = wait_callback(hooked, sandbox_id, "delivered")
    finally:
        receiver.stop()

    assert callback["attempts"] == 3 and callback["last_error"] is None
    assert len(receiver.requests) == 3
    assert {headers["webhook-id"] for headers, _ in receiver.requests} == {f"msg_{sandbox_id}"}
    webhook = Webhook(hooked.demo["webhook_secret"])
    for headers, body in receiver.requests:
        sandbox = webhook.verify(body, headers)
        assert sandbox["id"] == sandbox_id and sandbox["status"] == "terminated"
        assert sandbox["stdout"] == "hi\n"


def test_a_receiver_down_then_up_gets_it(hooked, trap, show_logs_on_failure):
    show_logs_on_failure.append(hooked.stack.log_dir)
    late = Receiver(PORTS["late"])
    sandbox_id = create(hooked, late.url).json()["id"]
    deadline = time.monotonic() + 60
    # An attempt counts from its claim, before its POST: wait for the first one's error to be written.
    while not (
        (callback := hooked.client.sandbox(sandbox_id)["callback"])["attempts"] >= 1
        and callback["status"] == "pending"
        and callback["last_error"]
    ):
        assert time.monotonic() < deadline, callback
        time.sleep(0.2)
    assert "refused" in (callback["last_error"] or "").lower(), callback  # connection refused: nobody listens
    late.start()
    try:
        callback = wait_callback(hooked, sandbox_id, "delivered")
    finally:
        late.stop()

    assert callback["attempts"] >= 2
    assert [h["webhook-id"] for h, _ in late.requests] == [f"msg_{sandbox_id}"]


@pytest.mark.parametrize(
    "url",
    [
        f"http://127.0.0.1:{PORTS['trap']}/hook",  # loopback, on a port the configuration does not allow
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        f"http://[::1]:{PORTS['trap']}/hook",
    ],
)
def test_refused_targets_are_a_400_at_create(hooked, trap, url):
    response = create(hooked, url)

    assert response.status_code == 400, response.text
    assert response.json()["Message"].startswith("callback_url: refused")


def test_a_name_resolving_to_loopback_is_refused_at_delivery(hooked, trap, show_logs_on_failure):
    show_logs_on_failure.append(hooked.stack.log_dir)
    response = create(hooked, f"http://localhost:{PORTS['trap']}/hook")
    assert response.status_code == 201, response.text

    callback = wait_callback(hooked, response.json()["id"], "failed")

    assert callback["attempts"] == 1
    assert callback["last_error"].startswith("refused: localhost resolves to 127.0.0.1")


def test_a_redirect_to_loopback_is_not_followed(hooked, trap, show_logs_on_failure):
    show_logs_on_failure.append(hooked.stack.log_dir)
    redirecting = Receiver(PORTS["receiver"], statuses=[302] * 4, location=f"http://127.0.0.1:{PORTS['trap']}/").start()
    try:
        sandbox_id = create(hooked, redirecting.url).json()["id"]
        callback = wait_callback(hooked, sandbox_id, "failed")
    finally:
        redirecting.stop()

    assert callback["attempts"] == 4 and callback["last_error"].startswith("HTTP 302")
    assert len(redirecting.requests) == 4


def test_a_mixed_batch_runs_the_valid_items_and_ids_reads_only_the_apps_own(hooked, show_logs_on_failure):
    show_logs_on_failure.append(hooked.stack.log_dir)
    url = hooked.stack.api_url
    items = [
        {"image": "base", "cmd": ["echo one"]},
        {"image": "no-such-image", "cmd": ["echo two"]},
        {"image": "base", "cmd": ["echo three"], "memory_mb": 10**9},
        {"image": "base", "cmd": ["echo four"], "files": [{"name": "../x", "content": ""}]},
        {"image": "base", "cmd": ["echo five"]},
    ]
    response = requests.post(
        f"{url}/api/sandboxes/batch", json={"sandboxes": items}, auth=hooked.client.auth, timeout=30
    )
    assert response.status_code == 207, response.text
    answers = response.json()["sandboxes"]
    assert [("id" not in a) for a in answers] == [False, True, True, True, False]
    created = [answers[0]["id"], answers[4]["id"]]

    with_other = admin.app_create(f"other-{secrets.token_hex(2)}", "demo", settings=hooked.stack.settings())
    other_auth = (with_other[0].app_id, with_other[1])
    theirs = requests.post(
        f"{url}/api/sandboxes", json={"image": "base", "cmd": ["echo theirs"]}, auth=other_auth, timeout=30
    ).json()["id"]

    ids = ",".join([*created, theirs])
    mine = requests.get(f"{url}/api/sandboxes", params={"ids": ids, "wait": 20}, auth=hooked.client.auth, timeout=40)
    assert mine.status_code == 200, mine.text
    got = mine.json()["sandboxes"]
    assert [s["id"] for s in got] == created
    assert [(s["status"], s["stdout"]) for s in got] == [("terminated", "one\n"), ("terminated", "five\n")]
    other = requests.get(f"{url}/api/sandboxes", params={"ids": ids}, auth=other_auth, timeout=30).json()
    assert [s["id"] for s in other["sandboxes"]] == [theirs]


def test_the_client_batches_and_verifies(hooked, show_logs_on_failure):
    from opendevelop import BadRequestError, Client, verify_webhook

    show_logs_on_failure.append(hooked.stack.log_dir)
    receiver = Receiver(PORTS["receiver"]).start()
    try:
        client = Client(hooked.stack.api_url, hooked.demo["app_id"], hooked.demo["secret"])
        made = client.create_many([{"cmd": "echo a", "callback_url": receiver.url}, {"cmd": "echo b", "image": "nope"}])
        assert isinstance(made[1], BadRequestError) and "image" in made[1].message
        sandbox = made[0]
        assert not isinstance(sandbox, Exception)
        (done,) = client.get_many([sandbox.id], wait=20)
        assert done.stdout == "a\n"
        wait_callback(hooked, sandbox.id, "delivered")
    finally:
        receiver.stop()

    headers, body = receiver.requests[0]
    assert verify_webhook(headers, body, hooked.demo["webhook_secret"])["id"] == sandbox.id
    assert json.loads(body)["callback"]["attempts"] == 1


def test_the_stack_logs_no_secret(hooked):
    logs = "".join(p.read_text(errors="replace") for p in Path(hooked.stack.log_dir).glob("*.log"))
    assert hooked.demo["webhook_secret"] not in logs
