"""What an operator sees (``./manage.py status``) and the scaling signal the reconciler publishes.

``gather`` reads every server, its two queues' depths and the ``queued`` and
``running`` rows (through the ``by_status`` index) once, and answers per
server (state, heartbeat age, slots, running, queue depth, dead letters,
images) and per app (queued, running, stuck: running past its deadline).

``backlog_per_free_slot`` is the Auto Scaling group's target-tracking metric:
queued sandboxes divided by the free slots of the healthy servers (slots less
running, never below 0).  With no free slot at all each queued sandbox counts
whole (the metric is then the queue's length), so a full fleet with a backlog
scales out and an idle one (0) scales in.  ``emf_line`` is that figure in
CloudWatch's embedded metric format: a Lambda log line CloudWatch turns into
the metric, without any API call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from chalicelib import aws
from chalicelib.errors import Unavailable
from chalicelib.liveness import is_healthy
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.settings import Settings

NAMESPACE = "OpenDevelop"
METRIC = "BacklogPerFreeSlot"


def free_slots(servers: Iterable[DockerServer]) -> int:
    return sum(max(0, int(s.slots or 0) - int(s.running or 0)) for s in servers if is_healthy(s))


def backlog_per_free_slot(queued: int, servers: Iterable[DockerServer]) -> float:
    """Queued ÷ free slots over healthy servers (see the module's docstring for 0 free slots)."""
    free = free_slots(servers)
    return round(queued / free, 3) if free else float(queued)


def emf_line(table_prefix: str, queued: int, servers: list[DockerServer], when: datetime | None = None) -> str:
    """One JSON log line that CloudWatch reads as the metric ``OpenDevelop/BacklogPerFreeSlot{TablePrefix}``
    (the stack's prefix: two stacks in one account keep their signals apart)."""
    when = when or utcnow()
    return json.dumps(
        {
            "_aws": {
                "Timestamp": int(when.timestamp() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": NAMESPACE,
                        "Dimensions": [["TablePrefix"]],
                        "Metrics": [
                            {"Name": METRIC, "Unit": "None"},
                            {"Name": "QueuedSandboxes", "Unit": "Count"},
                            {"Name": "FreeSlots", "Unit": "Count"},
                        ],
                    }
                ],
            },
            "TablePrefix": table_prefix,
            "event": "reconcile.metrics",
            METRIC: backlog_per_free_slot(queued, servers),
            "QueuedSandboxes": queued,
            "FreeSlots": free_slots(servers),
        }
    )


def _depth(settings: Settings, url: str) -> int | None:
    if not url:
        return None
    try:
        return aws.queue_depth(settings, url)
    except Unavailable:
        return None  # shown as unknown: the queue is gone or unreachable


def _deadline_passed(row: Sandbox, now: datetime) -> bool:
    timeout = float((row.limits or {}).get("timeout") or 0)
    return row.started_at is not None and row.started_at + timedelta(seconds=timeout) < now


def gather(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """The whole view as JSON-able data (``./manage.py status --json`` prints it as it is)."""
    now = now or utcnow()
    servers = sorted(DockerServer.scan(consistent_read=True), key=lambda s: s.name)
    queued = list(Sandbox.by_status.query("queued"))
    running = list(Sandbox.by_status.query("running"))
    apps: dict[str, dict[str, int]] = {}
    for status, rows in (("queued", queued), ("running", running)):
        for row in rows:
            counts = apps.setdefault(row.app_id or "?", {"queued": 0, "running": 0, "stuck": 0})
            counts[status] += 1
            if status == "running" and _deadline_passed(row, now):
                counts["stuck"] += 1
    shown = []
    for s in servers:
        beat = s.last_heartbeat
        shown.append(
            {
                "name": s.name,
                "state": ("dead" if s.dead else s.state) + ("" if s.engine_ok is not False else " (engine broken)"),
                "heartbeat_age_s": round((now - beat).total_seconds(), 1) if beat is not None else None,
                "slots": int(s.slots or 0),
                "running": int(s.running or 0),
                "queue_depth": _depth(settings, s.queue_url),
                "dead_letters": _depth(settings, s.dlq_url),
                "images": sorted(str(i) for i in s.images or []),
                "retiring": bool(s.retiring),
            }
        )
    totals = {k: sum(a[k] for a in apps.values()) for k in ("queued", "running", "stuck")}
    return {
        "at": now.isoformat(),
        "servers": shown,
        "apps": [{"app_id": app_id, **counts} for app_id, counts in sorted(apps.items())],
        "totals": {
            **totals,
            "free_slots": free_slots(servers),
            "backlog_per_free_slot": backlog_per_free_slot(len(queued), servers),
        },
    }


def as_text(view: dict[str, Any]) -> str:
    """The view as the tables ``./manage.py status`` prints."""

    def table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
        if not rows:
            return ["(none)"]
        shown = [{c: _cell(r.get(c)) for c in columns} for r in rows]
        widths = {c: max(len(c), *(len(r[c]) for r in shown)) for c in columns}
        return ["  ".join(c.upper().ljust(widths[c]) for c in columns)] + [
            "  ".join(r[c].ljust(widths[c]) for c in columns) for r in shown
        ]

    totals = view["totals"]
    lines = ["SERVERS"]
    lines += table(
        view["servers"],
        ["name", "state", "heartbeat_age_s", "slots", "running", "queue_depth", "dead_letters", "images"],
    )
    lines += ["", "APPS"]
    lines += table(view["apps"], ["app_id", "queued", "running", "stuck"])
    lines += [
        "",
        f"TOTAL queued {totals['queued']}  running {totals['running']}  stuck {totals['stuck']}  "
        f"free slots {totals['free_slots']}  backlog per free slot {totals['backlog_per_free_slot']}",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)
