"""Output as bytes, on the real stack: exact downloads, the cap, the live tail, and memory under floods."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.output_bytes import flood_bytes, flood_command, peak_rss_kb, tail_command, tail_delays

from .helpers import Client, RunningStack

# Both backends: the same tests on moto and on make serve's dynalite and s3rver (see conftest).
pytestmark = [pytest.mark.timeout(180), pytest.mark.both_backends]
MIB = 1024 * 1024


def done(client: Client, cmd: list[str], files: dict[str, str | bytes] | None = None, **fields: str) -> dict[str, Any]:
    sandbox = client.wait_done(client.submit(cmd, files, **fields), timeout=90)
    assert sandbox["status"] == "terminated" and sandbox["return_code"] == 0, sandbox
    return sandbox


def download(client: Client, sandbox_id: str, stream: str, **headers: str) -> bytes:
    """The stream's bytes, following the redirect to storage as any HTTP client does."""
    response = client.get(f"/api/sandboxes/{sandbox_id}/{stream}", headers=headers)
    assert response.status_code in (200, 206), f"{response.status_code}: {response.text[:300]}"
    return response.content


@pytest.mark.parametrize(
    "data",
    [
        os.urandom(3 * MIB),  # random: stored as an object, fetched through the redirect
        b"\x00\xff\xfe caf\xc3 \x00\n" * 1000,  # NUL bytes and bytes that are not UTF-8
        b"plain text\n",  # small and UTF-8: in the row
        b"",
    ],
    ids=["random", "non-utf8-nul", "small-text", "empty"],
)
def test_downloads_are_the_exact_bytes_the_program_wrote(client: Client, data: bytes) -> None:
    sandbox = done(client, ["cat data.bin", "cat data.bin >&2"], {"data.bin": data}, output_kb="10240")

    for stream in ("stdout", "stderr"):
        got = download(client, sandbox["id"], stream)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), stream
        assert sandbox[f"{stream}_bytes"] == len(data)
    assert sandbox["output_truncated"] is False
    assert len(sandbox["stdout"].encode() if sandbox["stdout"] else b"") <= 64 * 1024
    assert sandbox["inline_truncated"] is (len(data) > 64 * 1024)
    if data:
        tail = download(client, sandbox["id"], "stdout", Range="bytes=-5")
        assert tail == data[-5:]


def test_the_cap_cuts_each_stream_and_says_so(client: Client) -> None:
    sandbox = done(client, ["head -c 5000 /dev/zero", "head -c 100 /dev/zero >&2"], output_kb="1")

    assert sandbox["output_truncated"] is True
    assert (sandbox["stdout_bytes"], sandbox["stderr_bytes"]) == (1024, 100)
    assert download(client, sandbox["id"], "stdout") == b"\x00" * 1024


def test_the_live_tail_sees_lines_before_the_program_ends(client: Client) -> None:
    sandbox_id = client.submit(["echo first", "sleep 4", "echo second"], timeout="20")
    seen: list[tuple[str, str]] = []
    offset, finished = 0, False
    deadline = time.monotonic() + 60
    while not finished:
        assert time.monotonic() < deadline, seen
        answer = client.get(f"/api/sandboxes/{sandbox_id}/logs", params={"offset": offset, "wait": 10}).json()
        assert answer["offset"] == offset
        if answer["data"]:
            seen.append((answer["data"], client.sandbox(sandbox_id)["status"]))
        offset, finished = answer["next"], answer["done"]

    assert "".join(data for data, _ in seen) == "first\nsecond\n"
    assert seen[0] == ("first\n", "running"), seen  # seen while the program still ran


def test_another_apps_download_and_tail_are_404(client: Client, other_client: Client) -> None:
    sandbox = done(client, ["echo private"])
    for path in ("stdout", "stderr", "logs"):
        assert other_client.get(f"/api/sandboxes/{sandbox['id']}/{path}").status_code == 404
        assert client.get(f"/api/sandboxes/{'0' * 16}/{path}").status_code == 404


@pytest.fixture(scope="module")
def other_client(stack: RunningStack) -> Client:
    from chalicelib import admin

    app, secret = admin.app_create(f"other-{secrets.token_hex(2)}", "demo", settings=stack.stack.settings())
    return Client(stack.stack.api_url, (app.app_id, secret))


