"""Output as bytes (issue #12): memory under floods, the rate output is stored at, the live tail's delay.

Measured on the running bench stack (moto's, or ``make serve``'s endpoints):

* floods: 4 sandboxes at once, each writing 10 MiB of random bytes to stdout
  and 10 MiB to stderr (``output_kb=10240``).  The peak RSS (``VmHWM``) of every
  process of the stack -- the dispatcher, ``chalice local``, each local AWS
  endpoint -- read just before and after the runs, then after their downloads;
  the downloads' SHA-256 against the bytes the programs wrote (made again here
  from the same seed); the size of ``GET /api/sandboxes/{id}``.
* rate: a program writing 10 MiB to stdout and 10 MiB to stderr as fast as it
  can, from its first write (it prints the time first) until the platform has
  stored its output (the dispatcher's ``sandbox.terminated``, logged after the
  uploads and the row's write), beside the same program in a raw container of
  the dispatcher's configuration read through the Docker SDK's attach stream
  until its end (what ``docker run`` and ``docker logs -f`` read), interleaved.
* live tail: a program printing the time, one line every 0.2 s, flushed; each
  line's delay until ``GET /api/sandboxes/{id}/logs?offset=N&wait=S`` answers it.
  ``tail_delays`` is also what ``tests/integration/test_output.py`` checks.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from bench.engine import REFERENCE
from dispatcher.container import docker_py

if TYPE_CHECKING:
    from bench.run import Bench

MIB = 1024 * 1024
FLOODS = 4
TARGET_GROWTH_MB = 64

# Each stream's 10 MiB, from a seed, so the bench can make the same bytes again to compare.
FLOOD = (
    "python3 -c 'import random, sys; random.seed({seed}); data = random.randbytes(10 * 2**20); "
    "sys.stdout.buffer.write(data); sys.stdout.flush(); sys.stderr.buffer.write(data[::-1])'"
)
# The same amount, written as fast as it can be, after a first line on stderr saying when it began.
TIMED = (
    "python3 -c 'import random, sys, time; data = random.Random(7).randbytes(10 * 2**20); "
    'sys.stderr.write(repr(time.time()) + "\\n"); sys.stderr.flush(); '
    "sys.stdout.buffer.write(data); sys.stdout.flush(); sys.stderr.buffer.write(data)'"
)
TAIL = "python3 -u -c 'import time\nfor i in range({lines}):\n    print(time.time(), flush=True); time.sleep({gap})'"


def flood_command(seed: int) -> str:
    return FLOOD.format(seed=seed)


def flood_bytes(seed: int) -> bytes:
    """What ``flood_command(seed)`` writes to stdout (stderr gets it reversed)."""
    return random.Random(seed).randbytes(10 * MIB)


def tail_command(lines: int = 20, gap_s: float = 0.3) -> str:
    return TAIL.format(lines=lines, gap=gap_s)


def tail_delays(fetch: Callable[[str, dict[str, Any]], dict[str, Any]], sandbox_id: str) -> list[float]:
    """Follow a ``tail_command`` sandbox's live tail to its end; each line's delay (s), sorted.

    ``fetch(path, params)`` is a GET through the API, answering the JSON.  Each
    line carries the time it was written; its answer is timed on arrival (one
    host, one clock).
    """
    delays: list[float] = []
    offset, finished = 0, False
    while not finished:
        answer = fetch(f"/api/sandboxes/{sandbox_id}/logs", {"offset": offset, "wait": 10})
        now = time.time()
        delays += [now - float(line) for line in answer["data"].split()]
        offset, finished = answer["next"], answer["done"]
    return sorted(delays)


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def _peaks(pids: dict[str, int]) -> dict[str, int]:
    return {name: peak_rss_kb(pid) for name, pid in pids.items()}


def _grown_mb(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    return {name: round((after[name] - before[name]) / 1024, 1) for name in before}


def _sha256_of_download(bench: Bench, sandbox_id: str, stream: str) -> tuple[str, int]:
    """The stream's download, hashed as it comes (following the redirect to storage)."""
    digest, size = hashlib.sha256(), 0
    url = f"{bench.stack.api_url}/api/sandboxes/{sandbox_id}/{stream}"
    with requests.get(url, auth=bench.session.auth, stream=True, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _submit(bench: Bench, program: str, **fields: str) -> str:
    return bench.submit(json.dumps([program]), files={}, **fields)


def floods(bench: Bench) -> dict[str, Any]:
    bench.start_dispatcher(FLOODS)
    warm = bench.wait(_submit(bench, "echo warm; head -c 100000 /dev/urandom"))  # every code path loaded once
    _sha256_of_download(bench, warm["id"], "stdout")
    bench.session.get(f"{bench.stack.api_url}/api/sandboxes/{warm['id']}/logs", timeout=30).raise_for_status()
    pids = {name: proc.pid for name, proc in bench.stack.procs.items()}
    before = _peaks(pids)  # VmHWM only rises: read just before
    started = time.perf_counter()
    with ThreadPoolExecutor(FLOODS) as pool:
        ids = list(pool.map(lambda seed: _submit(bench, flood_command(seed), output_kb="10240"), range(FLOODS)))
        done = list(pool.map(bench.wait, ids))
    seconds = time.perf_counter() - started
    after_runs = _peaks(pids)

    def check(seed: int) -> dict[str, Any]:
        sandbox, data = done[seed], flood_bytes(seed)
        want = {"stdout": hashlib.sha256(data).hexdigest(), "stderr": hashlib.sha256(data[::-1]).hexdigest()}
        got = {stream: _sha256_of_download(bench, sandbox["id"], stream) for stream in want}
        one = bench.session.get(f"{bench.stack.api_url}/api/sandboxes/{sandbox['id']}", timeout=30)
        one.raise_for_status()
        return {
            "status": sandbox["status"],
            "bytes": [sandbox.get("stdout_bytes"), sandbox.get("stderr_bytes")],
            "output_truncated": sandbox.get("output_truncated"),
            "sha256_equal": all(got[s][0] == want[s] for s in want),
            "downloaded_bytes": [got["stdout"][1], got["stderr"][1]],
            "get_bytes": len(one.content),
        }

    with ThreadPoolExecutor(FLOODS) as pool:
        checks = list(pool.map(check, range(FLOODS)))
    after_downloads = _peaks(pids)
    runs = _grown_mb(before, after_runs)
    with_downloads = _grown_mb(before, after_downloads)
    return {
        "floods": FLOODS,
        "seconds": seconds,
        "peak_rss_before_mb": {name: round(kb / 1024, 1) for name, kb in before.items()},
        "grown_mb_runs": runs,
        "grown_mb_runs_and_downloads": with_downloads,
        "within_target": all(v <= TARGET_GROWTH_MB for v in with_downloads.values()),
        "sandboxes": checks,
        "all_sha256_equal": all(c["sha256_equal"] for c in checks),
        "get_max_bytes": max(c["get_bytes"] for c in checks),
    }


def _platform_store_s(bench: Bench) -> float:
    """From the program's first write to its output stored (the dispatcher's ``sandbox.terminated``)."""
    sandbox_id = _submit(bench, TIMED, output_kb="10240")
    done = bench.wait(sandbox_id)
    assert done["status"] == "terminated" and done["stdout_bytes"] == 10 * MIB, done["status"]
    began = float(done["stderr"].split("\n", 1)[0])
    log = bench.stack.log_dir / "dispatcher.log"  # type: ignore[operator]
    deadline = time.monotonic() + 10  # logged just after the row's write the wait saw
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"sandbox.terminated"' in line and sandbox_id in line:
                return float(json.loads(line)["ts"]) - began
        time.sleep(0.05)
    raise RuntimeError(f"no sandbox.terminated logged for {sandbox_id}")


def _raw_read_s(bench: Bench) -> float:
    """The same program in a raw container of the dispatcher's configuration, read through the attach stream
    to its end; from the program's first write to the last byte read.  Frames (8-byte header, then data) are
    parsed only until the first line of stderr, the start time, is found: the rest is read and counted."""
    api = bench.docker.api
    create, host = docker_py(REFERENCE, stdin=False)
    cid = api.create_container(**{**create, "command": ["sh", "-c", TIMED]}, host_config=api.create_host_config(**host))
    cid = cid["Id"]
    try:
        sock = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        api.start(cid)
        buffer, first_err, total = b"", b"", 0
        while True:
            chunk = raw.recv(1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if b"\n" in first_err:
                continue  # found: the rest is only counted, as fast as it comes
            buffer += chunk
            while len(buffer) >= 8:  # walk whole frames; keep a partial one
                kind, size = struct.unpack(">BxxxL", buffer[:8])
                if len(buffer) < 8 + size:
                    break
                if kind == 2:
                    first_err += buffer[8 : 8 + size]
                buffer = buffer[8 + size :]
        ended = time.time()
        sock.close()
        api.wait(cid)
    finally:
        api.remove_container(cid, force=True)
    line = first_err.split(b"\n", 1)[0]
    assert total >= 20 * MIB, total  # the frames' headers on top
    return ended - float(line)


def store_rate(bench: Bench, runs: int) -> dict[str, Any]:
    bench.start_dispatcher(2)
    _platform_store_s(bench)  # warm-up, both paths
    _raw_read_s(bench)
    platform_s, raw_s = [], []
    for _ in range(runs):  # interleaved, so noise hits both alike
        bench.settle()
        platform_s.append(_platform_store_s(bench))
        raw_s.append(_raw_read_s(bench))
    p, r = statistics.median(platform_s), statistics.median(raw_s)
    return {
        "runs": runs,
        "mib": 20,
        "platform_s": platform_s,
        "raw_s": raw_s,
        "platform_p50_s": p,
        "raw_p50_s": r,
        "platform_mib_per_s": 20 / p,
        "raw_mib_per_s": 20 / r,
        "ratio": r / p,
    }


def live_tail(bench: Bench, lines: int = 50) -> dict[str, Any]:
    def fetch(path: str, params: dict[str, Any]) -> dict[str, Any]:
        response = bench.session.get(f"{bench.stack.api_url}{path}", params=params, timeout=30)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    delays = tail_delays(fetch, _submit(bench, tail_command(lines, 0.2)))
    assert len(delays) == lines, len(delays)
    return {
        "lines": lines,
        "p50_ms": statistics.median(delays) * 1000,
        "p95_ms": delays[int(0.95 * (len(delays) - 1))] * 1000,
        "max_ms": delays[-1] * 1000,
    }


def output_bytes(bench: Bench, rate_runs: int = 5) -> dict[str, Any]:
    return {"floods": floods(bench), "rate": store_rate(bench, rate_runs), "tail": live_tail(bench)}


def tail_lines(t: dict[str, Any]) -> list[str]:
    return [
        f"  live tail over {t['lines']} lines: p50 {t['p50_ms']:.0f} ms, p95 {t['p95_ms']:.0f} ms, "
        f"max {t['max_ms']:.0f} ms (target p50 <= 250 ms)",
    ]


def output_lines(o: dict[str, Any]) -> list[str]:
    if set(o) == {"tail"}:  # `--parts tail`: the live tail alone
        return ["", "output as bytes:", *tail_lines(o["tail"])]
    f, r, t = o["floods"], o["rate"], o["tail"]
    grown = ", ".join(f"{name} +{mb:.0f}" for name, mb in sorted(f["grown_mb_runs_and_downloads"].items()))
    runs = ", ".join(f"{name} +{mb:.0f}" for name, mb in sorted(f["grown_mb_runs"].items()))
    return [
        "",
        f"output as bytes: {f['floods']} x (10 + 10) MiB random at once, {f['seconds']:.1f} s",
        f"  peak RSS growth (MiB), runs and downloads: {grown} (target <= {TARGET_GROWTH_MB} each)",
        f"  of which during the runs: {runs}",
        f"  downloads' SHA-256 equal what was written: {f['all_sha256_equal']}; "
        f"largest GET of one: {f['get_max_bytes']} bytes (target <= 1 MiB)",
        f"  stored at {r['platform_mib_per_s']:.1f} MiB/s vs a raw attach read {r['raw_mib_per_s']:.1f} MiB/s "
        f"(20 MiB, p50 of {r['runs']}): ratio {r['ratio']:.2f} (target >= 0.8)",
        *tail_lines(t),
    ]
