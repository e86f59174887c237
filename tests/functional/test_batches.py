"""POST /api/sandboxes/batch and GET /api/sandboxes?ids=: many sandboxes per request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.models import Sandbox

ECHO = {"image": "base", "cmd": ["echo hi"]}


def post_batch(world: Any, items: Any, content_type: str = "application/json") -> Any:
    body = json.dumps({"sandboxes": items} if not isinstance(items, bytes) else None).encode()
    headers = {**world.auth, "Content-Type": content_type}
    return world.client.http.post(
        "/api/sandboxes/batch", headers=headers, body=items if isinstance(items, bytes) else body
    )


def test_a_batch_of_valid_items_is_201_in_order_with_rows_and_wakeups(world):
    items = [{**ECHO, "cmd": [f"echo {i}"]} for i in range(23)]

    response = post_batch(world, items)

    assert response.status_code == 201, response.body
    answers = response.json_body["sandboxes"]
    assert [a["cmd"] for a in answers] == [json.dumps([f"echo {i}"]) for i in range(23)]
    assert all(a["status"] == "queued" for a in answers)
    assert sorted(r.sandbox_id for r in world.sandbox_rows()) == sorted(a["id"] for a in answers)
    assert sorted(m["sandbox_id"] for m in world.queued_messages()) == sorted(a["id"] for a in answers)


def test_a_mixed_batch_is_207_and_an_invalid_item_stores_nothing(world):
    items = [
        ECHO,
        {"image": "nope", "cmd": ["true"]},
        {**ECHO, "timeout": 99999},
        "not an object",
        {**ECHO, "callback_url": "http://169.254.169.254/"},
        {**ECHO, "files": [{"name": "a.py", "content": "print(1)"}]},
    ]

    response = post_batch(world, items)

    assert response.status_code == 207, response.body
    answers = response.json_body["sandboxes"]
    assert len(answers) == 6
    assert answers[0]["status"] == "queued" and answers[5]["files"] == 1
    for i in (1, 2, 3, 4):
        assert answers[i]["error"]["Code"] == "BadRequestError"
        assert answers[i]["error"]["Message"].startswith(f"sandboxes[{i}].")
    assert "image" in answers[1]["error"]["Message"] and "timeout" in answers[2]["error"]["Message"]
    assert "callback_url" in answers[4]["error"]["Message"]
    assert sorted(r.sandbox_id for r in world.sandbox_rows()) == sorted([answers[0]["id"], answers[5]["id"]])
    assert len(world.queued_messages()) == 2


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([], 400, "sandboxes"),
        ([ECHO] * 101, 400, "sandboxes"),
        (b'{"sandboxes": "x"}', 400, "sandboxes"),
        (b'{"items": []}', 400, "body"),
        (b"{nope", 400, "body"),
    ],
)
def test_a_bad_batch_is_a_400_and_stores_nothing(world, body, status, field):
    response = post_batch(world, body)

    assert response.status_code == status, response.body
    assert response.json_body["Message"].startswith(f"{field}: ")
    world.assert_nothing_stored()


def test_a_batch_must_be_json(world):
    response = post_batch(world, b"image=base", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415
    world.assert_nothing_stored()


def test_ids_reads_the_apps_own_in_order_and_leaves_out_the_rest(world):
    mine = [post_batch(world, [ECHO, ECHO]).json_body["sandboxes"][i]["id"] for i in (0, 1)]
    other_id, other_secret = world.new_app()
    theirs = world.client.http.post(
        "/api/sandboxes",
        headers={**world.auth_for(other_id, other_secret), "Content-Type": "application/json"},
        body=json.dumps(ECHO).encode(),
    ).json_body["id"]

    asked = [mine[1], theirs, "0123456789abcdef", mine[0], mine[1]]
    answer = world.get(f"/api/sandboxes?ids={','.join(asked)}")

    assert answer.status_code == 200, answer.body
    assert [s["id"] for s in answer.json_body["sandboxes"]] == [mine[1], mine[0]]
    assert answer.json_body["next"] is None
    as_other = world.get(f"/api/sandboxes?ids={','.join(asked)}", headers=world.auth_for(other_id, other_secret))
    assert [s["id"] for s in as_other.json_body["sandboxes"]] == [theirs]


def test_ids_with_wait_answers_once_all_have_settled(world):
    ids = [a["id"] for a in post_batch(world, [ECHO, ECHO]).json_body["sandboxes"]]
    for sandbox_id in ids:
        Sandbox(sandbox_id).update(actions=[Sandbox.status.set("cancelled")])

    answer = world.get(f"/api/sandboxes?ids={','.join(ids)}&wait=5")

    assert [s["status"] for s in answer.json_body["sandboxes"]] == ["cancelled", "cancelled"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("ids=", "ids"),
        ("ids=" + ",".join(f"{i:016x}" for i in range(101)), "ids"),
        ("ids=abc,d-e", "ids"),
        ("wait=5", "wait"),
        ("ids=abc&wait=99", "wait"),
    ],
)
def test_bad_ids_or_wait_are_a_400_naming_them(world, query, field):
    answer = world.get(f"/api/sandboxes?{query}")

    assert answer.status_code == 400, answer.body
    assert answer.json_body["Message"].startswith(f"{field}: ")