def test_memory_stays_bounded_while_floods_run(tmp_path: Path) -> None:
    """The issue's figures: 4 programs at once, each writing 10 MiB to stdout and 10 MiB to stderr
    (``make bench``'s ``bytes`` part measures the same, every endpoint included)."""
    from .conftest import running_stack

    with running_stack(tmp_path, f"fl{secrets.token_hex(3)}", slots=4) as stack:
        client = stack.client
        warm = done(client, ["echo warm; head -c 100000 /dev/urandom"])  # every code path loaded once
        download(client, warm["id"], "stdout")
        client.get(f"/api/sandboxes/{warm['id']}/logs")
        procs = {name: proc.pid for name, proc in stack.stack.procs.items()}
        before = {name: peak_rss_kb(pid) for name, pid in procs.items()}
        with ThreadPoolExecutor(4) as pool:
            sandboxes = list(
                pool.map(lambda seed: done(client, [flood_command(seed)], output_kb="10240", timeout="60"), range(4))
            )
        grown = {name: (peak_rss_kb(pid) - before[name]) // 1024 for name, pid in procs.items()}

        for seed, sandbox in enumerate(sandboxes):
            data = flood_bytes(seed)
            assert (sandbox["stdout_bytes"], sandbox["stderr_bytes"]) == (10 * MIB, 10 * MIB)
            assert sandbox["output_truncated"] is False
            assert len(client.get(f"/api/sandboxes/{sandbox['id']}").content) <= MIB
            assert hashlib.sha256(download(client, sandbox["id"], "stdout")).digest() == hashlib.sha256(data).digest()
            assert download(client, sandbox["id"], "stderr") == data[::-1]
            # Stored in parts of 8 MiB (chalicelib.aws.PART_BYTES): a range across the first part's end.
            edge = 8 * MIB - 7
            across = download(client, sandbox["id"], "stdout", Range=f"bytes={edge}-{edge + 15}")
            assert across == data[edge : edge + 16]
        page = client.get("/api/sandboxes", params={"limit": "100"})
        assert len(page.content) <= MIB
        print(f"peak RSS growth (MiB) while 4 x (10 + 10) MiB floods ran: {grown}")
        for name in procs:  # the local AWS endpoints too (moto's S3: infra/local/moto_bounded.py)
            assert grown[name] <= 64, grown


def test_the_live_tail_answers_within_a_fraction_of_a_second(client: Client) -> None:
    """Each line carries the time it was written; the tail's answer is timed on arrival (``make bench`` has it too)."""
    sandbox_id = client.submit([tail_command(lines=20, gap_s=0.3)], timeout="30")
    delays = tail_delays(lambda path, params: client.get(path, params=params).json(), sandbox_id)
    p50 = delays[len(delays) // 2]
    print(f"live tail delay over {len(delays)} lines: p50 {p50 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
    assert len(delays) == 20
    assert p50 <= 1.0  # 180 ms on an idle machine, 570 ms with a test suite beside it (2 shared cores)


def test_a_program_writing_one_stream_has_its_log_read_from_that_streams_bytes(client: Client) -> None:
    """Its interleaved log is that stream byte for byte, stored once (``result._logs_as_one_stream``): the log,
    read page by page through the tail, is exactly what the program wrote."""
    data = b"".join(b"line %06d of the only stream\n" % i for i in range(8000))  # 232,000 bytes, over a preview
    sandbox = done(client, ["cat data.txt"], {"data.txt": data}, output_kb="1024")
    assert (sandbox["stdout_bytes"], sandbox["stderr_bytes"], sandbox["inline_truncated"]) == (len(data), 0, True)
    assert download(client, sandbox["id"], "stdout") == data

    log, offset = [], 0
    while offset < len(data):
        page = client.get(f"/api/sandboxes/{sandbox['id']}/logs", params={"offset": offset}).json()
        assert page["offset"] == offset and page["next"] > offset, page["next"]
        log.append(page["data"])
        offset = page["next"]
    assert page["done"] and "".join(log).encode() == data


def _uploads_under_way(stack: RunningStack) -> list[str]:
    """The keys of the bucket's multipart uploads not completed.  s3rver (the persistent stack) does not
    implement ListMultipartUploads, a deviation from S3: there its upload folders are read instead."""
    bucket = stack.stack.settings().bucket
    data_dir = stack.stack.data_dir
    if data_dir is None:
        return [u["Key"] for u in stack.boto("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return [key.read_text() for key in (data_dir / "s3" / bucket).glob("*uploads*/*/key")]


def test_a_large_stream_is_sent_in_parts_while_the_program_still_runs(stack: RunningStack) -> None:
    """Over a part (8 MiB, ``chalicelib.aws.PART_BYTES``), output goes to storage as it is written: the
    multipart upload is under way in the bucket while the program still sleeps (well before the time
    it prints as it ends: uploads at the run's end also happen while the row says ``running``), and the
    stream is exact after."""
    client = stack.client
    program = (
        "head -c 9437184 /dev/urandom > out.bin; cat out.bin; sleep 3; python3 -c 'import time; print(time.time())' >&2"
    )
    sandbox_id = client.submit([program], files={}, output_kb="10240", timeout="30")
    seen_at = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        under_way = _uploads_under_way(stack)
        if any(k.startswith(f"sandboxes/{sandbox_id}/output/") and k.endswith("/stdout") for k in under_way):
            seen_at = time.time()
            break
        time.sleep(0.1)
    sandbox = client.wait_done(sandbox_id, timeout=60)
    assert sandbox["stdout_bytes"] == 9437184 and sandbox["return_code"] == 0, sandbox
    ended_at = float(sandbox["stderr"].split()[-1])  # one host, one clock
    assert seen_at is not None and seen_at < ended_at - 1.5, (seen_at, ended_at)
    assert len(download(client, sandbox_id, "stdout")) == 9437184
    assert not [k for k in _uploads_under_way(stack) if sandbox_id in k]  # completed, none left behind
