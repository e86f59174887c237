"""Batches and webhooks (#15), measured on a local stack of its own: ``make bench`` runs it after
``bench/run.py`` (a command of its own: it uses run's ``Bench``, and modules never import in a cycle).

    python bench/batches.py [--quick]

* cost per sandbox of creating 100 ``echo`` sandboxes with one
  ``POST /api/sandboxes/batch`` beside 100 single ``POST /api/sandboxes``:
  the AWS calls the API made (as the local endpoint counted them, with the
  dispatcher and the webhook poller stopped, so only the API's) and the API
  process's CPU;
* time from the POST to all 100 settled, both ways (the single POSTs sent 8 at
  once), read back with ``GET /api/sandboxes?ids=...&wait=20``;
* webhooks: from ``terminated`` written (the row's ``finished_at``) to a
  receiver on 127.0.0.1 having the request, p50 and p95 over sandboxes run
  one after another.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine import percentiles  # noqa: E402
from bench.run import Bench  # noqa: E402
from infra.local.stack import free_port  # noqa: E402

ECHO = {"image": "base", "cmd": ["echo hi"], "timeout": 30}


class Receiver:
    """Records when each webhook arrived (this machine's clock, the dispatcher's too)."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                at = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.arrived.setdefault(body["id"], at)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _aws_requests(bench: Any) -> dict[str, int]:
    """What the local AWS endpoint has answered so far, per ``service:action`` (``infra/local/moto_calls.py``)."""
    calls: dict[str, int] = bench.aws_calls()
    return calls


def _settle_all(bench: Any, ids: list[str], timeout_s: float = 300) -> float:
    """Wait (GET ?ids=&wait=20, 100 at a time) until every sandbox has settled; when that was seen."""
    deadline = time.monotonic() + timeout_s
    left = list(ids)
    while left:
        assert time.monotonic() < deadline, f"{len(left)} sandboxes still unsettled"
        got = bench.session.get(
            f"{bench.stack.api_url}/api/sandboxes", params={"ids": ",".join(left[:100]), "wait": "20"}, timeout=60
        ).json()["sandboxes"]
        done = {s["id"] for s in got if s["status"] not in ("queued", "running")}
        left = [i for i in left if i not in done]
    return time.perf_counter()


def _post_batch(bench: Any, n: int) -> list[str]:
    response = bench.session.post(
        f"{bench.stack.api_url}/api/sandboxes/batch", json={"sandboxes": [ECHO] * n}, timeout=120
    )
    assert response.status_code == 201, response.text
    return [s["id"] for s in response.json()["sandboxes"]]


def _post_singles(bench: Any, n: int, at_once: int = 8) -> list[str]:
    def one(_: int) -> str:
        response = bench.session.post(f"{bench.stack.api_url}/api/sandboxes", json=ECHO, timeout=60)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(at_once) as pool:
        return list(pool.map(one, range(n)))


def _cost(bench: Any, post: Any, n: int) -> tuple[dict[str, Any], list[str]]:
    """The API's AWS requests and CPU per sandbox for ``post`` (the dispatcher and the webhook poller
    stopped, no reconciler: only the API talks to the endpoint)."""
    calls, cpu = _aws_requests(bench), bench.cpu_seconds()["api"]
    started = time.perf_counter()
    ids = post(bench, n)
    wall = time.perf_counter() - started
    calls_after, cpu_after = _aws_requests(bench), bench.cpu_seconds()["api"]
    by_kind = {k: (v - calls.get(k, 0)) / n for k, v in calls_after.items() if v != calls.get(k, 0)}
    return {
        "aws_requests_per_sandbox": sum(by_kind.values()),
        "aws_requests_by_kind": by_kind,
        "api_cpu_ms_per_sandbox": (cpu_after - cpu) * 1000 / n,
        "post_wall_s": wall,
    }, ids


def measure(bench: Any, webhook_port: int, n: int = 100, hooks: int = 30) -> dict[str, Any]:
    """The figures above, on ``bench``'s stack (its webhook poller running, ``webhook_port`` allowed)."""
    out: dict[str, Any] = {"n": n}
    bench.stack.stop("dispatcher")
    bench.stack.stop("webhooks")
    out["singles_cost"], singles = _cost(bench, _post_singles, n)
    out["batch_cost"], batch = _cost(bench, _post_batch, n)
    bench.stack.start_webhooks()
    bench.start_dispatcher(bench.slots)
    _settle_all(bench, singles + batch)
    bench.settle()
    started = time.perf_counter()
    out["batch_settled_s"] = _settle_all(bench, _post_batch(bench, n)) - started
    bench.settle()
    started = time.perf_counter()
    out["singles_settled_s"] = _settle_all(bench, _post_singles(bench, n)) - started
    receiver = Receiver(webhook_port)
    try:
        lags = []
        for _ in range(hooks):
            body = {**ECHO, "callback_url": f"http://127.0.0.1:{webhook_port}/hook"}
            sandbox_id = bench.session.post(f"{bench.stack.api_url}/api/sandboxes", json=body, timeout=60).json()["id"]
            _settle_all(bench, [sandbox_id])
            deadline = time.monotonic() + 30
            while sandbox_id not in receiver.arrived:
                assert time.monotonic() < deadline, "a webhook did not arrive within 30 s"
                time.sleep(0.005)
            row = bench.session.get(f"{bench.stack.api_url}/api/sandboxes/{sandbox_id}", timeout=30).json()
            finished = datetime.fromisoformat(row["finished_at"].replace("Z", "+00:00")).timestamp()
            lags.append(receiver.arrived[sandbox_id] - finished)
    finally:
        receiver.stop()
    out["webhook_lag_s"] = percentiles(lags)
    return out


def table(result: dict[str, Any]) -> str:
    b, s = result["batch_cost"], result["singles_cost"]
    lag = result["webhook_lag_s"]
    return "\n".join(
        [
            f"{result['n']} echo sandboxes        one batch POST   {result['n']} single POSTs (8 at once)",
            f"  POST -> all settled     {result['batch_settled_s']:8.1f} s       {result['singles_settled_s']:8.1f} s",
            f"  AWS requests / sandbox  {b['aws_requests_per_sandbox']:8.2f}"
            f"         {s['aws_requests_per_sandbox']:8.2f}",
            f"  API CPU / sandbox       {b['api_cpu_ms_per_sandbox']:8.1f} ms"
            f"      {s['api_cpu_ms_per_sandbox']:8.1f} ms",
            f"  the POSTs' wall time    {b['post_wall_s']:8.2f} s       {s['post_wall_s']:8.2f} s",
            f"webhook: terminated written -> receiver has it: p50 {lag['p50'] * 1000:.0f} ms, "
            f"p95 {lag['p95'] * 1000:.0f} ms, max {lag['max'] * 1000:.0f} ms ({lag['n']} runs)",
        ]
    )


def main() -> int:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix="od-bench-") as tmp:
        bench = Bench(Path(tmp), slots=2)
        # Webhooks may reach this bench's receiver, and nothing else.
        port = free_port()
        bench.stack.extra_env = {"OPENDEVELOP_WEBHOOK_ALLOW": f"127.0.0.1:{port}"}
        try:
            bench.start()
            bench.stack.start_webhooks()
            result = measure(bench, port, n=100, hooks=10 if quick else 30)
        finally:
            bench.stack.stop_all()
    print(table(result))
    out = ROOT / "bench" / "results" / f"batches-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
