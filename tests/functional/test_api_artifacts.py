"""Artifacts: what the dispatcher stores of the files a program left in out/, what the JSON lists, the downloads.

A fake engine feeds the real collector (``dispatcher.artifacts``) a tar as the
container's prologue would write it; the API is Chalice's test client over moto.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from chalicelib import artifacts
from chalicelib.models import Sandbox
from dispatcher.artifacts import Collector
from dispatcher.engine import RunResult, RunSpec
from tests.functional.test_dispatcher import FakeEngine
from tests.functional.test_output import run_one

BYTES = {"Accept": "*/*"}


def leaves(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> FakeEngine:
    """An engine whose program leaves these files (and symlinks) in out/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"out/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(f"out/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)

    def run(spec: RunSpec) -> RunResult:
        assert spec.output_dir is not None
        for stream in ("stdout", "stderr", "logs"):
            (spec.output_dir / stream).write_bytes(b"")
        collector = Collector(spec.output_dir, spec.artifacts_bytes)
        collector.feed(buf.getvalue())
        collector.finish()
        return RunResult(
            0,
            b"",
            b"",
            b"",
            False,
            False,
            False,
            0.1,
            output_dir=spec.output_dir,
            artifacts_count=collector.count,
            artifacts_bytes=collector.bytes,
            artifacts_truncated=collector.truncated,
            artifacts_skipped=collector.skipped,
        )

    return FakeEngine(run)


def get(world: Any, path: str, **headers: str) -> Any:
    return world.get(path, headers={**world.auth, **BYTES, **headers})


def test_the_json_lists_the_files_and_each_downloads_exactly(world):
    sandbox_id = run_one(world, leaves({"a/b.txt": b"nested\n", "top.bin": b"\x00\xff"}, {"pw": "/etc/passwd"}))

    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    assert body["artifacts"] == [{"name": "a/b.txt", "size": 7}, {"name": "top.bin", "size": 2}]
    assert (body["artifacts_count"], body["artifacts_bytes"], body["artifacts_skipped"]) == (2, 9, 1)
    assert body["artifacts_truncated"] is False
    assert body["limits"]["artifacts_kb"] == 1024

    nested = get(world, f"/api/sandboxes/{sandbox_id}/artifacts/a/b.txt")
    assert (nested.status_code, nested.body) == (200, b"nested\n")
    assert nested.headers["Content-Type"] == "application/octet-stream"
    assert get(world, f"/api/sandboxes/{sandbox_id}/artifacts/top.bin").body == b"\x00\xff"
    ranged = get(world, f"/api/sandboxes/{sandbox_id}/artifacts/a/b.txt", Range="bytes=1-2")
    assert (ranged.status_code, ranged.body) == (206, b"es")
    assert get(world, f"/api/sandboxes/{sandbox_id}/artifacts/pw").status_code == 404  # a symlink is no artifact
    assert get(world, f"/api/sandboxes/{sandbox_id}/artifacts/a").status_code == 404

    whole = get(world, f"/api/sandboxes/{sandbox_id}/artifacts")
    assert whole.status_code == 307
    row = Sandbox.get(sandbox_id)
    assert row.artifacts_key.startswith(f"sandboxes/{sandbox_id}/artifacts/{row.token}/")
    with tarfile.open(fileobj=io.BytesIO(world.stored_object(row.artifacts_key + artifacts.TAR))) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar} == {"a/b.txt": b"nested\n", "top.bin": b"\x00\xff"}  # type: ignore[union-attr]


def test_no_artifacts_is_an_empty_tar_and_nothing_stored(world):
    sandbox_id = run_one(world, leaves({}))

    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    assert (body["artifacts"], body["artifacts_count"]) == ([], 0)
    whole = get(world, f"/api/sandboxes/{sandbox_id}/artifacts")
    assert (whole.status_code, whole.headers["Content-Type"]) == (200, "application/x-tar")
    assert tarfile.open(fileobj=io.BytesIO(whole.body)).getmembers() == []
    assert [k for k in world.stored_keys() if "/artifacts/" in k] == []


def test_many_files_list_a_bounded_number_and_each_is_still_found(world):
    files = {f"d/f{i:04d}": str(i).encode() for i in range(250)}
    sandbox_id = run_one(world, leaves(files))

    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    assert (len(body["artifacts"]), body["artifacts_count"]) == (artifacts.LISTED, 250)
    page = world.get("/api/sandboxes").json_body["sandboxes"][0]
    assert len(page["artifacts"]) == artifacts.LIST_PAGE_LISTED
    assert len(Sandbox.get(sandbox_id).artifacts) == artifacts.LISTED  # the row stays small
    # Past the row's entries: found through the stored index.
    assert get(world, f"/api/sandboxes/{sandbox_id}/artifacts/d/f0249").body == b"249"
    assert get(world, f"/api/sandboxes/{sandbox_id}/artifacts/d/f0250").status_code == 404


def test_a_file_larger_than_the_api_answers_is_a_redirect_to_its_own_object(world):
    big = bytes(range(256)) * (artifacts.DIRECT_BYTES // 256 + 10)
    sandbox_id = run_one_with(world, leaves({"big.bin": big}), artifacts_kb=2048)

    answer = get(world, f"/api/sandboxes/{sandbox_id}/artifacts/big.bin")
    assert answer.status_code == 307
    row = Sandbox.get(sandbox_id)
    assert world.stored_object(artifacts.file_key(row.artifacts_key, 0)) == big


def test_over_the_cap_the_rest_is_dropped_and_flagged(world):
    sandbox_id = run_one_with(world, leaves({"a": b"x" * 600, "b": b"y" * 600}), artifacts_kb=1)

    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    assert (body["artifacts"], body["artifacts_truncated"]) == ([{"name": "a", "size": 600}], True)


def test_another_apps_artifacts_are_404_and_a_running_sandbox_has_none_yet(world):
    sandbox_id = run_one(world, leaves({"secret": b"s"}))
    other = world.auth_for(*world.new_app())

    for path in ("artifacts", "artifacts/secret"):
        assert world.get(f"/api/sandboxes/{sandbox_id}/{path}", headers={**other, **BYTES}).status_code == 404
        assert get(world, f"/api/sandboxes/{'0' * 16}/{path}").status_code == 404
    queued = world.post_json({"image": "base", "cmd": ["run"]}).json_body["id"]
    assert get(world, f"/api/sandboxes/{queued}/artifacts").status_code == 409


@pytest.mark.parametrize("raw", ["0", "-1", "10241", "x"])
def test_artifacts_kb_is_checked_like_the_other_limits(world, raw):
    answer = world.post_json({"image": "base", "cmd": ["run"], "artifacts_kb": raw})
    assert answer.status_code == 400
    assert "artifacts_kb" in answer.json_body["Message"]


def run_one_with(world: Any, engine: FakeEngine, **fields: Any) -> str:
    """``run_one``, for a sandbox created with ``fields``."""
    original = world.post_json

    def post_json(data: Any, headers: Any = None) -> Any:
        return original({**data, **fields}, headers)

    world.post_json = post_json
    try:
        return run_one(world, engine)
    finally:
        world.post_json = original
