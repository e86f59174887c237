"""The playground page at ``GET /``: served without credentials, whole, offline, relative to itself.

What it does in a browser is tested in one: ``tests/integration/test_playground.py``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from chalicelib import playground


def test_the_page_is_served_without_credentials_as_one_html_document(world: Any) -> None:
    response = world.client.http.get("/")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    html = response.body.decode()
    assert html.startswith("<!doctype html>")
    assert 'id="sign-in"' in html and 'id="run"' in html
    assert "/* playground.js */" not in html and "/* playground.css */" not in html  # both inlined


def test_embed_is_taken_and_any_other_parameter_is_refused_naming_it(world: Any) -> None:
    assert world.client.http.get("/?embed=1").status_code == 200

    bad = world.client.http.get("/?embed=maybe")
    wrong = world.client.http.get("/?embedd=1")

    assert (bad.status_code, bad.json_body["Code"]) == (400, "BadRequestError")
    assert bad.json_body["Message"].startswith("embed:")
    assert wrong.status_code == 400 and wrong.json_body["Message"].startswith("embedd:")


def test_the_page_needs_nothing_from_elsewhere_and_calls_the_api_relative_to_itself(world: Any) -> None:
    html = world.client.http.get("/").body.decode()

    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html), "the page loads something from elsewhere"
    assert "fetch(BASE + path" in html
    # No call names an absolute /api path: behind API Gateway the page is under /<stage>/.
    assert not re.search(r"api\(\s*[\"'`]/", html)
    assert re.search(r"api\(\"api/images\?detail=true\"\)", html)


def test_the_policy_lets_only_the_pages_own_script_and_style_run(world: Any) -> None:
    response = world.client.http.get("/")
    html = response.body.decode()
    policy = response.headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert script and style

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert f"script-src {digest(script.group(1))};" in policy
    assert f"style-src {digest(style.group(1))};" in policy
    assert "default-src 'none'" in policy
    assert playground.page().body == html


def test_a_script_that_says_so_is_challenged_with_a_scheme_browsers_leave_to_it(world: Any) -> None:
    """The page's wrong secret must reach the page: a ``Basic`` challenge would hold its request behind
    the browser's own sign-in dialog (headless Chromium never answers it at all)."""
    wrong = {"Authorization": "Basic " + base64.b64encode(b"nobody:nothing").decode()}
    script = world.get("/api/images", headers={**wrong, "X-Requested-With": "XMLHttpRequest"})
    plain = world.get("/api/images", headers=wrong)

    assert script.status_code == plain.status_code == 401
    assert script.headers["WWW-Authenticate"] == 'xBasic realm="opendevelop"'
    assert plain.headers["WWW-Authenticate"] == 'Basic realm="opendevelop"'
    assert (
        script.json_body
        == plain.json_body
        == {"Code": "UnauthorizedError", "Message": "unknown app id or wrong secret"}
    )
