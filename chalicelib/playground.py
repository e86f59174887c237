"""The playground: one page, served at ``GET /`` by the API itself.

The page is package data in ``chalicelib/playground/`` (``index.html``,
``playground.css`` and the script's parts, ``SCRIPTS``; no build step, nothing
fetched from elsewhere), put together into one HTML document on first use and
kept.  It signs in and calls the API from the browser, with URLs relative to
its own, so it works under ``chalice local`` and behind API Gateway's stage
prefix alike.

The answer carries a Content-Security-Policy that lets only the page's own
script and style run (by their SHA-256), since the page holds an app's secret.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent / "playground"
STYLE_MARK = "/* playground.css */"
SCRIPT_MARK = "/* playground.js */"
# The script's parts, joined in this order inside one function (they share its names).
SCRIPTS = ("core.js", "editor.js", "run.js", "history.js", "main.js")


@dataclass(frozen=True)
class Page:
    body: str
    headers: dict[str, str]


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.lru_cache(maxsize=1)
def page() -> Page:
    """The page, whole (about 35 KB, 11 KB gzipped), with the headers to serve it with."""
    html = (HERE / "index.html").read_text(encoding="utf-8")
    css = (HERE / "playground.css").read_text(encoding="utf-8")
    parts = [(HERE / name).read_text(encoding="utf-8") for name in SCRIPTS]
    js = '"use strict";\n(function () {\n' + "\n".join(parts) + "})();"
    if "</script" in js.lower() or "</style" in css.lower():
        raise AssertionError("playground: the script or style would end its own element")
    style, script = f"\n{css}", f"\n{js}"
    body = html.replace(STYLE_MARK, style, 1).replace(SCRIPT_MARK, script, 1)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_digest(script)}",
            f"style-src {_digest(style)}",
            # The API is this page's origin; a download may be redirected to storage elsewhere.
            "connect-src *",
            "img-src data: blob:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": policy,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return Page(body, headers)
