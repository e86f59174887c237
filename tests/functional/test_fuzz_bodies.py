"""Generated bodies, every shape: the API answers 201, or a 4xx JSON error; never a 5xx (issue #13).

Hypothesis builds JSON requests around the fields the API knows (any JSON
value in any of them, text with lone surrogates, deep nesting), JSON-in-a-
string fields as a form sends them, multipart bodies, and raw bytes.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functional.conftest import multipart

FIELDS = ["image", "cmd", "timeout", "memory_mb", "cpus", "stdin", "env", "network", "files", "bogus"]
# Any text, lone surrogates included (JSON carries them as \ud800 escapes).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
DEEP = st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n)
FILE = st.fixed_dictionaries(
    {"name": TEXT | st.just("test.py")},
    optional={"content": TEXT | JSON_VALUES, "encoding": st.sampled_from(["utf-8", "base64", "x"]) | JSON_VALUES},
)
GOOD = {"image": "base", "cmd": ["true"]}

json_bodies = st.dictionaries(
    st.sampled_from(FIELDS),
    JSON_VALUES | DEEP | st.just("base") | st.lists(FILE, max_size=3),
    max_size=6,
).map(lambda d: {**GOOD, **d})
form_fields = st.lists(
    st.tuples(st.sampled_from(FIELDS[:-2]), TEXT | DEEP | JSON_VALUES.map(json.dumps)),
    max_size=5,
)
form_files = st.lists(
    st.tuples(TEXT.filter(lambda n: '"' not in n and "\r" not in n and "\n" not in n), st.binary(max_size=20)),
    max_size=3,
)


def assert_harmless(response) -> None:
    assert response.status_code == 201 or 400 <= response.status_code < 500, (response.status_code, response.body)
    if response.status_code != 201:
        assert set(response.json_body) == {"Code", "Message"}


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=json_bodies)
def test_generated_json_bodies_are_201_or_a_4xx(world, body):
    text = json.dumps(body)  # lone surrogates become \\ud800 escapes, as a hostile client sends them
    assert_harmless(world.post(text.encode(), "application/json"))


@FUZZ
@given(fields=form_fields, files=form_files)
def test_generated_multipart_bodies_are_201_or_a_4xx(world, fields, files):
    encoded = [(name, value.encode("utf-8", "surrogatepass")) for name, value in fields]
    headers, body = multipart(encoded, [(n.encode("utf-8", "surrogatepass").decode("latin-1"), c) for n, c in files])
    assert_harmless(world.post(body, headers["Content-Type"]))


@FUZZ
@given(
    body=st.binary(max_size=200),
    kind=st.sampled_from(
        ["application/json", "multipart/form-data; boundary=XX", "application/x-www-form-urlencoded", "text/plain"]
    ),
)
def test_generated_raw_bytes_are_a_4xx(world, body, kind):
    assert_harmless(world.post(body, kind))


@FUZZ
@given(cursor=TEXT | DEEP | st.binary(max_size=64).map(lambda b: b.hex()), limit=TEXT)
def test_generated_query_parameters_are_a_4xx_or_a_page(world, cursor, limit):
    from urllib.parse import urlencode

    query = urlencode({"cursor": cursor, "limit": limit}, encoding="utf-8", errors="surrogatepass")
    response = world.get(f"/api/sandboxes?{query}")
    assert response.status_code in (200, 400), (response.status_code, response.body)
