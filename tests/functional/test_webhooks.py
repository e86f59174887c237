"""Webhooks (``callback_url``): validation at create, signing, the delivery state machine, SSRF refusals.

Delivery runs here against a fake resolver and a fake connector: the
connector hands ``webhook_send.post`` one end of a socket pair whose other end
a thread answers as a receiver would, so these tests put no packet on any
network, and a test of a refused target asserts the connector was never called.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import timedelta
from typing import Any

import pytest
from opendevelop import WebhookVerificationError, verify_webhook
from standardwebhooks import Webhook

from chalicelib import admin, aws, lifecycle, webhook_send, webhook_targets, webhooks
from chalicelib.errors import InvalidInput
from chalicelib.models import App, Sandbox, utcnow

PUBLIC = "93.184.215.14"  # what the fake resolver answers for a public name (never connected to)


def create(world: Any, url: str = "https://hooks.example.com/done?k=1") -> str:
    response = world.post_json({"image": "base", "cmd": ["echo hi"], "callback_url": url})
    assert response.status_code == 201, response.body
    return str(response.json_body["id"])


def webhook_messages(world: Any) -> list[dict[str, Any]]:
    """The webhooks queue's messages, waiting (its 20 s long poll) for the first to be due."""
    url = aws.webhook_queue_url(world.settings)
    got = aws.sqs(world.settings).receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)
    return [json.loads(m["Body"]) for m in got.get("Messages", [])]


def webhooks_queued(world: Any) -> dict[str, int]:
    """How many messages the webhooks queue holds, due now or later: no long poll needed to see none."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesDelayed",
        "ApproximateNumberOfMessagesNotVisible",
    ]
    url = aws.webhook_queue_url(world.settings)
    attributes = aws.sqs(world.settings).get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return {
        "due": int(attributes[names[0]]),
        "delayed": int(attributes[names[1]]),
        "in_flight": int(attributes[names[2]]),
    }


class Receiver:
    """A fake connector: each connection is a socket pair whose far end answers the next of ``statuses``."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.connects: list[tuple[str, int]] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, address: tuple[str, int], timeout: float) -> socket.socket:
        self.connects.append(address)
        ours, theirs = socket.socketpair()
        thread = threading.Thread(target=self._answer, args=(theirs, self.statuses.pop(0)))
        thread.start()
        self.threads.append(thread)
        return ours

    def _answer(self, sock: socket.socket, status: int) -> None:
        with sock, sock.makefile("rb") as f:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += f.readline()
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = f.read(int(headers["content-length"]))
            self.requests.append((headers, body))
            sock.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno".encode())

    def join(self) -> None:
        for thread in self.threads:
            thread.join(5)


def resolver_to(*addresses: str) -> Any:
    def resolve(host: str, port: int, type: int = 0) -> list[Any]:  # noqa: A002 - getaddrinfo's keyword
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in addresses]

    return resolve


def never_connect(address: tuple[str, int], timeout: float) -> socket.socket:
    raise AssertionError(f"a connection was attempted to {address}")


@pytest.fixture(autouse=True)
def fake_tls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """TLS that records the server name and passes bytes as they are (the fake receiver speaks plain HTTP)."""
    names: list[str] = []

    class Context:
        def wrap_socket(self, sock: socket.socket, server_hostname: str) -> socket.socket:
            names.append(server_hostname)
            return sock

    monkeypatch.setattr(webhook_send.ssl, "create_default_context", lambda: Context())
    return names


def settle(world: Any, sandbox_id: str) -> None:
    assert lifecycle.cancel(Sandbox.get(sandbox_id, consistent_read=True))


# Create: what callback_url may be


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("http://127.0.0.1:9/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://[::1]:8080/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://user:pw@example.com/", "credentials"),
        ("https:///nohost", "no host"),
        ("https://example.com/" + "a" * 2100, "longer than"),
        ("https://exa mple.com/", "ASCII"),
        (42, "http(s) URL"),
    ],
)
def test_a_callback_url_that_can_never_be_delivered_is_a_400_naming_it(world, url, why):
    response = world.post_json({"image": "base", "cmd": ["echo hi"], "callback_url": url})

    assert response.status_code == 400, response.body
    assert response.json_body["Message"].startswith("callback_url: ")
    assert why in response.json_body["Message"]
    world.assert_nothing_stored()


