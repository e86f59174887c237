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
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "50")  # all of them within the app's share: all woken
    world.reload_settings()
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
        ("ids=abc,,def", "ids"),
        ("wait=5", "wait"),
        ("ids=abc&wait=99", "wait"),
    ],
)
def test_bad_ids_or_wait_are_a_400_naming_them(world, query, field):
    answer = world.get(f"/api/sandboxes?{query}")

    assert answer.status_code == 400, answer.body
    assert answer.json_body["Message"].startswith(f"{field}: ")


def test_quotas_apply_per_item_as_to_single_creates(world):
    from chalicelib import admin, quotas
    from chalicelib.models import Counter

    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"concurrency": 3})
    world.reload_settings()
    assert world.post_json(ECHO).status_code == 201  # one slot taken by a single create

    response = post_batch(world, [ECHO, {"image": "nope", "cmd": ["true"]}, ECHO, ECHO, ECHO])

    assert response.status_code == 207, response.body
    answers = response.json_body["sandboxes"]
    assert [a.get("status") for a in answers] == ["queued", None, "queued", None, None]
    assert answers[1]["error"]["Code"] == "BadRequestError"
    for refused in (answers[3], answers[4]):
        assert refused["error"]["Code"] == "TooManyRequests"
        assert refused["error"]["Message"].startswith("concurrency: ")
    assert len(world.sandbox_rows()) == 3
    assert int(Counter.get(quotas.app_key(world.app_id), consistent_read=True).active) == 3


def test_a_batch_beyond_the_fair_share_parks_the_rest_without_wakeups(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "2")
    world.reload_settings()

    response = post_batch(world, [ECHO] * 5)

    assert response.status_code == 201, response.body
    rows = world.sandbox_rows()
    assert sum(1 for r in rows if r.parked_app) == 3
    assert len(world.queued_messages()) == 2
