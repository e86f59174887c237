"""``infra/local/moto_bounded``: moto's S3 stores the same bytes, in bounded memory.

In process, objects and multipart uploads are read back byte for byte with
S3's ETags.  Then the local endpoint as the stack runs it (``moto_local``, a
process of its own) takes four 20 MiB bodies and two 20 MiB multipart uploads
at once, as four floods ending together give it, and its peak RSS (``VmHWM``)
grows by at most issue #12's 64 MiB (it grew by ~250 MiB without).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local import moto_bounded
from infra.local.stack import free_port

MIB = 1024 * 1024
BUCKET = "bounded-bucket"


def _multipart(client: Any, key: str, data: bytes, part: int) -> dict[str, Any]:
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part), 1):
        etag = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=data[start : start + part]
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    answer: dict[str, Any] = client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    return answer


@pytest.fixture
def s3(fake_aws_env: None) -> Iterator[Any]:
    moto_bounded.bounded_s3_memory()
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_objects_and_joined_parts_read_back_exactly(s3: Any) -> None:
    small, large = os.urandom(1000), os.urandom(7 * MIB)
    s3.put_object(Bucket=BUCKET, Key="small", Body=small)
    s3.put_object(Bucket=BUCKET, Key="large", Body=large)
    assert s3.get_object(Bucket=BUCKET, Key="small")["Body"].read() == small
    assert s3.get_object(Bucket=BUCKET, Key="large")["Body"].read() == large

    data = os.urandom(12 * MIB + 3)
    answer = _multipart(s3, "joined", data, 5 * MIB)
    md5s = b"".join(hashlib.md5(data[i : i + 5 * MIB]).digest() for i in range(0, len(data), 5 * MIB))  # noqa: S324
    assert answer["ETag"].strip('"') == f"{hashlib.md5(md5s).hexdigest()}-3"  # noqa: S324 - S3's multipart ETag
    got = s3.get_object(Bucket=BUCKET, Key="joined")
    assert got["ContentLength"] == len(data) and got["Body"].read() == data
    edge = s3.get_object(Bucket=BUCKET, Key="joined", Range="bytes=5242878-5242881")["Body"].read()
    assert edge == data[5242878:5242882]  # across the first part's end


def test_a_part_too_small_is_refused_as_s3_refuses_it(s3: Any) -> None:
    with pytest.raises(s3.exceptions.ClientError, match="EntityTooSmall"):
        _multipart(s3, "small-parts", os.urandom(3 * MIB), 1 * MIB)


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_the_local_endpoint_stays_within_64_mib_while_floods_are_stored(local_endpoint: Any) -> None:
    client = boto3.client(
        "s3", endpoint_url=local_endpoint.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="warm", Body=os.urandom(2 * MIB))  # every code path loaded once
    bodies = [os.urandom(20 * MIB) for _ in range(6)]
    before = _peak_kb(local_endpoint.pid)

    def store(i: int) -> None:
        if i < 4:
            client.put_object(Bucket=BUCKET, Key=f"flood{i}", Body=bodies[i])
        else:
            _multipart(client, f"flood{i}", bodies[i], 8 * MIB)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(store, range(6)))
    grown_mib = (_peak_kb(local_endpoint.pid) - before) / 1024
    for i, body in enumerate(bodies):
        assert client.get_object(Bucket=BUCKET, Key=f"flood{i}")["Body"].read() == body, i
    assert grown_mib <= 64, f"the endpoint's peak RSS grew by {grown_mib:.0f} MiB"


def test_a_part_for_an_upload_aborted_is_no_such_upload_as_in_s3(s3: Any) -> None:
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="gone")["UploadId"]
    s3.abort_multipart_upload(Bucket=BUCKET, Key="gone", UploadId=upload)
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.upload_part(Bucket=BUCKET, Key="gone", UploadId=upload, PartNumber=1, Body=b"x")


def test_a_large_body_waits_for_its_turn_but_not_forever(fake_aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client stopped in the middle of its body (a dispatcher under SIGSTOP) holds the turn: the others go
    without it after ``LARGE_WAIT_S``, rather than wait for it to go on."""
    from moto.server import ThreadedMotoServer

    moto_bounded.bounded_s3_memory()
    monkeypatch.setattr(moto_bounded, "LARGE_WAIT_S", 0.5)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        body = os.urandom(2 * MIB)
        assert moto_bounded._large.acquire(timeout=5)  # the stalled client's turn
        try:
            started = time.monotonic()
            client.put_object(Bucket=BUCKET, Key="waited", Body=body)
            waited = time.monotonic() - started
        finally:
            moto_bounded._large.release()
        assert 0.5 <= waited < 5, waited
        assert client.get_object(Bucket=BUCKET, Key="waited")["Body"].read() == body
        started = time.monotonic()
        client.put_object(Bucket=BUCKET, Key="turn", Body=body)  # its turn free again: no wait
        assert time.monotonic() - started < 0.5
    finally:
        server.stop()