def test_the_allow_list_lets_an_operator_reach_a_private_receiver(world):
    world.monkeypatch.setenv("OPENDEVELOP_WEBHOOK_ALLOW", "10.1.0.0/16, 127.0.0.1:8125")
    world.reload_settings()

    assert world.post_json({"image": "base", "cmd": ["true"], "callback_url": "http://10.1.2.3/h"}).status_code == 201
    ok = world.post_json({"image": "base", "cmd": ["true"], "callback_url": "http://127.0.0.1:8125/h"})
    assert ok.status_code == 201
    other_port = world.post_json({"image": "base", "cmd": ["true"], "callback_url": "http://127.0.0.1:8126/h"})
    assert other_port.status_code == 400


def test_a_multipart_create_takes_callback_url_and_get_shows_the_callback(world):
    response = world.post_form(
        [("image", "base"), ("cmd", '["echo hi"]'), ("callback_url", "https://hooks.example.com/x")]
    )

    assert response.status_code == 201, response.body
    shown = world.get(f"/api/sandboxes/{response.json_body['id']}").json_body
    assert shown["callback"] == {
        "url": "https://hooks.example.com/x",
        "status": "pending",
        "attempts": 0,
        "last_error": None,
    }
    assert world.post_json({"image": "base", "cmd": ["true"]}).json_body["callback"] is None


# Signing


def test_signatures_verify_with_the_standardwebhooks_package_and_the_client():
    secret = webhook_send.new_secret()
    body = b'{"id": "abc", "status": "terminated"}'

    headers = webhook_send.headers(secret, "msg_abc", body)

    assert Webhook(secret).verify(body, headers) == {"id": "abc", "status": "terminated"}
    assert verify_webhook(headers, body, secret)["status"] == "terminated"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body + b" ", secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, webhook_send.new_secret())
    old = webhook_send.headers(secret, "msg_abc", body, now=utcnow().timestamp() - 3600)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(old, body, secret)


def test_app_create_makes_a_webhook_secret_and_rotation_replaces_it(world):
    before = App.get(world.app_id).webhook_secret
    assert before and before.startswith("whsec_")

    app, secret = admin.app_rotate_webhook_secret(world.app_id)

    assert secret.startswith("whsec_") and secret != before
    assert App.get(world.app_id).webhook_secret == secret
    assert "webhook_secret" not in admin.describe(app)


# Delivery


def test_a_settle_queues_the_first_attempt_and_a_delivery_is_signed_and_recorded(world):
    sandbox_id = create(world)
    settle(world, sandbox_id)
    assert webhook_messages(world) == [{"sandbox_id": sandbox_id, "attempt": 0}]
    receiver = Receiver([200])

    outcome = webhooks.handle(world.settings, {"sandbox_id": sandbox_id, "attempt": 0}, resolver_to(PUBLIC), receiver)

    receiver.join()
    assert outcome == "delivered"
    assert receiver.connects == [(PUBLIC, 443)]
    headers, body = receiver.requests[0]
    assert headers["host"] == "hooks.example.com"
    assert headers["webhook-id"] == f"msg_{sandbox_id}"
    sandbox = Webhook(App.get(world.app_id).webhook_secret).verify(body, headers)
    assert sandbox["id"] == sandbox_id and sandbox["status"] == "cancelled"
    shown = world.get(f"/api/sandboxes/{sandbox_id}").json_body["callback"]
    assert shown == {
        "url": "https://hooks.example.com/done?k=1",
        "status": "delivered",
        "attempts": 1,
        "last_error": None,
    }


def test_https_goes_through_tls_with_the_urls_host_as_its_server_name(world, fake_tls):
    names = fake_tls
    target = webhook_targets.parse("https://hooks.example.com:8443/x")
    receiver = Receiver([204])

    status, _ = webhook_send.post(target, [webhook_targets.ipaddress.ip_address(PUBLIC)], b"{}", {}, receiver)

    receiver.join()
    assert (status, names, receiver.connects) == (204, ["hooks.example.com"], [(PUBLIC, 8443)])


