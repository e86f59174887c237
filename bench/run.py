"""``make bench``: the platform beside the raw Docker engine, measured in one run.

Starts its own local stack (moto's server, ``chalice local``, one dispatcher)
on free ports and prints, with ratios against the raw engine measured in the
same run:

* latency: the documented example through the HTTP API until the client sees
  ``terminated`` (POST, then ``GET ?wait=20``), beside the same hardened
  container run through the Docker SDK and through the ``docker`` CLI;
* throughput: 200 sandboxes submitted at once at 2, 4 and 8 slots, beside the
  raw engine at the same concurrency;
* API: ``GET /api/sandboxes/{id}`` and the first page of ``GET /api/sandboxes``
  with 100, 1,000 and 10,000 sandboxes stored, beside the one DynamoDB
  ``Query`` behind the page made directly against the local AWS endpoint;
* memory: the dispatcher's peak RSS through the throughput runs, through a
  200 MB output flood, and while a program's artifacts (9,999 tiny files and
  one of 8 MiB left in ``out/``) are collected and stored;
* output as bytes (``bench/output_bytes.py``): every stack process's peak RSS
  growth while 4 programs each write 10 + 10 MiB of random bytes and while
  their downloads are checked byte for byte; the rate output is stored at
  beside a raw attach read of the same program; the live tail's delay;
* the CPU the local stack's own processes (moto's server, ``chalice local``,
  the dispatcher) take per run during the throughput runs: on one machine it
  is taken from the engine;
* the AWS calls per run during the throughput runs, by service and action, as
  the local AWS endpoint counted them (``infra/local/moto_calls.py``): every
  call of every process (the API's create and its waiting reads, the
  dispatcher's, the reconciler's), divided by the runs.

``--stack persistent`` measures ``make serve``'s endpoints (DynamoDB by dynalite,
S3 by s3rver, on disk; SQS moto) instead of moto's, and adds the restart: the
whole stack stopped and started again with everything stored, until the API
answers.  Every figure is named with the stack it was measured on.

Results go to ``bench/results/<time>.json`` with the machine's description.
Medians are quoted: machines here are noisy.  Options: ``--quick`` for a
smaller run, ``--latency-runs``, ``--throughput-runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.create import create_lines, create_times  # noqa: E402
from bench.engine import cli_run, percentiles, sdk_run  # noqa: E402
from bench.output_bytes import live_tail, output_bytes, output_lines  # noqa: E402
from dispatcher.pool import default_size  # noqa: E402
from infra.local.stack import Stack, free_port  # noqa: E402

TEST_PY = 'print("hello opendevelop!")\n'
HELLO = "hello opendevelop!\n"


class Bench:
    def __init__(self, base: Path, slots: int, persistent: bool = False) -> None:
        self.name = f"bench{secrets.token_hex(2)}"
        self.stack = Stack(
            aws_port=free_port(),
            api_port=free_port(),
            table_prefix=self.name,
            state_dir=base / "state",
            log_dir=base / "logs",
            data_dir=base / "data" if persistent else None,
        )
        self.slots = slots
        self.session = requests.Session()
        self.docker = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)

    def start(self) -> None:
        self.stack.start_aws()
        demo = self.stack.bootstrap(slots=self.slots, servers=(self.name,))
        self.session.auth = (demo["app_id"], demo["secret"])
        self.app_id = demo["app_id"]
        self.stack.start_api()
        self.start_dispatcher(self.slots)

    def start_dispatcher(self, slots: int) -> None:
        self.stack.stop("dispatcher")
        proc = self.stack.start_dispatcher(self.name, name="dispatcher", extra=["--slots", str(slots)])
        log = self.stack.log_dir / "dispatcher.log"  # type: ignore[operator]
        deadline = time.monotonic() + 30
        while '"dispatcher.ready"' not in (log.read_text() if log.exists() else "").split("dispatcher.stopped")[-1]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dispatcher did not start")
            time.sleep(0.05)
        # Wait for a heartbeat with the new slots so the API routes work to it.
        time.sleep(0.5)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each process of the local stack has used so far."""
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for name, proc in self.stack.procs.items():
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def aws_calls(self) -> dict[str, int]:
        """The calls the local AWS endpoint has answered so far, per ``service:action``."""
        response = self.session.get(f"{self.stack.aws_url}/_opendevelop/calls", timeout=10)
        response.raise_for_status()
        return {str(k): int(v) for k, v in response.json().items()}

    def dispatcher_peak_rss_mb(self) -> float:
        pid = self.stack.procs["dispatcher"].pid
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024

    def submit(self, cmd: str = '["python test.py"]', files: dict[str, str] | None = None, **fields: str) -> str:
        parts: list[Any] = [("image", (None, "base")), ("cmd", (None, cmd)), ("timeout", (None, "30"))]
        parts += [(k, (None, v)) for k, v in fields.items()]
        parts += [("file", (n, c)) for n, c in (files if files is not None else {"test.py": TEST_PY}).items()]
        response = self.session.post(f"{self.stack.api_url}/api/sandboxes", files=parts, timeout=60)
        response.raise_for_status()
        return str(response.json()["id"])

    def wait(self, sandbox_id: str) -> dict[str, Any]:
        while True:
            response = self.session.get(
                f"{self.stack.api_url}/api/sandboxes/{sandbox_id}", params={"wait": "20"}, timeout=60
            )
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            if data["status"] not in ("queued", "running"):
                return data

    def settle(self, slots: int | None = None, timeout_s: float = 5.0) -> None:
        """Wait until the dispatcher has replaced the spare container a run took (see
        ``dispatcher/pool.py``), so that background work is not timed as the raw engine's."""
        want = default_size(slots or self.slots)
        deadline = time.monotonic() + timeout_s
        filters = {"label": f"opendevelop.server={self.name}", "name": "od-spare-", "status": "running"}
        while len(self.docker.api.containers(filters=filters)) < want and time.monotonic() < deadline:
            time.sleep(0.02)

    def one_run(self) -> float:
        started = time.perf_counter()
        done = self.wait(self.submit())
        elapsed = time.perf_counter() - started
        assert done["status"] == "terminated" and done["logs"] == HELLO, done
        return elapsed


