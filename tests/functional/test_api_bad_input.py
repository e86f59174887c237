"""Bad input to POST /api/sandboxes: a 4xx JSON error naming the field, and nothing stored or queued."""

from __future__ import annotations

import pytest

from chalicelib import admin

OK_FIELDS = [("image", "base"), ("cmd", '["python test.py"]')]
OK_FILE = [("test.py", b"print(1)\n")]


def form(*fields, files=OK_FILE):
    """A multipart request: the given fields (replacing the good ones of the same name) and files."""
    names = {name for name, _ in fields}
    return lambda world: world.post_form([f for f in OK_FIELDS if f[0] not in names] + list(fields), files)


def form_without(name):
    return lambda world: world.post_form([f for f in OK_FIELDS if f[0] != name], OK_FILE)


def as_json(**changes):
    """A JSON request: a good one with some keys changed (``None`` removes a key)."""
    data = {"image": "base", "cmd": ["python test.py"], "files": [{"name": "test.py", "content": "print(1)\n"}]}
    data.update(changes)
    return lambda world: world.post_json({k: v for k, v in data.items() if v is not None})


def raw(body: bytes, content_type: str | None):
    return lambda world: world.post(body, content_type)


def json_file(**file):
    return as_json(files=[{"name": "test.py", "content": "print(1)\n", **file}])


