"""The dispatcher's Prometheus metrics, served on 127.0.0.1 (``OPENDEVELOP_METRICS_PORT``; 0, the default: off).

Each dispatcher process has its own registry (tests run several in one
process), made by ``Metrics()``; the pipeline, the pool and the main loop
count into it.  Only 127.0.0.1: a scraper on the host (node exporter's
textfile, a Prometheus agent, an ssh tunnel) reads it; nothing from outside.

    opendevelop_runs_total{outcome}           runs that ended, by outcome (see OUTCOMES)
    opendevelop_run_duration_seconds          a run's wall time in its container (histogram)
    opendevelop_queue_wait_seconds            created -> claimed (histogram; two hosts' clocks: approximate)
    opendevelop_engine_errors_total           failures the engine is to blame for
    opendevelop_pool_takes_total{result}      a spare container was ready ("hit") or not ("miss")
    opendevelop_slots / opendevelop_slots_busy    sandboxes this dispatcher may run at once / runs now
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from chalicelib.models import utcnow

# Every label value ``outcome`` takes.
OUTCOMES = ("terminated", "timed_out", "oom_killed", "error", "given_back", "cancelled")
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("opendevelop_runs", "Runs that ended, by outcome", ["outcome"], registry=r)
        self.duration = Histogram(
            "opendevelop_run_duration_seconds",
            "Wall time of a run in its container",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "opendevelop_queue_wait_seconds",
            "From the sandbox's creation (the API's clock) to its claim (this host's clock)",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.engine_errors = Counter("opendevelop_engine_errors", "Run failures the engine is to blame for", registry=r)
        self.pool_takes = Counter(
            "opendevelop_pool_takes", "Takes of a spare container: ready (hit) or not (miss)", ["result"], registry=r
        )
        self.slots = Gauge("opendevelop_slots", "Sandboxes this dispatcher may run at once", registry=r)
        self.slots_busy = Gauge("opendevelop_slots_busy", "Sandboxes this dispatcher runs now", registry=r)
        for outcome in OUTCOMES:
            self.runs.labels(outcome)  # every series exists from the start, at 0
        for result in ("hit", "miss"):
            self.pool_takes.labels(result)
        self.port = 0

    def serve(self, port: int) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: not at all); the port it listens on."""
        if port:
            server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
            self.port = int(server.server_address[1])
        return self.port

    def claimed(self, created_at: datetime | None) -> None:
        if created_at is not None:
            self.queue_wait.observe(max(0.0, (utcnow() - created_at).total_seconds()))

    def ended(self, outcome: str, duration_s: float | None = None) -> None:
        self.runs.labels(outcome).inc()
        if duration_s is not None:
            self.duration.observe(max(0.0, duration_s))

    def pool_take(self, hit: bool) -> None:
        self.pool_takes.labels("hit" if hit else "miss").inc()


def outcome_of(result: Any) -> str:
    """A recorded result's outcome label."""
    if getattr(result, "timed_out", False):
        return "timed_out"
    if getattr(result, "oom_killed", False):
        return "oom_killed"
    return "terminated"