def latency(bench: Bench, runs: int) -> dict[str, Any]:
    bench.one_run()  # warm-up: the first run of each path pays for imports and connections
    sdk_run(bench.docker)
    cli_run()
    platform_s, sdk_s, cli_s = [], [], []
    bench.settle()
    for _ in range(runs):  # interleaved, so noise hits all three alike
        platform_s.append(bench.one_run())
        bench.settle()  # the pool's refill is not the raw engine's to pay for
        sdk_s.append(sdk_run(bench.docker))
        cli_s.append(cli_run())
    p, s, c = percentiles(platform_s), percentiles(sdk_s), percentiles(cli_s)
    return {
        "platform": p,
        "raw_sdk": s,
        "raw_cli": c,
        "ratio_p50_vs_sdk": p["p50"] / s["p50"],
        "ratio_p99_vs_sdk": p["p99"] / s["p99"],
        "ratio_p50_vs_cli": p["p50"] / c["p50"],
    }


def throughput(bench: Bench, runs: int, slot_counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for slots in slot_counts:
        bench.start_dispatcher(slots)
        # Pooled connections left idle since the last phase may have passed chalice local's idle timeout
        # (30 s): the server closed them, and a POST sent on one is reset.  Each phase starts with new ones.
        bench.session.close()
        cpu_before = bench.cpu_seconds()
        calls_before = bench.aws_calls()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            ids = list(pool.map(lambda _: bench.submit(), range(runs)))
            results = list(pool.map(bench.wait, ids))
        platform_wall = time.perf_counter() - started
        cpu_after = bench.cpu_seconds()
        calls = per_run(calls_before, bench.aws_calls(), runs)
        bench.settle(slots)
        bad = [r for r in results if r["status"] != "terminated" or r["logs"] != HELLO]
        rss = bench.dispatcher_peak_rss_mb()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=slots) as pool:
            list(pool.map(lambda _: sdk_run(bench.docker), range(runs)))
        raw_wall = time.perf_counter() - started
        out[str(slots)] = {
            "runs": runs,
            "platform_wall_s": platform_wall,
            "platform_runs_per_s": runs / platform_wall,
            "raw_wall_s": raw_wall,
            "raw_runs_per_s": runs / raw_wall,
            "ratio": (runs / platform_wall) / (runs / raw_wall),
            "failed": len(bad),
            "failures": sorted({f"{r['status']}: {r['error'] or (r['logs'] or '')[:200]}" for r in bad})[:5],
            "dispatcher_peak_rss_mb": rss,
            # Core-seconds per run the local stack's own processes took from the machine the engine runs on.
            "stack_cpu_s_per_run": {name: (cpu_after[name] - cpu_before.get(name, 0.0)) / runs for name in cpu_after},
            "aws_calls_per_run": calls,
        }
    return out


