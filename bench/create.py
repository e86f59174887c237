"""The create's latency, and what its quotas add to it: at most one DynamoDB round trip.

A create counts the app's quotas in three counters (``chalicelib/quotas.py``:
creates this minute, sandboxes at once, run seconds today), written at once.
Measured here, on the running bench stack: ``POST /api/sandboxes`` one after
another, the quotas' own share of each as the API logged it (``quota_ms`` of
``sandbox.created``), and one counter ``UpdateItem`` made directly against the
local AWS endpoint: the round trip the quotas may add.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Bench


def create_times(bench: Bench, samples: int) -> dict[str, Any]:
    from chalicelib import models
    from chalicelib.models import Counter

    models.configure(bench.stack.settings())
    client = Counter._get_connection().connection.client
    round_trip_s = []
    for _ in range(samples):
        t = time.perf_counter()
        client.update_item(
            TableName=Counter.Meta.table_name,
            Key={"key": {"S": "bench#round-trip"}},
            UpdateExpression="ADD n :one",
            ConditionExpression="attribute_not_exists(n) OR n < :most",
            ExpressionAttributeValues={":one": {"N": "1"}, ":most": {"N": "1000000"}},
        )
        round_trip_s.append(time.perf_counter() - t)
    bench.submit(cmd='["true"]', files={})  # warm-up
    create_s, ids = [], []
    for _ in range(samples):
        t = time.perf_counter()
        ids.append(bench.submit(cmd='["true"]', files={}))
        create_s.append(time.perf_counter() - t)
    quota_ms = _logged_quota_ms(bench, set(ids))
    for sandbox_id in ids:
        bench.wait(sandbox_id)
    rt_ms = statistics.median(round_trip_s) * 1000
    quotas_ms = statistics.median(quota_ms) if quota_ms else float("nan")
    return {
        "samples": samples,
        "create_p50_ms": statistics.median(create_s) * 1000,
        "quotas_p50_ms": quotas_ms,
        "counter_update_round_trip_p50_ms": rt_ms,
        "quotas_in_round_trips": quotas_ms / rt_ms,
    }


def _logged_quota_ms(bench: Bench, ids: set[str]) -> list[float]:
    log = bench.stack.log_dir / "api.log"  # type: ignore[operator]
    out = []
    for line in log.read_text().splitlines():
        if '"sandbox.created"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("sandbox_id") in ids and "quota_ms" in event:
            out.append(float(event["quota_ms"]))
    return out


def create_lines(c: dict[str, Any]) -> list[str]:
    return [
        "",
        f"create ({c['samples']} one after another, ms p50): POST {c['create_p50_ms']:.1f}, of which the quotas "
        f"{c['quotas_p50_ms']:.1f} = {c['quotas_in_round_trips']:.2f} x one counter UpdateItem "
        f"({c['counter_update_round_trip_p50_ms']:.1f}) (target <= 1 round trip more)",
    ]