def test_a_failed_attempt_is_retried_with_the_same_id_and_backoff(world):
    world.monkeypatch.setenv("OPENDEVELOP_WEBHOOK_BACKOFF", "1")
    world.monkeypatch.setenv("OPENDEVELOP_WEBHOOK_ATTEMPTS", "3")
    settings = world.reload_settings()
    sandbox_id = create(world)
    settle(world, sandbox_id)
    webhook_messages(world)
    receiver = Receiver([500, 503, 500])

    before = utcnow()
    assert (
        webhooks.handle(settings, {"sandbox_id": sandbox_id, "attempt": 0}, resolver_to(PUBLIC), receiver) == "failed"
    )
    after = utcnow()
    assert webhook_messages(world) == [{"sandbox_id": sandbox_id, "attempt": 1}]
    row = Sandbox.get(sandbox_id)
    assert row.callback_status == "pending" and row.callback_error.startswith("HTTP 500")
    assert before + timedelta(seconds=1) <= row.callback_due_at <= after + timedelta(seconds=1)
    # A duplicate of the first message changes nothing: attempt 0 was made.
    assert webhooks.handle(settings, {"sandbox_id": sandbox_id, "attempt": 0}, resolver_to(PUBLIC), receiver) == "stale"
    Sandbox(sandbox_id).update(actions=[Sandbox.callback_due_at.set(utcnow())])  # as if the delay had passed
    before = utcnow()
    webhooks.handle(settings, {"sandbox_id": sandbox_id, "attempt": 1}, resolver_to(PUBLIC), receiver)
    after = utcnow()
    due = Sandbox.get(sandbox_id).callback_due_at
    assert before + timedelta(seconds=3) <= due <= after + timedelta(seconds=3)  # 1 s, then 3 s
    Sandbox(sandbox_id).update(actions=[Sandbox.callback_due_at.set(utcnow())])
    webhooks.handle(settings, {"sandbox_id": sandbox_id, "attempt": 2}, resolver_to(PUBLIC), receiver)

    receiver.join()
    row = Sandbox.get(sandbox_id)
    assert (row.callback_status, int(row.callback_attempts), row.callback_pending) == ("failed", 3, None)
    assert {headers["webhook-id"] for headers, _ in receiver.requests} == {f"msg_{sandbox_id}"}
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254", "127.0.0.1", "::1", "fd00::1", "100.64.0.1"])
def test_a_name_resolving_to_a_refused_address_is_never_connected_to(world, address):
    sandbox_id = create(world)
    settle(world, sandbox_id)

    outcome = webhooks.handle(
        world.settings, {"sandbox_id": sandbox_id, "attempt": 0}, resolver_to(PUBLIC, address), never_connect
    )

    assert outcome == "failed"
    callback = world.get(f"/api/sandboxes/{sandbox_id}").json_body["callback"]
    assert callback["status"] == "failed" and callback["attempts"] == 1
    assert callback["last_error"].startswith(f"refused: hooks.example.com resolves to {address}")


def test_localhost_is_taken_at_create_and_refused_when_resolved(world):
    sandbox_id = create(world, "http://localhost:8000/hook")  # a name: checked at delivery, resolved then
    settle(world, sandbox_id)

    webhooks.handle(world.settings, {"sandbox_id": sandbox_id, "attempt": 0}, connect=never_connect)

    assert Sandbox.get(sandbox_id).callback_error.startswith("refused: localhost resolves to 127.0.0.1")


def test_the_platforms_own_endpoint_is_refused_even_inside_an_allowed_range(world):
    world.monkeypatch.setenv("OPENDEVELOP_WEBHOOK_ALLOW", "127.0.0.0/8")
    world.monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:5999")
    policy = webhook_targets.Policy.from_settings(world.reload_settings())

    with pytest.raises(InvalidInput, match="platform's own endpoint"):
        webhook_targets.check("http://127.0.0.1:5999/", policy)
    assert webhook_targets.check("http://127.0.0.1:6000/", policy)


def test_a_redirect_is_an_answer_not_followed(world):
    sandbox_id = create(world)
    settle(world, sandbox_id)
    receiver = Receiver([302])

    webhooks.handle(world.settings, {"sandbox_id": sandbox_id, "attempt": 0}, resolver_to(PUBLIC), receiver)

    receiver.join()
    assert len(receiver.connects) == 1
    assert Sandbox.get(sandbox_id).callback_error.startswith("HTTP 302")


def test_an_unsettled_sandbox_is_not_delivered_and_a_lost_enqueue_is_rederived(world):
    world.monkeypatch.setenv("OPENDEVELOP_WEBHOOK_REDERIVE", "1")
    settings = world.reload_settings()
    sandbox_id = create(world)
    assert webhooks.handle(settings, {"sandbox_id": sandbox_id, "attempt": 0}) == "unsettled"
    # Settled, but its first attempt never queued (the settling process died after its write).
    Sandbox(sandbox_id).update(
        actions=[Sandbox.status.set("error"), Sandbox.finished_at.set(utcnow() - timedelta(seconds=5))]
    )
    assert webhooks_queued(world) == {"due": 0, "delayed": 0, "in_flight": 0}

    assert webhooks.rederive(settings) == 1

    assert webhook_messages(world) == [{"sandbox_id": sandbox_id, "attempt": 0}]
    assert webhooks.rederive(settings) == 0  # its due time moved to now: not again at once