def per_run(before: dict[str, int], after: dict[str, int], runs: int) -> dict[str, float]:
    """Calls per run, per ``service:action`` that was called in between."""
    return {k: (n - before.get(k, 0)) / runs for k, n in sorted(after.items()) if n > before.get(k, 0)}


def calls_line(calls: dict[str, float]) -> str:
    """``12.3: dynamodb 8.1 (UpdateItem 3.0, ...), sqs 3.2 (...)`` -- the total, then by service."""
    services: dict[str, dict[str, float]] = {}
    for key, n in calls.items():
        service, _, action = key.partition(":")
        services.setdefault(service, {})[action] = n
    parts = []
    for service, actions in sorted(services.items()):
        detail = ", ".join(f"{a} {n:.2f}" for a, n in sorted(actions.items(), key=lambda kv: -kv[1]))
        parts.append(f"{service} {sum(actions.values()):.2f} ({detail})")
    return f"{sum(calls.values()):.2f}: " + "; ".join(parts)


def api_times(bench: Bench, sizes: list[int], samples: int = 30) -> dict[str, Any]:
    """Seed rows straight into the table, then time GET one and the first page of the list."""
    from chalicelib import models
    from chalicelib.auth import new_id
    from chalicelib.models import Sandbox

    models.configure(bench.stack.settings())
    stored = Sandbox.count()  # the sizes are of the whole table: moto's Query walks all of it
    out: dict[str, Any] = {}
    for size in sizes:
        with Sandbox.batch_write() as batch:
            for _ in range(size - stored):
                batch.save(
                    Sandbox(
                        new_id(),
                        app_id=bench.app_id,
                        image="base",
                        docker_image="opendevelop/base:latest",
                        cmd=["python test.py"],
                        status="terminated",
                        return_code=0,
                        logs=HELLO,
                        stdout=HELLO,
                        limits={"timeout": 10},
                    )
                )
        stored = max(size, stored)
        one_id = next(iter(Sandbox.by_app.query(bench.app_id, limit=1))).sandbox_id
        get_s, page_s, query_s = [], [], []
        client = Sandbox._get_connection().connection.client
        for _ in range(samples):
            # The one DynamoDB call behind a page, made directly: what the local AWS endpoint takes.
            t = time.perf_counter()
            client.query(
                TableName=Sandbox.Meta.table_name,
                IndexName="by_app",
                KeyConditionExpression="app_id = :a",
                ExpressionAttributeValues={":a": {"S": bench.app_id}},
                Limit=50,
                ScanIndexForward=False,
            )
            query_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            bench.session.get(f"{bench.stack.api_url}/api/sandboxes/{one_id}", timeout=30).raise_for_status()
            get_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            page = bench.session.get(f"{bench.stack.api_url}/api/sandboxes", timeout=30)
            page.raise_for_status()
            page_s.append(time.perf_counter() - t)
        assert len(page.json()["sandboxes"]) == 50
        out[str(size)] = {
            "get_p50_ms": statistics.median(get_s) * 1000,
            "list_page_p50_ms": statistics.median(page_s) * 1000,
            "endpoint_query_p50_ms": statistics.median(query_s) * 1000,
            "rows_in_table": stored,
        }
    return out