CASES = [
    # The body as a whole
    ("malformed-multipart", raw(b"this is not multipart", "multipart/form-data; boundary=XX"), 400, "body"),
    (
        "multipart-cut-short",
        raw(b'--XX\r\nContent-Disposition: form-data; name="image"\r\n\r\nbase', "multipart/form-data; boundary=XX"),
        400,
        "body",
    ),
    ("multipart-without-boundary", raw(b"--XX\r\n", "multipart/form-data"), 400, "Content-Type"),
    ("empty-multipart-body", raw(b"", "multipart/form-data; boundary=XX"), 400, "body"),
    ("empty-json-body", raw(b"", "application/json"), 400, "body"),
    ("text-plain", raw(b"image=base", "text/plain"), 415, "Content-Type"),
    ("no-content-type", raw(b'{"image": "base", "cmd": ["true"]}', None), 415, "Content-Type"),
    ("json-not-an-object", raw(b'["base", "python test.py"]', "application/json"), 400, "body"),
    ("malformed-json", raw(b'{"image": "base",', "application/json"), 400, "body"),
    ("json-not-utf8", raw(b'{"image": "base", "cmd": ["\xff"]}', "application/json"), 400, "body"),
    ("unknown-form-field", form(("timout", "10")), 400, "timout"),
    ("unknown-json-field", as_json(timout=10), 400, "timout"),
    ("field-given-twice", lambda w: w.post_form([*OK_FIELDS, ("image", "base")], OK_FILE), 400, "image"),
    ("form-field-not-utf8", form(("cmd", b'["python \xff.py"]')), 400, "cmd"),
    # image
    ("no-image", form_without("image"), 400, "image"),
    ("unknown-image", form(("image", "nope")), 400, "image"),
    ("disabled-image", form(("image", "retired")), 400, "image"),
    ("json-image-not-a-string", as_json(image=["base"]), 400, "image"),
    # cmd
    ("no-cmd", form_without("cmd"), 400, "cmd"),
    ("cmd-empty", form(("cmd", "")), 400, "cmd"),
    ("cmd-blank", form(("cmd", "   ")), 400, "cmd"),
    ("cmd-empty-list", form(("cmd", "[]")), 400, "cmd"),
    ("cmd-not-json", form(("cmd", '["python test.py"')), 400, "cmd"),
    ("cmd-list-with-a-number", form(("cmd", '["python test.py", 3]')), 400, "cmd"),
    ("cmd-list-of-lists", form(("cmd", '[["python", "test.py"]]')), 400, "cmd"),
    ("cmd-list-with-empty-line", form(("cmd", '["python test.py", ""]')), 400, "cmd"),
    ("json-cmd-empty-list", as_json(cmd=[]), 400, "cmd"),
    ("json-cmd-empty-string", as_json(cmd=""), 400, "cmd"),
    ("json-cmd-non-string-item", as_json(cmd=["ls", None]), 400, "cmd"),
    ("json-cmd-an-object", as_json(cmd={"run": "ls"}), 400, "cmd"),
    ("json-cmd-with-nul", as_json(cmd=["echo \x00"]), 400, "cmd"),
    # timeout
    ("timeout-not-a-number", form(("timeout", "ten")), 400, "timeout"),
    ("timeout-empty", form(("timeout", "")), 400, "timeout"),
    ("timeout-negative", form(("timeout", "-1")), 400, "timeout"),
    ("timeout-zero", form(("timeout", "0")), 400, "timeout"),
    ("timeout-nan", form(("timeout", "nan")), 400, "timeout"),
    ("timeout-infinite", form(("timeout", "inf")), 400, "timeout"),
    ("timeout-above-ceiling", form(("timeout", "61")), 400, "timeout"),
    ("json-timeout-boolean", as_json(timeout=True), 400, "timeout"),
    ("json-timeout-negative", as_json(timeout=-5), 400, "timeout"),
    ("json-timeout-zero", as_json(timeout=0), 400, "timeout"),
    ("json-timeout-above-ceiling", as_json(timeout=3600), 400, "timeout"),
    ("json-timeout-a-list", as_json(timeout=[10]), 400, "timeout"),
    ("json-timeout-not-a-number", as_json(timeout="10s"), 400, "timeout"),
    ("memory-above-ceiling", form(("memory_mb", "999999")), 400, "memory_mb"),
    ("memory-fractional", form(("memory_mb", "256.5")), 400, "memory_mb"),
    # files
    ("file-part-without-a-name", form(files=[("", b"print(1)\n")]), 400, "files"),
    ("file-name-with-dotdot", form(files=[("../test.py", b"x")]), 400, "files"),
    ("file-name-dotdot-inside", form(files=[("a/../../test.py", b"x")]), 400, "files"),
    ("file-name-absolute", form(files=[("/etc/passwd", b"x")]), 400, "files"),
    ("file-name-with-backslash", form(files=[("lib\\util.py", b"x")]), 400, "files"),
    ("file-name-a-folder", form(files=[("lib/", b"x")]), 400, "files"),
    ("duplicate-file-names", form(files=[("test.py", b"1"), ("test.py", b"2")]), 400, "files"),
    ("duplicate-after-normalising", form(files=[("a/test.py", b"1"), ("a//./test.py", b"2")]), 400, "files"),
    ("file-and-folder-clash", form(files=[("lib", b"1"), ("lib/util.py", b"2")]), 400, "files"),
    ("json-files-not-a-list", as_json(files={"name": "test.py"}), 400, "files"),
    ("json-file-not-an-object", as_json(files=["test.py"]), 400, "files[0]"),
    ("json-file-without-name", as_json(files=[{"content": "x"}]), 400, "files[0].name"),
    ("json-file-name-dotdot", json_file(name="../x.py"), 400, "files[0].name"),
    ("json-file-name-absolute", json_file(name="/tmp/x.py"), 400, "files[0].name"),
    ("json-file-bad-base64", json_file(content="not base64!", encoding="base64"), 400, "files[0].content"),
    ("json-file-unknown-encoding", json_file(encoding="latin-1"), 400, "files[0].encoding"),
    ("json-file-content-not-a-string", json_file(content=123), 400, "files[0].content"),
    ("json-file-lone-surrogate", json_file(content="\ud800"), 400, "files[0].content"),
    ("json-file-unknown-key", json_file(mode="0755"), 400, "files[0]"),
    # other fields
    ("network-not-allowed-for-the-app", as_json(network=True), 400, "network"),
    ("env-not-an-object", as_json(env=["A=1"]), 400, "env"),
    ("env-bad-name", as_json(env={"1A": "x"}), 400, "env"),
    ("env-name-with-a-newline", as_json(env={"A\n": "x"}), 400, "env"),
    # Shapes that once answered 500 (issue #13)
    ("json-nested-3000-deep", raw(b"[" * 3000 + b"]" * 3000, "application/json"), 400, "body"),
    ("json-object-nested-deep", raw(b'{"a":' * 3000 + b"1" + b"}" * 3000, "application/json"), 400, "body"),
    ("cmd-nested-3000-deep", form(("cmd", "[" * 3000 + "]" * 3000)), 400, "cmd"),
    ("json-cmd-nested-deep-string", as_json(cmd="[" * 3000 + "]" * 3000), 400, "cmd"),
    ("env-nested-3000-deep", form(("env", "[" * 3000 + "]" * 3000)), 400, "env"),
    ("json-env-nested-deep-string", as_json(env='{"A":' * 3000 + "1" + "}" * 3000), 400, "env"),
    ("json-file-name-lone-surrogate", json_file(name="\ud800"), 400, "files[0].name"),
    ("json-file-name-surrogate-inside", json_file(name="lib/a\udfff.py"), 400, "files[0].name"),
    ("json-env-value-lone-surrogate", as_json(env={"A": "\ud800"}), 400, "env"),
    ("form-env-value-lone-surrogate", form(("env", '{"A": "\\ud800"}')), 400, "env"),
    ("json-cmd-lone-surrogate", as_json(cmd=["echo \ud800"]), 400, "cmd"),
    ("form-cmd-escaped-lone-surrogate", form(("cmd", '["echo \\udc00"]')), 400, "cmd"),
    ("json-stdin-lone-surrogate", as_json(stdin="\ud800"), 400, "stdin"),
    ("json-image-lone-surrogate", as_json(image="\ud800"), 400, "image"),
    ("json-unknown-key-lone-surrogate", as_json(**{"\ud800": 1}), 400, "body"),
    ("json-file-base64-not-ascii", json_file(content="é", encoding="base64"), 400, "files[0].content"),
    (
        "too-many-multipart-parts",
        raw(b"--XX\r\n\r\n\r\n" * 5000 + b"--XX--\r\n", "multipart/form-data; boundary=XX"),
        400,
        "body",
    ),
]


