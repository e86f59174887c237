"""Output as bytes: what the dispatcher stores per stream, what the JSON shows, and the downloads.

The dispatcher runs a fake engine that writes the output files a real run
would (``RunSpec.output_dir``); the API is Chalice's test client over moto.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from chalicelib import aws, lifecycle, output
from chalicelib.models import DockerServer, Sandbox
from dispatcher import live as live_module
from dispatcher import result
from dispatcher.engine import RunResult, RunSpec
from dispatcher.live import Live, forget
from dispatcher.settings import DispatcherSettings
from dispatcher.worker import Dispatcher
from tests.functional.test_dispatcher import FakeClock, FakeEngine, receive


def writes(stdout: bytes, stderr: bytes = b"", truncated: bool = False) -> FakeEngine:
    """An engine whose program writes these bytes, into the run's folder as the real runner does."""

    def run(spec: RunSpec) -> RunResult:
        assert spec.output_dir is not None
        (spec.output_dir / "stdout").write_bytes(stdout)
        (spec.output_dir / "stderr").write_bytes(stderr)
        (spec.output_dir / "logs").write_bytes(stdout + stderr)
        return RunResult(0, b"", b"", b"", False, False, truncated, 0.1, output_dir=spec.output_dir)

    return FakeEngine(run)


def _run(sandbox_id: str) -> str:
    """The token of the run whose output the row lists (its objects' keys hold it)."""
    token = Sandbox.get(sandbox_id).output_token
    assert token, "no output_token on a row listing stored output"
    return str(token)


def run_one(world: Any, engine: FakeEngine) -> str:
    settings = DispatcherSettings(server="local", slots=1, retry_budget_s=5, backoff_s=0)
    dispatcher = Dispatcher(world.settings, settings, DockerServer.get("local"), engine, clock=FakeClock())
    sandbox_id = world.post_json({"image": "base", "cmd": ["run"]}).json_body["id"]
    dispatcher.handle(receive(dispatcher))
    assert not any(dispatcher.spool.kept())  # recorded, and the spool emptied
    return sandbox_id


def test_small_text_output_stays_in_the_row_and_downloads_exactly(world):
    sandbox_id = run_one(world, writes(b"hello\n", b"oops\n"))

    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    assert (body["stdout"], body["stderr"], body["logs"]) == ("hello\n", "oops\n", "hello\noops\n")
    assert (body["stdout_bytes"], body["stderr_bytes"], body["inline_truncated"]) == (6, 5, False)
    assert Sandbox.get(sandbox_id).output_objects is None
    assert world.stored_keys() == []  # nothing went to S3

    # API Gateway (and Chalice) answer bytes only to a request that accepts them.
    stdout = world.get(f"/api/sandboxes/{sandbox_id}/stdout", headers={**world.auth, "Accept": "*/*"})
    assert stdout.status_code == 200, stdout.body
    assert stdout.headers["Content-Type"] == "application/octet-stream"
    assert stdout.body == b"hello\n"
    ranged = world.get(
        f"/api/sandboxes/{sandbox_id}/stderr", headers={**world.auth, "Accept": "*/*", "Range": "bytes=1-2"}
    )
    assert (ranged.status_code, ranged.body, ranged.headers["Content-Range"]) == (206, b"op", "bytes 1-2/5")
    assert (
        world.get(
            f"/api/sandboxes/{sandbox_id}/stderr", headers={**world.auth, "Accept": "*/*", "Range": "bytes=9-"}
        ).status_code
        == 416
    )


