"""GET /api/images, GET /api/sandboxes (newest first, paginated) and GET /api/sandboxes/{id}."""

from __future__ import annotations

import base64
import json
import logging

from chalicelib import admin, sandboxes


def create(world, cmd: str = "true") -> str:
    response = world.post_json({"image": "base", "cmd": [cmd]})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def test_images_lists_the_enabled_image_names(world):
    assert world.get("/api/images").json_body == ["base"]


def test_a_disabled_image_is_not_listed(world):
    admin.image_create("old", "opendevelop/old:1", enabled=False)
    admin.image_create("alpine", "alpine:3")

    response = world.get("/api/images")

    assert response.status_code == 200
    assert response.json_body == ["alpine", "base"]


def test_one_sandbox_as_json(world):
    sandbox_id = world.post_json(
        {
            "image": "base",
            "cmd": ["python test.py"],
            "timeout": "5",
            "files": [{"name": "test.py", "content": "print(1)\n"}],
        }
    ).json_body["id"]

    response = world.get(f"/api/sandboxes/{sandbox_id}")

    assert response.status_code == 200
    body = response.json_body
    # The original fields ...
    assert (body["status"], body["image"], body["cmd"], body["return_code"], body["logs"]) == (
        "queued",
        "base",
        '["python test.py"]',
        None,
        None,
    )
    # ... and ours.
    assert body["id"] == sandbox_id
    assert body["timeout"] == 5
    assert body["limits"]["memory_mb"] == world.settings.limit("memory_mb").default
    assert [body[flag] for flag in ("timed_out", "oom_killed", "output_truncated")] == [False, False, False]
    assert body["error"] is None
    assert body["created_at"].endswith("Z") and body["started_at"] is None and body["duration_ms"] is None
    assert body["server"] == "local"


def test_sandboxes_are_listed_newest_first_each_with_its_id(world):
    first, second, third = create(world, "echo 1"), create(world, "echo 2"), create(world, "echo 3")

    response = world.get("/api/sandboxes")

    assert response.status_code == 200
    listed = response.json_body["sandboxes"]
    assert [s["id"] for s in listed] == [third, second, first]
    assert [s["cmd"] for s in listed] == ['["echo 3"]', '["echo 2"]', '["echo 1"]']
    assert response.json_body["next"] is None


def test_an_app_with_no_sandboxes_lists_none(world):
    assert world.get("/api/sandboxes").json_body == {"sandboxes": [], "next": None}


def test_the_list_is_paginated_with_limit_and_the_next_cursor(world):
    created = [create(world, f"echo {i}") for i in range(5)]

    pages = []
    path = "/api/sandboxes?limit=2"
    while path:
        body = world.get(path).json_body
        pages.append([s["id"] for s in body["sandboxes"]])
        path = f"/api/sandboxes?limit=2&cursor={body['next']}" if body["next"] else ""

    newest_first = created[::-1]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]


def test_an_app_lists_only_its_own_sandboxes(world):
    mine = create(world)
    other_id, other_secret = world.new_app()
    theirs = world.post_json({"image": "base", "cmd": ["true"]}, headers=world.auth_for(other_id, other_secret))
    assert theirs.status_code == 201

    assert [s["id"] for s in world.get("/api/sandboxes").json_body["sandboxes"]] == [mine]
    assert [
        s["id"] for s in world.get("/api/sandboxes", world.auth_for(other_id, other_secret)).json_body["sandboxes"]
    ] == [theirs.json_body["id"]]


def test_another_apps_cursor_is_refused(world):
    for _ in range(2):
        create(world)
    cursor = world.get("/api/sandboxes?limit=1").json_body["next"]
    other = world.auth_for(*world.new_app())

    response = world.get(f"/api/sandboxes?limit=1&cursor={cursor}", other)

    assert response.status_code == 400
    assert response.json_body["Message"].startswith("cursor:")


WRONG_SHAPE = b'{"app_id": 1}'
LONE_SURROGATE = b'{"app_id": {"S": "\\ud800"}, "created_at": {"S": "x"}, "sandbox_id": {"S": "x"}}'


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_bad_page_parameters_are_a_400_naming_them(world):
    for query, field in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        # Once 500s (issue #13): JSON nested deep, the wrong shape, text with no UTF-8 form, too long
        ("cursor=" + _cursor(b"[" * 3000 + b"]" * 3000), "cursor"),
        ("cursor=" + _cursor(WRONG_SHAPE), "cursor"),
        ("cursor=" + _cursor(LONE_SURROGATE), "cursor"),
        ("cursor=" + "A" * 5000, "cursor"),
    ]:
        response = world.get(f"/api/sandboxes?{query}")
        assert response.status_code == 400, query
        assert response.json_body["Code"] == "BadRequestError"
        assert response.json_body["Message"].startswith(f"{field}:"), response.json_body


class JsonLines(logging.Handler):
    """The JSON lines a logger writes, parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


def test_an_unexpected_fault_is_a_500_and_one_json_log_line_with_its_traceback(world, monkeypatch):
    def broken() -> list[str]:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(sandboxes, "enabled_images", broken)
    logged = JsonLines()
    logger = logging.getLogger("opendevelop.api")
    logger.addHandler(logged)
    try:
        response = world.get("/api/images")
    finally:
        logger.removeHandler(logged)

    assert response.status_code == 500
    assert response.json_body == {"Code": "InternalError", "Message": "internal error"}
    assert [line["event"] for line in logged.lines] == ["api.internal_error"]
    line = logged.lines[0]
    assert (line["method"], line["path"], line["error"]) == ("GET", "/api/images", "RuntimeError: the disk caught fire")
    assert 'in broken\n    raise RuntimeError("the disk caught fire")' in line["traceback"]
