"""Large output goes to S3 in parts (``chalicelib.aws.put_file``), some sent while the program writes it
(``dispatcher.parts.Sender``), against the local endpoint the stack runs (a process of its own)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chalicelib import aws, context, output
from chalicelib.settings import Settings
from dispatcher.parts import Sender

MIB = 1024 * 1024
PART = aws.PART_BYTES


@pytest.fixture
def settings(local_endpoint: Any) -> Settings:
    made = Settings(aws_endpoint_url=local_endpoint.url, aws_access_key_id="x", aws_secret_access_key="x")
    context.reset_context(made)
    aws.ensure_bucket(made)
    return made


def _stored(settings: Settings, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = aws.s3(settings).get_object(Bucket=settings.bucket, Key=key)
    return {"etag": answer["ETag"].strip('"'), "body": answer["Body"].read()}


def _uploads(settings: Settings) -> list[Any]:
    listed: list[Any] = aws.s3(settings).list_multipart_uploads(Bucket=settings.bucket).get("Uploads", [])
    return listed


@pytest.mark.parametrize("size", [0, 1000, PART, PART + 1, 2 * PART, 2 * PART + 12345])
def test_a_file_is_stored_byte_for_byte_whole_or_in_parts(settings: Settings, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    aws.put_file(settings, "k", tmp_path / "f")
    stored = _stored(settings, "k")
    assert stored["body"] == data
    parts = -(-size // PART)
    assert stored["etag"].endswith(f"-{parts}") == (size > PART)  # a multipart upload's ETag counts its parts
    assert _uploads(settings) == []


def test_an_upload_goes_on_from_the_parts_sent_and_begins_again_when_s3_lost_it(
    settings: Settings, tmp_path: Path
) -> None:
    data = os.urandom(2 * PART + 5)
    (tmp_path / "f").write_bytes(data)
    begun = aws.start_parts(settings, "k")
    aws.send_part(settings, begun, tmp_path / "f")
    aws.put_file(settings, "k", tmp_path / "f", begun)
    assert begun.done and len(begun.etags) == 3
    assert _stored(settings, "k")["body"] == data
    # A record tried again: done already, nothing read or sent (the spool file could be gone by then).
    aws.put_file(settings, "k", tmp_path / "not-read", begun)
    assert _stored(settings, "k")["body"] == data

    lost = aws.start_parts(settings, "k2")
    aws.send_part(settings, lost, tmp_path / "f")
    aws.abort_parts(settings, lost)
    aws.put_file(settings, "k2", tmp_path / "f", lost)  # NoSuchUpload: begun again from the first byte
    assert _stored(settings, "k2")["body"] == data


def test_a_running_programs_output_is_sent_in_parts_as_it_grows(settings: Settings, tmp_path: Path) -> None:
    sender = Sender(settings, "sb1", "tok", tmp_path)
    first = os.urandom(PART + 100)
    (tmp_path / "stdout").write_bytes(first)
    (tmp_path / "logs").write_bytes(first)
    sender.tick()
    stdout_key = output.key("sb1", "stdout", "tok")
    begun = sender.for_key(stdout_key)
    assert begun is not None and len(begun.etags) == 1
    # One stream only so far: logs is its copy, stored as that stream, never sent.
    assert sender.for_key(output.key("sb1", "logs", "tok")) is None
    more = os.urandom(PART)
    with open(tmp_path / "stderr", "ab") as f:
        f.write(more)
    with open(tmp_path / "logs", "ab") as f:
        f.write(more)
    sender.tick()
    assert len(begun.etags) == 1  # stdout has no whole part more
    assert sender.for_key(output.key("sb1", "stderr", "tok")) is not None
    assert len(sender.for_key(output.key("sb1", "logs", "tok")).etags) == 2  # type: ignore[union-attr]
    sender.stop()

    aws.put_file(settings, stdout_key, tmp_path / "stdout", begun)
    assert _stored(settings, stdout_key)["body"] == first
    sender.abandon()  # stderr's and logs' uploads, not completed: aborted
    assert _uploads(settings) == []


def test_a_sender_that_cannot_reach_s3_stops_and_leaves_the_rest_to_the_runs_end(tmp_path: Path) -> None:
    unreachable = Settings(aws_endpoint_url="http://127.0.0.1:9", aws_access_key_id="x", aws_secret_access_key="x")
    context.reset_context(unreachable)
    (tmp_path / "stdout").write_bytes(os.urandom(PART))
    sender = Sender(unreachable, "sb2", "tok", tmp_path, look_s=0.01)
    sender.start()
    sender.join(60)
    assert sender.failed and not sender.is_alive()
    sender.abandon()  # nothing begun: nothing to abort