def restart(bench: Bench, stored: int) -> dict[str, Any]:
    """The whole stack stopped, then started again with what it stores, until the API answers (make serve's
    start: the endpoints, the tables checked, the catalogue and server registered, the API, the dispatcher)."""
    bench.stack.stop_all()
    log = bench.stack.log_dir / "dispatcher.log"  # type: ignore[operator]
    seen = log.read_text().count('"dispatcher.ready"')
    started = time.perf_counter()
    bench.stack.start_aws()
    bench.stack.bootstrap(slots=bench.slots, servers=(bench.name,))
    bench.stack.start_dispatcher(bench.name, name="dispatcher", extra=["--slots", str(bench.slots)])  # as serve.py
    bench.stack.start_api()
    api_s = time.perf_counter() - started
    while log.read_text().count('"dispatcher.ready"') <= seen:
        if time.perf_counter() - started > 120:
            raise RuntimeError("the dispatcher did not start again")
        time.sleep(0.05)
    return {"sandboxes_stored": stored, "api_ready_s": api_s, "dispatcher_ready_s": time.perf_counter() - started}


def flood(bench: Bench) -> dict[str, Any]:
    script = "import sys\nb = b'a' * (1 << 20)\nfor _ in range(200): sys.stdout.buffer.write(b)\n"
    started = time.perf_counter()
    done = bench.wait(bench.submit('["python flood.py"]', {"flood.py": script}, output_kb="1024"))
    assert done["output_truncated"], done["status"]
    return {"seconds": time.perf_counter() - started, "dispatcher_peak_rss_mb": bench.dispatcher_peak_rss_mb()}


def artifacts(bench: Bench) -> dict[str, Any]:
    script = (
        "import os\nos.makedirs('out/many')\nfor i in range(9999): open(f'out/many/{i}', 'w').write('x')\n"
        "open('out/big.bin', 'wb').write(os.urandom(8 << 20))\n"
    )
    started = time.perf_counter()
    done = bench.wait(bench.submit('["python art.py"]', {"art.py": script}, artifacts_kb="10240"))
    assert done.get("artifacts_count") == 10000, (done["status"], done.get("artifacts_count"))
    return {"seconds": time.perf_counter() - started, "dispatcher_peak_rss_mb": bench.dispatcher_peak_rss_mb()}


def machine() -> dict[str, Any]:
    info = docker.from_env().info()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "docker": info.get("ServerVersion"),
        "cgroup": info.get("CgroupVersion"),
        "load_at_start": os.getloadavg(),
    }