@pytest.mark.parametrize(("send", "status", "field"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(world, send, status, field):
    admin.image_create("retired", "opendevelop/retired:1", enabled=False)

    response = send(world)

    assert response.status_code == status, response.body
    error = response.json_body
    assert set(error) == {"Code", "Message"}
    assert error["Message"].startswith(f"{field}: "), error["Message"]
    world.assert_nothing_stored()


def test_a_body_over_the_size_limit_is_a_413(world):
    world.monkeypatch.setenv("OPENDEVELOP_MAX_UPLOAD_BYTES", "2048")
    world.reload_settings()

    small = world.post_form(OK_FIELDS, [("test.py", b"x" * 1000)])
    large = world.post_form(OK_FIELDS, [("test.py", b"x" * 3000)])

    assert small.status_code == 201
    assert large.status_code == 413
    assert large.json_body["Code"] == "RequestEntityTooLargeError"
    assert large.json_body["Message"].startswith("body: ")
    assert [row.sandbox_id for row in world.sandbox_rows()] == [small.json_body["id"]]
    assert world.stored_keys() == []  # the accepted one's files are small enough for its row
    assert world.queued_messages() == [{"sandbox_id": small.json_body["id"]}]


def test_a_request_above_the_apps_own_ceiling_is_refused(world):
    admin.app_set_limits(world.app_id, {"timeout": 5}, world.settings)

    over = world.post_form([*OK_FIELDS, ("timeout", "6")], OK_FILE)

    assert over.status_code == 400
    assert over.json_body["Message"] == "timeout: 6 is above the ceiling of 5"
    world.assert_nothing_stored()


def test_without_any_server_the_api_answers_503_and_stores_nothing(world):
    admin.server_delete(world.settings, "local")

    response = world.post_form(OK_FIELDS, OK_FILE)

    assert response.status_code == 503
    assert response.json_body["Code"] == "ServiceUnavailableError"
    assert world.sandbox_rows() == []
    assert world.stored_keys() == []


def test_with_every_server_drained_the_api_answers_503(world):
    admin.server_set_state("local", "draining")

    response = world.post_json({"image": "base", "cmd": ["true"]})

    assert response.status_code == 503
    world.assert_nothing_stored()
