"""The create's latency, and what its quotas add to it: at most one DynamoDB round trip.

A create counts the app's quotas in three counters (``chalicelib/quotas.py``:
creates this minute, sandboxes at once, run seconds today), written at once.
Measured here, on the running bench stack: ``POST /api/sandboxes`` one after
another, the quotas' own share of each as the API logged it (``quota_ms`` of
``sandbox.created``), and one counter ``UpdateItem`` made directly against the
local AWS endpoint: the round trip the quotas may add.

On one machine a round trip is mostly the endpoint's own CPU, and the local
endpoint answers one request at a time: three writes cost three there however
they are sent.  DynamoDB's round trip is mostly the network's.  So the same
two figures are taken again from this process through a proxy that holds each
request ``DELAY_MS`` before passing it on (a far region's latency):
``quotas.take`` beside one ``UpdateItem``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import statistics
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tests.integration.tcp_proxy import pump

if TYPE_CHECKING:
    from bench.run import Bench

DELAY_MS = 30


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
        "with_network_latency": _through_delay(bench, samples),
    }


def _through_delay(bench: Bench, samples: int) -> dict[str, Any]:
    """``quotas.take`` and one ``UpdateItem`` from here, each request held ``DELAY_MS`` on its way."""
    from chalicelib import models, quotas
    from chalicelib.models import App, Counter

    port = _start_delay_proxy(bench.stack.aws_port, DELAY_MS / 1000)
    settings = bench.stack.settings()
    far = dataclasses.replace(settings, aws_endpoint_url=f"http://127.0.0.1:{port}", service_endpoints={})
    models.configure(far)
    try:
        app = App.get(bench.app_id)
        update, take = [], []
        for i in range(samples):
            t = time.perf_counter()
            quotas.add("bench#round-trip", [Counter.n.add(1)], Counter.n < 10**9)
            update.append(time.perf_counter() - t)
            t = time.perf_counter()
            taken = quotas.take(app, far, 1, now=models.utcnow() + timedelta(days=400 + i), share=10**6)
            take.append(time.perf_counter() - t)
            quotas.give_back(taken)
    finally:
        models.configure(settings)
    update_ms, take_ms = statistics.median(update) * 1000, statistics.median(take) * 1000
    return {
        "delay_ms": DELAY_MS,
        "update_p50_ms": update_ms,
        "quotas_p50_ms": take_ms,
        "quotas_in_round_trips": take_ms / update_ms,
    }


def _start_delay_proxy(target_port: int, delay_s: float) -> int:
    """A TCP proxy on a free local port that holds each chunk from the client ``delay_s`` before passing it on."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(reader, up_writer, delay_s), pump(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
    return port


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
    d = c["with_network_latency"]
    return [
        "",
        f"create ({c['samples']} one after another, ms p50): POST {c['create_p50_ms']:.1f}, of which the quotas "
        f"{c['quotas_p50_ms']:.1f} = {c['quotas_in_round_trips']:.2f} x one counter UpdateItem "
        f"({c['counter_update_round_trip_p50_ms']:.1f}) (target <= 1 round trip more)",
        f"  with {d['delay_ms']} ms of network latency per request: the quotas {d['quotas_p50_ms']:.1f} = "
        f"{d['quotas_in_round_trips']:.2f} x one counter UpdateItem ({d['update_p50_ms']:.1f})",
    ]
