"""Every call needs the app's credentials; an app sees only its own sandboxes."""

from __future__ import annotations

import base64

import pytest


def basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


ENDPOINTS = [
    ("GET", "/api/images"),
    ("GET", "/api/sandboxes"),
    ("GET", "/api/sandboxes/0123456789abcdef"),
    ("POST", "/api/sandboxes"),
]


def call(world, method: str, path: str, headers: dict[str, str]):
    body = b'{"image": "base", "cmd": ["true"]}' if method == "POST" else b""
    return world.client.http.request(method, path, headers={**headers, "Content-Type": "application/json"}, body=body)


def assert_401(response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="opendevelop"'
    assert response.json_body["Code"] == "UnauthorizedError"
    assert response.json_body["Message"]


def test_no_credentials_is_a_401_everywhere(world):
    for method, path in ENDPOINTS:
        assert_401(call(world, method, path, {}))
    world.assert_nothing_stored()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param("wrong secret", id="wrong-secret"),
        pytest.param({"Authorization": "Bearer abc.def"}, id="not-basic"),
        pytest.param({"Authorization": "Basic"}, id="basic-without-value"),
        pytest.param({"Authorization": "Basic !!not base64!!"}, id="not-base64"),
        pytest.param(basic(b"no-colon-here"), id="no-colon"),
        pytest.param(basic(b":secret-without-id"), id="empty-id"),
        pytest.param(basic(b"\xff\xfe:\xff"), id="not-utf8"),
        pytest.param("unknown app", id="unknown-app"),
    ],
)
def test_bad_credentials_are_a_401_everywhere(world, headers):
    if headers == "wrong secret":
        headers = world.auth_for(world.app_id, world.secret + "x")
    elif headers == "unknown app":
        headers = world.auth_for("f" * 16, world.secret)

    for method, path in ENDPOINTS:
        assert_401(call(world, method, path, headers))
    world.assert_nothing_stored()


def test_the_right_credentials_pass(world):
    for method, path in ENDPOINTS[:2]:
        assert call(world, method, path, world.auth).status_code == 200


def test_another_apps_sandbox_is_a_404_exactly_like_a_missing_one(world):
    other_id, other_secret = world.new_app()
    theirs = world.post_json({"image": "base", "cmd": ["true"]}, headers=world.auth_for(other_id, other_secret))
    assert theirs.status_code == 201
    theirs_id = theirs.json_body["id"]
    missing_id = "0123456789abcdef"

    hidden = world.get(f"/api/sandboxes/{theirs_id}")
    missing = world.get(f"/api/sandboxes/{missing_id}")

    assert hidden.status_code == missing.status_code == 404
    assert hidden.json_body["Code"] == missing.json_body["Code"] == "NotFoundError"
    same_message = missing.json_body["Message"].replace(missing_id, theirs_id)
    assert hidden.json_body["Message"] == same_message
    # and its owner still sees it
    assert world.get(f"/api/sandboxes/{theirs_id}", world.auth_for(other_id, other_secret)).status_code == 200


@pytest.mark.parametrize("sandbox_id", ["nope", "x" * 65, "abc-def", "%00"])
def test_a_malformed_id_is_a_404(world, sandbox_id):
    response = world.get(f"/api/sandboxes/{sandbox_id}")

    assert response.status_code == 404
    assert response.json_body["Code"] == "NotFoundError"
