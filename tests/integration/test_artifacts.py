"""Artifacts on the real stack: the files a program leaves in out/ come back; nothing the program chose is followed."""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from pathlib import Path
from typing import Any

import opendevelop
import pytest

from .helpers import Client, RunningStack
from .test_client import od

pytestmark = pytest.mark.timeout(240)


def done(client: Client, cmd: list[str], **fields: str) -> dict[str, Any]:
    sandbox = client.wait_done(client.submit(cmd, **fields), timeout=120)
    assert sandbox["status"] == "terminated", sandbox
    return sandbox


def fetch(client: Client, sandbox_id: str, path: str = "") -> Any:
    """An artifacts download, following the redirect to storage as any HTTP client does."""
    return client.get(f"/api/sandboxes/{sandbox_id}/artifacts{path}")


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_nested_files_come_back_and_a_symlink_to_etc_passwd_is_not_followed(client: Client) -> None:
    program = (
        "mkdir -p out/a/b && printf deep > out/a/b/c.txt && echo top > out/top.txt"
        " && ln -s /etc/passwd out/passwd && ln -s /etc out/etc && mkfifo out/fifo"
        " && ln out/top.txt out/hardlink && echo sp > 'out/a/my file.txt'"
    )
    sandbox = done(client, [program])

    # A file of two names (a hard link) comes back once, under the name tar met first.
    listed = {a["name"]: a["size"] for a in sandbox["artifacts"]}
    top = "top.txt" if "top.txt" in listed else "hardlink"
    assert listed == {"a/b/c.txt": 4, "a/my file.txt": 3, top: 4}
    assert (sandbox["artifacts_count"], sandbox["artifacts_truncated"]) == (3, False)
    assert sandbox["artifacts_skipped"] == 4  # the two symlinks, the fifo, the second name of the hard link
    one = fetch(client, sandbox["id"], "/a/b/c.txt")
    assert (one.status_code, one.content, one.headers["Content-Type"]) == (200, b"deep", "application/octet-stream")
    assert fetch(client, sandbox["id"], "/a/my%20file.txt").content == b"sp\n"  # names are percent-encoded
    for name in ("passwd", "etc/passwd", "fifo"):
        assert fetch(client, sandbox["id"], f"/{name}").status_code == 404, name

    whole = fetch(client, sandbox["id"])
    assert whole.status_code == 200
    assert members(whole.content) == {"a/b/c.txt": b"deep", "a/my file.txt": b"sp\n", top: b"top\n"}
    assert b"root:x:0:0" not in whole.content


def test_out_itself_a_symlink_gives_nothing(client: Client) -> None:
    sandbox = done(client, ["ln -s /etc out"])

    assert (sandbox["artifacts"], sandbox["artifacts_count"]) == ([], 0)
    assert members(fetch(client, sandbox["id"]).content) == {}


def test_the_program_keeps_its_exit_status_and_output_and_what_it_left_running_is_stopped(client: Client) -> None:
    started = time.monotonic()
    sandbox = done(client, ["(sleep 20; echo late) & mkdir out && echo x > out/x && echo out; exit 3"], timeout="30")

    assert (sandbox["return_code"], sandbox["stdout"], sandbox["timed_out"]) == (3, "out\n", False)
    assert sandbox["artifacts"] == [{"name": "x", "size": 2}]
    assert time.monotonic() - started < 15  # the background sleep did not hold the run


def test_a_file_over_the_cap_is_dropped_and_flagged(client: Client) -> None:
    program = "mkdir out && head -c 300 /dev/urandom > out/small && head -c 5000 /dev/urandom > out/big"
    sandbox = done(client, [program], artifacts_kb="1")

    assert sandbox["limits"]["artifacts_kb"] == 1
    assert sandbox["artifacts_truncated"] is True
    assert sandbox["artifacts"] == [{"name": "small", "size": 300}]
    assert fetch(client, sandbox["id"], "/big").status_code == 404


def test_ten_thousand_tiny_files(client: Client) -> None:
    program = (
        'python3 -c \'import os\nos.makedirs("out/many")\n'
        'for i in range(10000): open(f"out/many/f{i}", "w").write(str(i))\''
    )
    started = time.monotonic()
    sandbox = done(client, [program], timeout="60")
    took = time.monotonic() - started

    assert (sandbox["artifacts_count"], sandbox["artifacts_truncated"]) == (10000, False)
    assert len(sandbox["artifacts"]) == 100  # the JSON lists a bounded number
    assert len(client.get(f"/api/sandboxes/{sandbox['id']}").content) < 64 * 1024
    assert fetch(client, sandbox["id"], "/many/f9999").content == b"9999"  # found past the listed ones
    files = members(fetch(client, sandbox["id"]).content)
    assert len(files) == 10000 and files["many/f1234"] == b"1234"
    print(f"10,000 tiny files: run and collected in {took:.1f} s")


def test_another_apps_artifacts_are_404(client: Client, stack: RunningStack) -> None:
    from chalicelib import admin

    app, secret = admin.app_create(f"other-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings())
    other = Client(stack.stack.api_url, (app.app_id, secret))
    sandbox = done(client, ["mkdir out && echo secret > out/s"])

    for path in ("", "/s"):
        assert fetch(other, sandbox["id"], path).status_code == 404
    assert fetch(client, sandbox["id"], "/s").content == b"secret\n"


def test_the_client_and_the_command_line_download_them(stack: RunningStack, tmp_path: Path) -> None:
    demo = stack.demo
    env = {
        "OPENDEVELOP_URL": stack.stack.api_url,
        "OPENDEVELOP_APP_ID": demo["app_id"],
        "OPENDEVELOP_SECRET": demo["secret"],
    }
    program = "mkdir -p out/d && echo hi > out/d/f.txt && printf '\\001\\002' > out/bin"
    with opendevelop.Client(env["OPENDEVELOP_URL"], demo["app_id"], demo["secret"]) as client:
        sandbox = client.run(program)
        written = sandbox.download(tmp_path / "lib")
    assert sorted(p.relative_to(tmp_path / "lib").as_posix() for p in written) == ["bin", "d/f.txt"]
    assert (tmp_path / "lib" / "d" / "f.txt").read_text() == "hi\n"
    assert sorted((a.name, a.size) for a in sandbox.artifacts) == [("bin", 2), ("d/f.txt", 3)]

    ran = od("run", "--download", str(tmp_path / "cli"), "--cmd", program, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "cli" / "d" / "f.txt").read_text() == "hi\n"
    assert (tmp_path / "cli" / "bin").read_bytes() == b"\x01\x02"
    assert "2 artifacts written" in ran.stderr