def test_binary_or_large_output_is_stored_as_its_bytes_and_the_json_stays_small(world, monkeypatch):
    data = os.urandom(200 * 1024) + b"\x00\xff"
    sandbox_id = run_one(world, writes(data, b"\xff" * 10))
    row = Sandbox.get(sandbox_id)
    assert sorted(row.output_objects) == ["logs", "stderr", "stdout"]
    assert world.stored_object(output.key(sandbox_id, "stdout", _run(sandbox_id))) == data

    def no_s3(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("showing a sandbox read S3")

    monkeypatch.setattr(aws, "get_object", no_s3)
    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    listed = world.get("/api/sandboxes").json_body["sandboxes"][0]
    assert (body["stdout_bytes"], body["stderr_bytes"], body["inline_truncated"]) == (len(data), 10, True)
    assert len(body["stdout"].encode()) <= output.PREVIEW_BYTES
    assert body["stderr"] == "\ufffd" * 10
    assert len(listed["stdout"].encode()) <= output.LIST_PREVIEW_BYTES and listed["inline_truncated"]

    answer = world.get(f"/api/sandboxes/{sandbox_id}/stdout")
    assert answer.status_code == 307
    assert output.key(sandbox_id, "stdout", _run(sandbox_id)) in answer.headers["Location"]


def test_stored_output_gone_is_flagged_never_a_503(world):
    sandbox_id = run_one(world, writes(b"\xfe" * 100))
    aws.delete_objects(world.settings, [output.key(sandbox_id, s, _run(sandbox_id)) for s in ("stdout", "logs")])

    assert world.get(f"/api/sandboxes/{sandbox_id}/stdout").status_code == 410
    body = world.get(f"/api/sandboxes/{sandbox_id}").json_body
    assert (body["output_gone"], body["stdout_bytes"]) == (True, 100)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_another_apps_download_is_a_404(world, stream):
    sandbox_id = run_one(world, writes(b"secret\n", b"secret\n"))
    other = world.auth_for(*world.new_app())

    assert world.get(f"/api/sandboxes/{sandbox_id}/{stream}", headers=other).status_code == 404
    assert world.get(f"/api/sandboxes/{'0' * 16}/{stream}").status_code == 404
    assert world.get(f"/api/sandboxes/{sandbox_id}/{stream}", headers={}).status_code == 401


def test_range_forms():
    assert output.byte_range(None, 10) is None
    assert output.byte_range("bytes=2-", 10) == (2, 9)
    assert output.byte_range("bytes=-3", 10) == (7, 9)
    assert output.byte_range("bytes=0-100", 10) == (0, 9)
    assert output.byte_range("bytes=0-1,4-5", 10) is None  # several: the whole answers


def running(world: Any) -> str:
    sandbox_id = world.post_json({"image": "base", "cmd": ["run"]}).json_body["id"]
    Sandbox.get(sandbox_id).update(actions=[Sandbox.status.set("running")])
    return sandbox_id


def test_the_live_tail_reads_a_running_sandbox_then_its_recorded_output(world, tmp_path):
    sandbox_id = running(world)
    live = Live(world.settings, sandbox_id, tmp_path, tick_s=0)
    (tmp_path / "stdout").write_bytes(b"one\n\xc3")  # the first byte of "é"
    (tmp_path / "logs").write_bytes(b"one\n\xc3")
    live.tick()

    first = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=0").json_body
    assert first == {"data": "one\n", "offset": 0, "next": 4, "done": False}  # never a cut character
    waited = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=4&wait=0.5").json_body
    assert waited == {"data": "", "offset": 4, "next": 4, "done": False}
    so_far = world.get(f"/api/sandboxes/{sandbox_id}/stdout", headers={**world.auth, "Accept": "*/*"})
    assert (so_far.status_code, so_far.body) == (200, b"one\n\xc3")

    with open(tmp_path / "logs", "ab") as f:
        f.write(b"\xa9two\n")
    live.tick()
    second = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=4&wait=1").json_body
    assert second == {"data": "\u00e9two\n", "offset": 4, "next": 10, "done": False}

    Sandbox.get(sandbox_id).update(
        actions=[
            Sandbox.status.set("terminated"),
            Sandbox.logs.set("one\n\u00e9two\n"),
            Sandbox.logs_bytes.set(10),
            Sandbox.stdout_bytes.set(0),
        ]
    )
    last = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=10&wait=5").json_body
    assert last == {"data": "", "offset": 10, "next": 10, "done": True}
    again = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=4").json_body
    assert again == {"data": "\u00e9two\n", "offset": 4, "next": 10, "done": True}
    assert world.get(f"/api/sandboxes/{sandbox_id}/logs?stream=nope").status_code == 400


def test_the_dispatcher_removes_the_live_chunks_once_the_result_is_recorded(world):
    def slow(spec: RunSpec) -> RunResult:
        assert spec.output_dir is not None
        (spec.output_dir / "logs").write_bytes(b"x" * 10)
        (spec.output_dir / "stdout").write_bytes(b"x" * 10)
        deadline = time.monotonic() + 5
        while not any("/live/" in k for k in world.stored_keys()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the live uploader's tick
        assert any("/live/" in k for k in world.stored_keys())
        return RunResult(0, b"", b"", b"", False, False, False, 0.1, output_dir=spec.output_dir)

    sandbox_id = run_one(world, FakeEngine(slow))

    assert [k for k in world.stored_keys() if sandbox_id in k] == []
    assert world.get(f"/api/sandboxes/{sandbox_id}").json_body["stdout"] == "x" * 10


def test_a_live_chunk_deleted_between_its_listing_and_its_read_is_not_a_503(world, tmp_path, monkeypatch):
    """The run is recorded (and its chunks cleared) while a tail reads them: what was read stands."""
    sandbox_id = running(world)
    live = Live(world.settings, sandbox_id, tmp_path, tick_s=0)
    (tmp_path / "logs").write_bytes(b"one\n")
    live.tick()
    listed = list(output._list(world.settings, output.live_prefix(sandbox_id, "logs"), ""))
    gone = (output.live_key(sandbox_id, "logs", 4), 4)  # listed, then deleted before it is read
    monkeypatch.setattr(output, "_list", lambda settings, prefix, after: [*listed, gone])
    (tmp_path / "logs").write_bytes(b"one\ntwo\n")

    answer = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=0")
    assert answer.status_code == 200, answer.body
    assert answer.json_body == {"data": "one\n", "offset": 0, "next": 4, "done": False}


def test_the_chunks_a_run_wrote_are_deleted_by_their_keys_and_an_earlier_tries_by_listing(world, tmp_path, monkeypatch):
    """A first try deletes what it wrote without listing the folder (one S3 call); a sandbox tried before
    lists it, so chunks an earlier, crashed try left go too; so does a run that wrote too many to track."""
    sandbox_id = running(world)
    stale = output.live_key(sandbox_id, "logs", 999)  # an earlier try's, at an offset this one never wrote
    aws.put_object(world.settings, stale, b"old")
    live = Live(world.settings, sandbox_id, tmp_path, tick_s=0)
    (tmp_path / "logs").write_bytes(b"one\n")
    (tmp_path / "stdout").write_bytes(b"one\n")
    live.tick()
    mine = [output.live_key(sandbox_id, "logs", 0), output.live_key(sandbox_id, "stdout", 0)]
    assert live.written(tried_before=False) == mine
    assert live.written(tried_before=True) is None

    listed = []
    real_list = output._list
    monkeypatch.setattr(output, "_list", lambda *a: listed.append(a) or real_list(*a))
    forget(world.settings, sandbox_id, live.written(tried_before=False))
    assert listed == []
    assert [k for k in world.stored_keys() if "/live/" in k] == [stale]  # the first try's rule: its own keys
    forget(world.settings, sandbox_id, live.written(tried_before=True))
    assert len(listed) == 1 and [k for k in world.stored_keys() if "/live/" in k] == []

    monkeypatch.setattr(live_module, "TRACKED_KEYS", 1)
    busy = Live(world.settings, sandbox_id, tmp_path, tick_s=0)
    busy.tick()
    assert busy.chunks == 2 and busy.written(tried_before=False) is None


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_program_writing_one_stream_stores_it_once_and_its_logs_read_the_same_object(world, stream):
    data = os.urandom(100 * 1024)
    sandbox_id = run_one(world, writes(data) if stream == "stdout" else writes(b"", data))
    row = Sandbox.get(sandbox_id)
    assert row.output_objects == [stream, f"logs={stream}"]
    assert sorted(k for k in world.stored_keys() if sandbox_id in k) == [
        output.key(sandbox_id, stream, _run(sandbox_id))
    ]

    answer = world.get(f"/api/sandboxes/{sandbox_id}/{stream}")
    assert answer.status_code == 307 and output.key(sandbox_id, stream, _run(sandbox_id)) in answer.headers["Location"]
    tail = world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=1000").json_body  # the log, from the stream's object
    assert tail["offset"] == 1000 and tail["next"] > 1000
    assert tail["data"] == data[1000 : tail["next"]].decode("utf-8", "replace")

    aws.delete_objects(world.settings, [output.key(sandbox_id, stream, _run(sandbox_id))])
    assert world.get(f"/api/sandboxes/{sandbox_id}/logs?offset=0").status_code == 410


def test_a_program_writing_both_streams_keeps_its_interleaved_log_as_its_own_object(world):
    sandbox_id = run_one(world, writes(os.urandom(70 * 1024), b"\xff"))
    assert sorted(Sandbox.get(sandbox_id).output_objects) == ["logs", "stderr", "stdout"]
    assert world.stored_object(output.key(sandbox_id, "logs", _run(sandbox_id)))[-1:] == b"\xff"


def test_a_run_that_lost_the_sandbox_never_replaces_the_recorded_runs_output(world, tmp_path):
    """One run, one result, for the bytes too: a run whose result is refused (another run of the sandbox
    recorded first: it lost its token to a handover) may still have uploaded its output, even after the
    winner's (it retries its record through a DynamoDB outage, uploading each time).  Each run stores under
    its own token, so the downloads stay the recorded run's."""
    data = os.urandom(100 * 1024)
    sandbox_id = run_one(world, writes(data, b"\xfe" * 10))
    recorded = _run(sandbox_id)
    folder = tmp_path / "stale"
    folder.mkdir()
    for stream, content in (("stdout", b"stale" * 30000), ("stderr", b"\xff"), ("logs", b"stale" * 30000 + b"\xff")):
        (folder / stream).write_bytes(content)
    stale = RunResult(0, b"", b"", b"", False, False, False, 0.1, output_dir=folder)

    actions = result.attributes(sandbox_id, "stale-token", stale, lambda k, p: aws.put_file(world.settings, k, p))
    assert lifecycle.record(sandbox_id, "stale-token", actions) is False  # refused: not this run's sandbox

    row = Sandbox.get(sandbox_id)
    assert row.output_token == recorded and row.stdout_bytes == len(data)
    assert world.stored_object(output.object_key(row, "stdout")) == data  # what downloads read
    stdout = world.get(f"/api/sandboxes/{sandbox_id}/stdout")
    assert stdout.status_code == 307 and f"/output/{recorded}/stdout" in stdout.headers["Location"]
