"""create_many, get_many, callback_url and verify_webhook, against a scripted API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from fakeapi import sandbox_json

import opendevelop
from opendevelop import verify_webhook


def test_create_many_sends_one_batch_and_answers_each_item_in_order(client, fake):
    fake.then(
        207,
        {
            "sandboxes": [
                sandbox_json("aaaaaaaaaaaaaaaa", status="queued"),
                {"error": {"Code": "BadRequestError", "Message": "sandboxes[1].image: unknown image 'nope'"}},
            ]
        },
    )

    made = client.create_many(
        [
            {"cmd": "echo a", "files": {"a.txt": "x"}, "callback_url": "https://hooks.example.com/x", "memory_mb": 64},
            {"cmd": ["echo b"], "image": "nope"},
        ]
    )

    sent = fake.requests[0]
    assert (sent.method, sent.path) == ("POST", "/api/sandboxes/batch")
    first, second = sent.json()["sandboxes"]
    assert first["cmd"] == ["echo a"] and first["callback_url"] == "https://hooks.example.com/x"
    assert first["memory_mb"] == 64 and first["files"][0]["name"] == "a.txt"
    assert second == {"image": "nope", "cmd": ["echo b"], "files": []}
    assert made[0].id == "aaaaaaaaaaaaaaaa"
    assert isinstance(made[1], opendevelop.BadRequestError) and made[1].status == 400
    assert "unknown image" in made[1].message


def test_get_many_asks_by_ids_and_waits(client, fake):
    fake.then(200, {"sandboxes": [sandbox_json("bbbbbbbbbbbbbbbb")], "next": None})

    got = client.get_many(["bbbbbbbbbbbbbbbb", "cccccccccccccccc"], wait=30)

    assert [s.id for s in got] == ["bbbbbbbbbbbbbbbb"]
    assert fake.requests[0].query == {"ids": ["bbbbbbbbbbbbbbbb,cccccccccccccccc"], "wait": ["20"]}


def test_create_sends_callback_url_and_the_sandbox_shows_its_callback(client, fake):
    callback = {"url": "https://h.example.com/", "status": "pending", "attempts": 0, "last_error": None}
    fake.then(201, sandbox_json(status="queued", callback=callback))

    sandbox = client.create("true", callback_url="https://h.example.com/")

    assert fake.requests[0].json()["callback_url"] == "https://h.example.com/"
    assert sandbox.callback == callback


def _signed(secret: str, body: bytes, msg_id: str = "msg_abc", at: float | None = None) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": stamp,
        "Webhook-Signature": "v1," + base64.b64encode(mac).decode(),
    }


SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_verify_webhook_takes_a_good_signature_among_several_and_refuses_the_rest():
    body = b'{"id": "abc", "status": "terminated"}'
    headers = _signed(SECRET, body)
    headers["Webhook-Signature"] = "v1,Zm9v " + headers["Webhook-Signature"]  # one rotated-out key's, then ours

    assert verify_webhook(headers, body, SECRET) == {"id": "abc", "status": "terminated"}
    for bad in (
        (headers, body + b"\n", SECRET),
        (headers, body, "whsec_" + base64.b64encode(b"j" * 32).decode()),
        (_signed(SECRET, body, at=time.time() - 600), body, SECRET),
        ({k: v for k, v in headers.items() if k != "Webhook-Id"}, body, SECRET),
    ):
        with pytest.raises(opendevelop.WebhookVerificationError):
            verify_webhook(*bad)
