"""POST /api/sandboxes: what a client sends, what it gets back, and what the platform stores and queues."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest

from chalicelib.models import Sandbox

# The request the README's curl example sends, byte for byte:
#   curl -u $APP -F image=base -F 'cmd=["python test.py"]' -F timeout=10 -F file=@test.py .../api/sandboxes
BOUNDARY = "------------------------d74496d66958873e"
TEST_PY = b'print("hello opendevelop!")\n'
DOCUMENTED_BODY = (
    b"--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="image"\r\n'
    b"\r\n"
    b"base\r\n"
    b"--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="cmd"\r\n'
    b"\r\n"
    b'["python test.py"]\r\n'
    b"--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="timeout"\r\n'
    b"\r\n"
    b"10\r\n"
    b"--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="file"; filename="test.py"\r\n'
    b"Content-Type: text/x-python\r\n"
    b"\r\n" + TEST_PY + b"\r\n"
    b"--------------------------d74496d66958873e--\r\n"
)
DOCUMENTED_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_the_documented_multipart_request_queues_a_sandbox(world):
    response = world.post(DOCUMENTED_BODY, DOCUMENTED_TYPE)

    assert response.status_code == 201
    body = response.json_body
    sandbox_id = body["id"]
    assert len(sandbox_id) == 16 and int(sandbox_id, 16) >= 0  # 64 random bits, hex
    assert body["status"] == "queued"
    assert body["image"] == "base"
    assert body["cmd"] == '["python test.py"]'  # a JSON-encoded string, as the original showed it
    assert body["timeout"] == 10
    assert body["return_code"] is None and body["logs"] is None
    assert body["files"] == 1
    assert body["server"] == "local"
    assert response.headers["Location"] == f"/api/sandboxes/{sandbox_id}"

    row = Sandbox.get(sandbox_id)
    assert (row.app_id, row.status, list(row.cmd), row.server) == (world.app_id, "queued", ["python test.py"], "local")
    assert row.files_key is None and world.stored_keys() == []  # small: the files travel in the row
    assert untar(row.files_inline) == {"test.py": TEST_PY}
    assert world.queued_messages() == [{"sandbox_id": sandbox_id}]


def test_a_client_that_accepts_text_plain_gets_the_bare_id(world):
    response = world.post(DOCUMENTED_BODY, DOCUMENTED_TYPE, headers={"Accept": "text/plain"})

    assert response.status_code == 201
    assert response.headers["Content-Type"] == "text/plain"
    sandbox_id = response.body.decode()
    assert response.headers["Location"] == f"/api/sandboxes/{sandbox_id}"
    assert world.get(f"/api/sandboxes/{sandbox_id}").json_body["status"] == "queued"
    assert world.queued_messages() == [{"sandbox_id": sandbox_id}]


@pytest.mark.parametrize("timeout", [10, "10", 2.5, " 30 "])
def test_json_timeout_may_be_a_number_or_a_string(world, timeout):
    response = world.post_json(
        {
            "image": "base",
            "cmd": ["python test.py"],
            "timeout": timeout,
            "files": [{"name": "test.py", "content": TEST_PY.decode()}],
        }
    )

    assert response.status_code == 201, response.json_body
    assert response.json_body["timeout"] == float(timeout)
    assert Sandbox.get(response.json_body["id"]).limits["timeout"] == float(timeout)


def test_without_a_timeout_the_default_applies(world):
    response = world.post_json({"image": "base", "cmd": ["true"]})

    assert response.status_code == 201
    assert response.json_body["timeout"] == world.settings.limit("timeout").default


def test_json_files_may_be_text_or_base64_and_live_in_sub_folders(world):
    binary = bytes(range(256))
    response = world.post_json(
        {
            "image": "base",
            "cmd": ["python main.py"],
            "files": [
                {"name": "main.py", "content": "from lib import util\n", "encoding": "utf-8"},
                {"name": "lib/util.py", "content": "ANSWER = 'é'\n"},  # utf-8 is the default
                {"name": "data/blob.bin", "content": base64.b64encode(binary).decode(), "encoding": "base64"},
            ],
        }
    )

    assert response.status_code == 201, response.json_body
    row = Sandbox.get(response.json_body["id"])
    assert untar(world.stored_payload(row)) == {
        "main.py": b"from lib import util\n",
        "lib/util.py": "ANSWER = 'é'\n".encode(),
        "data/blob.bin": binary,
    }


def test_a_sandbox_may_have_no_files(world):
    response = world.post_json({"image": "base", "cmd": "echo hello"})

    assert response.status_code == 201
    assert response.json_body["files"] == 0
    row = Sandbox.get(response.json_body["id"])
    assert row.files_key is None and row.files_inline is None
    assert world.stored_keys() == []
    assert world.queued_messages() == [{"sandbox_id": response.json_body["id"]}]


def test_a_multipart_request_may_have_no_files(world):
    response = world.post_form([("image", "base"), ("cmd", '["uname -a"]')])

    assert response.status_code == 201
    assert response.json_body["cmd"] == '["uname -a"]'
    assert world.stored_keys() == []


@pytest.mark.parametrize(
    ("cmd", "stored"),
    [
        (["python test.py"], ["python test.py"]),
        (["pip list", "python test.py"], ["pip list", "python test.py"]),
        ("python test.py", ["python test.py"]),  # one command line
        ('["python test.py"]', ["python test.py"]),  # a JSON list inside a string, as multipart sends it
    ],
)
def test_json_cmd_is_a_list_of_command_lines_or_one_line(world, cmd, stored):
    response = world.post_json({"image": "base", "cmd": cmd})

    assert response.status_code == 201
    assert json.loads(response.json_body["cmd"]) == stored
    assert list(Sandbox.get(response.json_body["id"]).cmd) == stored


def test_multipart_cmd_may_be_one_command_line(world):
    response = world.post_form([("image", "base"), ("cmd", "python test.py")], [("test.py", TEST_PY)])

    assert response.status_code == 201
    assert response.json_body["cmd"] == '["python test.py"]'


def test_files_too_large_for_the_row_go_to_s3_and_small_ones_stay_in_it(world):
    big = bytes(range(256)) * 80  # 20 KiB: over the row's 16 KiB
    small = world.post_form([("image", "base"), ("cmd", "python a.py")], [("a.py", b"print(1)\n")])
    large = world.post_form([("image", "base"), ("cmd", "python a.py")], [("a.py", b"print(1)\n"), ("blob", big)])

    assert small.status_code == large.status_code == 201
    small_row, large_row = Sandbox.get(small.json_body["id"]), Sandbox.get(large.json_body["id"])
    assert small_row.files_key is None and len(small_row.files_inline) == small_row.files_bytes
    assert small_row.files_bytes == 2048  # header, one block of content, the end marker: no 10 KiB padding
    assert large_row.files_inline is None
    assert world.stored_keys() == [large_row.files_key] == [f"sandboxes/{large_row.sandbox_id}/input.tar"]
    assert untar(world.stored_payload(large_row)) == {"a.py": b"print(1)\n", "blob": big}


def test_multipart_file_names_may_hold_sub_folders(world):
    response = world.post_form(
        [("image", "base"), ("cmd", "python app/main.py")],
        [("app/main.py", b"import helper\n"), ("app/helper.py", b"")],
    )

    assert response.status_code == 201
    row = Sandbox.get(response.json_body["id"])
    assert untar(world.stored_payload(row)) == {"app/main.py": b"import helper\n", "app/helper.py": b""}


def test_each_sandbox_goes_onto_the_queue_once(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "3")  # the server's 2 slots would park the third
    world.reload_settings()
    ids = [world.post_json({"image": "base", "cmd": ["true"]}).json_body["id"] for _ in range(3)]

    assert sorted(m["sandbox_id"] for m in world.queued_messages()) == sorted(ids)
    assert len(set(ids)) == 3