def table(result: dict[str, Any]) -> str:
    lines = ["", f"measured on the {result.get('stack', 'moto')} stack"]
    lat = result.get("latency")
    if lat:
        lines += [
            "",
            "latency (s)           p50     p95     p99",
            *(
                f"  {name:<18}{lat[key]['p50']:7.3f} {lat[key]['p95']:7.3f} {lat[key]['p99']:7.3f}"
                for name, key in (
                    ("platform (HTTP)", "platform"),
                    ("raw Docker SDK", "raw_sdk"),
                    ("raw docker CLI", "raw_cli"),
                )
            ),
            f"  ratio vs SDK: p50 {lat['ratio_p50_vs_sdk']:.2f}x  p99 {lat['ratio_p99_vs_sdk']:.2f}x   "
            f"(targets: 1.10x, 1.50x)",
        ]
    if result.get("throughput"):
        runs = next(iter(result["throughput"].values()))["runs"]
        lines += [
            "",
            f"{f'throughput ({runs} at once)':<26}platform/s  raw/s  ratio  dispatcher peak RSS",
        ]
        for slots, t in result["throughput"].items():
            lines.append(
                f"  {slots} slots{'':<17}{t['platform_runs_per_s']:8.2f} {t['raw_runs_per_s']:6.2f} "
                f"{t['ratio']:6.2f}   {t['dispatcher_peak_rss_mb']:.0f} MB   (failed: {t['failed']})"
            )
        for slots, t in result["throughput"].items():
            if "stack_cpu_s_per_run" in t:
                used = " / ".join(f"{name} {1000 * v:.0f}" for name, v in sorted(t["stack_cpu_s_per_run"].items()))
                lines.append(f"  {slots} slots: CPU the local stack took per run (core-ms): {used}")
        for slots, t in result["throughput"].items():
            if t.get("aws_calls_per_run"):
                only = " (SQS only: dynalite and s3rver count nothing)" if result.get("stack") == "persistent" else ""
                lines.append(f"  {slots} slots: AWS calls per run{only} {calls_line(t['aws_calls_per_run'])}")
    if result.get("api"):
        lines += ["", "API (ms, p50)     GET one   first page   of which the endpoint's Query"]
        for size, a in result["api"].items():
            query = a.get("endpoint_query_p50_ms")
            lines.append(
                f"  {size:>6} stored  {a['get_p50_ms']:8.1f} {a['list_page_p50_ms']:11.1f}"
                + (f" {query:15.1f}" if query is not None else "")
            )
    if result.get("create"):
        lines += create_lines(result["create"])
    if result.get("restart"):
        r = result["restart"]
        lines += [
            "",
            f"restart with {r['sandboxes_stored']} sandboxes stored: API answers in {r['api_ready_s']:.1f} s, "
            f"dispatcher ready in {r['dispatcher_ready_s']:.1f} s (target <= 10 s)",
        ]
    if result.get("flood"):
        f = result["flood"]
        lines += [
            "",
            f"200 MB flood: {f['seconds']:.1f} s, dispatcher peak RSS {f['dispatcher_peak_rss_mb']:.0f} MB "
            "(target <= 150 MB)",
        ]
    if result.get("bytes"):
        lines += output_lines(result["bytes"])
    if "artifacts" in result:
        a = result["artifacts"]
        lines.append(
            f"artifacts (9,999 tiny files + 8 MiB): {a['seconds']:.1f} s, "
            f"dispatcher peak RSS {a['dispatcher_peak_rss_mb']:.0f} MB"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test of the bench itself)")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--create-runs", type=int, default=50)
    parser.add_argument("--throughput-runs", type=int, default=200)
    parser.add_argument("--stack", choices=["moto", "persistent"], default="moto", help="the AWS endpoints")
    parser.add_argument(
        "--parts",
        default="api,create,latency,throughput,flood,artifacts,bytes,restart",
        help="which measurements (also: tail, the live tail alone, which bytes includes)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.latency_runs, args.throughput_runs, args.create_runs = 10, 40, 20
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="od-bench-") as tmp:
        bench = Bench(Path(tmp), slots=2, persistent=args.stack == "persistent")
        result["stack"] = args.stack
        try:
            bench.start()
            # First, while the table holds only what it seeds: "100 stored" means 100 rows in all.
            if "api" in parts:
                print(f"[{args.stack}] API with 100 to 10,000 sandboxes stored ...", flush=True)
                result["api"] = api_times(bench, sizes)
            if "restart" in parts and args.stack == "persistent":
                print(f"[{args.stack}] restart with what is stored ...", flush=True)
                stored = max((a["rows_in_table"] for a in result.get("api", {}).values()), default=0)
                result["restart"] = restart(bench, stored)
            if "create" in parts:
                print(f"[{args.stack}] create: {args.create_runs} one after another ...", flush=True)
                result["create"] = create_times(bench, args.create_runs)
            if "latency" in parts:
                print(f"[{args.stack}] latency: {args.latency_runs} runs ...", flush=True)
                result["latency"] = latency(bench, args.latency_runs)
            if "throughput" in parts:
                print(f"[{args.stack}] throughput: {args.throughput_runs} at once, at 2, 4 and 8 slots ...", flush=True)
                result["throughput"] = throughput(bench, args.throughput_runs, [2, 4, 8])
            if "flood" in parts:
                print(f"[{args.stack}] 200 MB output flood ...", flush=True)
                bench.start_dispatcher(2)
                result["flood"] = flood(bench)
            if "artifacts" in parts:
                print(f"[{args.stack}] artifacts: 9,999 tiny files and one of 8 MiB ...", flush=True)
                bench.start_dispatcher(2)
                result["artifacts"] = artifacts(bench)
            if "bytes" in parts:
                print(
                    f"[{args.stack}] output as bytes: 4 floods of 10 + 10 MiB, the store rate, the live tail ...",
                    flush=True,
                )
                result["bytes"] = output_bytes(bench, rate_runs=3 if args.quick else 7)
            elif "tail" in parts:
                print(f"[{args.stack}] the live tail ...", flush=True)
                bench.start_dispatcher(2)
                result["bytes"] = {"tail": live_tail(bench)}
        finally:
            bench.stack.stop_all()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['when'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    threading.stack_size(512 * 1024)
    sys.exit(main())
