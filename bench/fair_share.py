"""``python bench/fair_share.py``: app B's latency while app A floods, beside B's on an idle stack.

Starts its own local stack (moto's server, ``chalice local``, one dispatcher
with 2 slots) on free ports, like ``bench/run.py``.  App B runs ``echo hi``
one after another (POST, then ``GET ?wait=20`` until it settles): first on
the idle stack, then while app A has ``--flood`` sandboxes of ``sleep
--sleep`` submitted at once.  The target (issue #13): B's p50 under the flood
at most 2x its idle p50 plus one of A's runs; the exit status is 1 when it
is missed.  ``make bench`` runs it after ``bench/run.py``; ``--quick`` is a
smaller run.  Results go to ``bench/results/fair-share-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import percentiles  # noqa: E402
from bench.run import Bench  # noqa: E402


def b_latencies(bench: Bench, session: requests.Session, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        response = session.post(
            f"{bench.stack.api_url}/api/sandboxes", json={"image": "base", "cmd": ["echo hi"]}, timeout=60
        )
        response.raise_for_status()
        sandbox_id = response.json()["id"]
        while True:
            got = session.get(f"{bench.stack.api_url}/api/sandboxes/{sandbox_id}", params={"wait": "20"}, timeout=60)
            got.raise_for_status()
            if got.json()["status"] not in ("queued", "running"):
                break
        assert got.json()["status"] == "terminated", got.json()
        out.append(time.perf_counter() - started)
    return out


def create_times(bench: Bench, session: requests.Session, samples: int) -> list[float]:
    """The POST alone (the API's work, quotas included), for an app with nothing in flight beyond the share."""
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        response = session.post(
            f"{bench.stack.api_url}/api/sandboxes", json={"image": "base", "cmd": ["true"]}, timeout=60
        )
        out.append(time.perf_counter() - started)
        response.raise_for_status()
        sandbox_id = response.json()["id"]
        while session.get(
            f"{bench.stack.api_url}/api/sandboxes/{sandbox_id}", params={"wait": "20"}, timeout=60
        ).json()["status"] in ("queued", "running"):
            pass
    return out


QUICK = {"flood": 12, "sleep": 2.0, "runs": 3}  # ``--quick``: a smoke test of the bench itself


def measure(flood: int = 60, sleep: float = 5.0, runs: int = 10) -> dict[str, Any]:
    """B idle, then B while A floods, on a stack of its own; the figures and whether the target was met."""
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "args": {"flood": flood, "sleep": sleep, "runs": runs},
        "slots": 2,
    }
    with tempfile.TemporaryDirectory(prefix="od-fair-") as tmp:
        bench = Bench(Path(tmp), slots=2)
        try:
            bench.start()
            from chalicelib import admin

            app_b, secret_b = admin.app_create("b", "demo", settings=bench.stack.settings())
            b = requests.Session()
            b.auth = (app_b.app_id, secret_b)
            b_latencies(bench, b, 2)  # warm: images, spares, caches
            print(f"fair share: B idle, {runs} runs ...", flush=True)
            idle = b_latencies(bench, b, runs)
            result["create_s"] = percentiles(create_times(bench, b, 20))
            print(f"fair share: A floods, {flood} x sleep {sleep:g} ...", flush=True)
            cmd = [f"sleep {sleep:g}"]

            def post_a(_: int) -> int:
                response = bench.session.post(
                    f"{bench.stack.api_url}/api/sandboxes",
                    json={"image": "base", "cmd": cmd, "timeout": 30},
                    timeout=60,
                )
                return response.status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(post_a, range(flood)))
            result["flood_post_s"] = time.perf_counter() - started
            result["flood_statuses"] = {str(s): statuses.count(s) for s in set(statuses)}
            print(f"fair share: B under the flood, {runs} runs ...", flush=True)
            loaded = b_latencies(bench, b, runs)
            result["a_backlog_s"] = flood * sleep / 2
        finally:
            bench.stack.stop_all()
    result["b_idle_s"] = percentiles(idle)
    result["b_flooded_s"] = percentiles(loaded)
    target = 2 * statistics.median(idle) + sleep
    result["target_p50_s"] = target
    result["met"] = statistics.median(loaded) <= target
    return result


def summary(result: dict[str, Any]) -> str:
    """The lines ``make bench`` prints for fair share."""
    args, idle, flooded = result["args"], result["b_idle_s"], result["b_flooded_s"]
    return "\n".join(
        [
            f"Fair share (2 slots): app A floods {args['flood']} x sleep {args['sleep']:g} "
            f"(a backlog of {result['a_backlog_s']:.0f} s), app B runs echo hi {args['runs']} times",
            f"  B idle       p50 {idle['p50']:.2f} s  p95 {idle['p95']:.2f} s",
            f"  B under A    p50 {flooded['p50']:.2f} s  p95 {flooded['p95']:.2f} s  "
            f"(target p50 <= {result['target_p50_s']:.2f} s: {'met' if result['met'] else 'NOT met'})",
            f"  create (POST alone) p50 {result['create_s']['p50'] * 1000:.0f} ms",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=60, help="app A's sandboxes, submitted at once")
    parser.add_argument("--sleep", type=float, default=5.0, help="how long each of A's runs")
    parser.add_argument("--runs", type=int, default=10, help="app B's runs, idle and under the flood")
    parser.add_argument("--quick", action="store_true", help=f"a smaller run: {QUICK}")
    args = parser.parse_args()
    result = measure(**(QUICK if args.quick else {"flood": args.flood, "sleep": args.sleep, "runs": args.runs}))
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"fair-share-{result['when'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(summary(result))
    print(f"written to {path.relative_to(ROOT)}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
