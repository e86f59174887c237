"""Operating the fleet: ``manage.py status``, the scaling signal, the scale-in steps, the metrics, the request log.

moto in-process; the Auto Scaling group is a recorder (``Hooks``): moto's
server has no lifecycle actions to heartbeat or complete, and nothing here
runs in a real group.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
from datetime import timedelta

import pytest
import requests
from test_dispatcher import FakeEngine, make, receive, submit

from chalicelib import admin, aws, reconciler, scale_in, status
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.reconciler import ReconcilerSettings
from dispatcher.metrics import Metrics

with pytest.MonkeyPatch.context() as _mp:
    _mp.setenv("OPENDEVELOP_NO_VENV", "1")
    import manage


@pytest.fixture
def cli(settings, capsys):
    def run(command_line: str) -> tuple[int, str]:
        code = manage.main(shlex.split(command_line))
        out, err = capsys.readouterr()
        assert code == 0, err
        return code, out

    return run


def beating(world, name: str, slots: int = 4, running: int = 0, state: str = "active") -> DockerServer:
    row = admin.server_create(world.settings, name, "unix:///var/run/docker.sock", slots=slots, replace=True)
    row.update(
        actions=[
            DockerServer.last_heartbeat.set(utcnow()),
            DockerServer.beat.add(1),
            DockerServer.running.set(running),
            DockerServer.state.set(state),
            DockerServer.images.set(["opendevelop/base:latest"]),
        ]
    )
    return row


def create(world) -> str:
    response = world.post_json({"image": "base", "cmd": ["echo hi"], "timeout": 5})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def set_running(sandbox_id: str, server: str, started_ago_s: float) -> None:
    Sandbox.get(sandbox_id).update(
        actions=[
            Sandbox.status.set("running"),
            Sandbox.server.set(server),
            Sandbox.started_at.set(utcnow() - timedelta(seconds=started_ago_s)),
            Sandbox.token.set("t"),
        ]
    )


# manage.py status


def test_status_shows_each_server_and_the_work_of_each_app(world, cli):
    world.server.delete()
    beating(world, "a", slots=4, running=2)
    beating(world, "b", slots=2, state="draining")
    queued = [create(world) for _ in range(3)]
    set_running(queued[0], "a", started_ago_s=1)  # within its 5 s
    set_running(queued[1], "a", started_ago_s=60)  # past its deadline: stuck
    b = DockerServer.get("b")
    aws.sqs(world.settings).send_message(QueueUrl=b.dlq_url, MessageBody=json.dumps({"sandbox_id": "x"}))

    _, out = cli("status --json")
    view = json.loads(out)

    servers = {s["name"]: s for s in view["servers"]}
    assert set(servers) == {"a", "b"}
    assert servers["a"]["state"] == "active" and servers["b"]["state"] == "draining"
    assert servers["a"]["slots"] == 4 and servers["a"]["running"] == 2
    assert 0 <= servers["a"]["heartbeat_age_s"] < 30
    assert servers["b"]["dead_letters"] == 1 and servers["a"]["dead_letters"] == 0
    # Three wake-ups went to the servers' queues when the sandboxes were created.
    assert servers["a"]["queue_depth"] + servers["b"]["queue_depth"] == 3
    assert servers["a"]["images"] == ["opendevelop/base:latest"]
    assert view["apps"] == [{"app_id": world.app_id, "queued": 1, "running": 2, "stuck": 1}]
    assert view["totals"]["queued"] == 1 and view["totals"]["stuck"] == 1
    assert view["totals"]["free_slots"] == 2  # a: 4 - 2; b is draining
    assert view["totals"]["backlog_per_free_slot"] == 0.5

    _, text = cli("status")
    assert text.startswith("SERVERS")
    assert "HEARTBEAT_AGE_S" in text and "DEAD_LETTERS" in text and "STUCK" in text
    assert f"{world.app_id}  1" in text
    assert "TOTAL queued 1  running 2  stuck 1" in text


# The scaling signal


def test_backlog_per_free_slot_counts_only_healthy_servers_free_slots(world):
    world.server.delete()
    a = beating(world, "a", slots=4, running=1)  # 3 free
    b = beating(world, "b", slots=4, running=0, state="draining")  # not healthy
    c = beating(world, "c", slots=2, running=3)  # over-full: 0 free, never negative
    d = beating(world, "d", slots=8)
    d.update(actions=[DockerServer.dead.set(True)])  # judged dead
    servers = list(DockerServer.scan())

    assert status.free_slots(servers) == 3
    assert status.backlog_per_free_slot(6, servers) == 2.0
    assert status.backlog_per_free_slot(0, servers) == 0.0
    # No free slot anywhere: each queued sandbox counts whole.
    a.update(actions=[DockerServer.running.set(4)])
    assert status.backlog_per_free_slot(5, list(DockerServer.scan())) == 5.0
    assert status.backlog_per_free_slot(0, list(DockerServer.scan())) == 0.0
    assert {b.name, c.name} <= {s.name for s in servers}


def test_each_reconciler_pass_publishes_the_signal_in_embedded_metric_format(world):
    world.server.delete()
    beating(world, "a", slots=4, running=0)
    for _ in range(2):
        create(world)
    lines: list[str] = []

    reconciler.reconcile(world.settings, ReconcilerSettings(), publish=lines.append)

    (line,) = lines
    emf = json.loads(line)
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "OpenDevelop"
    assert directive["Dimensions"] == [["TablePrefix"]]
    assert "BacklogPerFreeSlot" in [m["Name"] for m in directive["Metrics"]]
    assert emf["TablePrefix"] == world.settings.table_prefix
    assert emf["BacklogPerFreeSlot"] == 0.5 and emf["QueuedSandboxes"] == 2 and emf["FreeSlots"] == 4
    assert abs(emf["_aws"]["Timestamp"] / 1000 - utcnow().timestamp()) < 60


# Scale-in


class Hooks:
    """The Auto Scaling group's side, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def heartbeat(self, hook: scale_in.Hook) -> None:
        self.calls.append(("heartbeat", hook.instance_id))

    def complete(self, hook: scale_in.Hook, result: str) -> None:
        self.calls.append((f"complete:{result}", hook.instance_id))


def event(settings, instance: str, group: str | None = None) -> dict[str, str]:
    return {
        "AutoScalingGroupName": group or scale_in.group_name(settings),
        "LifecycleHookName": "retire",
        "LifecycleActionToken": "tok-1",
        "EC2InstanceId": instance,
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
    }


def past_settling(name: str) -> None:
    since = utcnow() - timedelta(seconds=scale_in.SETTLE_S + 1)
    DockerServer.get(name).update(actions=[DockerServer.retiring_since.set(since)])


def test_scale_in_drains_waits_stops_then_deletes_and_completes(world):
    world.server.delete()
    old = beating(world, "i-0aaa", slots=2)
    beating(world, "i-0bbb", slots=2)
    running, waiting = create(world), create(world)
    set_running(running, "i-0aaa", started_ago_s=1)
    Sandbox.get(waiting).update(actions=[Sandbox.server.set("i-0aaa")])
    hooks = Hooks()

    first = scale_in.begin(world.settings, event(world.settings, "i-0aaa"), hooks)

    assert first is not None and first.phase == "draining" and first.running == 1 and first.moved == 1
    assert DockerServer.get("i-0aaa").state == "draining"
    assert Sandbox.get(waiting).server == "i-0bbb"  # moved to a ready server now
    assert hooks.calls == [("heartbeat", "i-0aaa")]
    # Stepped again while it still runs: still waiting, heartbeating.
    assert scale_in.advance(world.settings, hooks) == [
        {"server": "i-0aaa", "phase": "draining", "running": 1, "moved": 0}
    ]

    Sandbox.get(running).update(actions=[Sandbox.status.set("terminated")])  # it finished there
    (step,) = scale_in.advance(world.settings, hooks)
    assert step["phase"] == "stopping"
    assert DockerServer.get("i-0aaa").state == "stopping"  # its dispatcher warm-stops at its next beat

    DockerServer.get("i-0aaa").update(actions=[DockerServer.last_heartbeat.remove()])  # as its clean stop does
    (step,) = scale_in.advance(world.settings, hooks)
    # Not deleted within SETTLE_S of the hook: an API process may still choose it from its cache.
    assert step["phase"] == "stopping"
    past_settling("i-0aaa")
    (step,) = scale_in.advance(world.settings, hooks)

    assert step["phase"] == "done"
    assert hooks.calls[-1] == ("complete:CONTINUE", "i-0aaa")
    assert [c for c, _ in hooks.calls].count("complete:CONTINUE") == 1
    assert [s.name for s in DockerServer.scan()] == ["i-0bbb"]
    urls = aws.sqs(world.settings).list_queues().get("QueueUrls", [])
    assert not [u for u in urls if old.queue_url == u or old.dlq_url == u]
    assert scale_in.advance(world.settings, hooks) == []  # nothing retiring any more


def test_scale_in_moves_a_parked_sandbox_without_waking_it(world):
    world.server.delete()
    beating(world, "i-0ddd", slots=2)
    target = beating(world, "i-0eee", slots=2)
    parked = create(world)
    Sandbox.get(parked).update(actions=[Sandbox.server.set("i-0ddd"), Sandbox.parked_app.set(world.app_id)])
    aws.sqs(world.settings).purge_queue(QueueUrl=target.queue_url)

    step = scale_in.begin(world.settings, event(world.settings, "i-0ddd"), Hooks())

    assert step is not None and step.moved == 1
    row = Sandbox.get(parked)
    assert (row.server, row.parked_app) == ("i-0eee", world.app_id)  # still parked: its app wakes it
    assert aws.queue_depth(world.settings, target.queue_url) == 0  # no wake-up beyond the app's share


def test_scale_in_of_a_dead_host_waits_for_the_reconciler_then_completes(world):
    world.server.delete()
    beating(world, "i-0ccc", slots=2)
    stuck = create(world)
    set_running(stuck, "i-0ccc", started_ago_s=1)
    DockerServer.get("i-0ccc").update(actions=[DockerServer.dead.set(True)])
    hooks = Hooks()

    assert scale_in.begin(world.settings, event(world.settings, "i-0ccc"), hooks).phase == "draining"
    Sandbox.get(stuck).update(actions=[Sandbox.status.set("queued")])  # the reconciler gave it back
    past_settling("i-0ccc")
    (step,) = scale_in.advance(world.settings, hooks)

    assert step["phase"] == "done"  # a dead dispatcher is not waited for
    assert hooks.calls[-1] == ("complete:CONTINUE", "i-0ccc")


def test_scale_in_of_an_unknown_instance_completes_at_once_and_another_groups_is_ignored(world):
    hooks = Hooks()
    assert scale_in.begin(world.settings, event(world.settings, "i-0nope"), hooks).phase == "done"
    assert hooks.calls == [("complete:CONTINUE", "i-0nope")]
    assert scale_in.begin(world.settings, event(world.settings, "local", group="someone-else"), hooks) is None
    assert DockerServer.get("local").state == "active"


def test_a_dispatcher_asked_to_stop_by_its_row_warm_stops(world):
    dispatcher = make(world, FakeEngine())
    admin.server_set_state("local", "draining")
    DockerServer.get("local").update(actions=[DockerServer.state.set("stopping")])
    dispatcher.duties.beat()  # its row comes back with the heartbeat's write

    dispatcher.serve()  # returns: the warm stop asked for by the row

    assert dispatcher.flags.stopping.is_set()
    assert DockerServer.get("local").last_heartbeat is None  # a clean stop, which the scale-in waits for


# The dispatcher's metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_dispatcher_counts_its_runs_and_serves_them_on_localhost(world):
    metrics = Metrics()
    engine = FakeEngine()
    dispatcher = make(world, engine)
    dispatcher.metrics = dispatcher.pipeline.metrics = metrics
    for _ in range(2):
        submit(world, "hello")
        dispatcher.handle(receive(dispatcher))
    port = metrics.serve(free_port())

    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    assert 'opendevelop_runs_total{outcome="terminated"} 2.0' in body
    assert 'opendevelop_runs_total{outcome="error"} 0.0' in body
    assert "opendevelop_run_duration_seconds_count 2.0" in body
    assert "opendevelop_queue_wait_seconds_count 2.0" in body
    for name in ("opendevelop_engine_errors_total", "opendevelop_pool_takes_total", "opendevelop_slots_busy"):
        assert name in body
    metrics.pool_take(True)
    metrics.pool_take(False)
    metrics.pool_take(False)
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'opendevelop_pool_takes_total{result="miss"} 2.0' in body
    with pytest.raises(requests.ConnectionError):
        # Only the loopback address listens.
        requests.get(f"http://{_other_local_address()}:{port}/metrics", timeout=2)


def _other_local_address() -> str:
    """127.0.0.2 is the host itself too, but not the address the metrics listen on."""
    return "127.0.0.2"


def test_metrics_are_off_unless_a_port_is_set():
    from dispatcher.settings import DispatcherSettings

    assert DispatcherSettings.from_env(server="x", environ={}).metrics_port == 0
    assert DispatcherSettings.from_env(server="x", environ={"OPENDEVELOP_METRICS_PORT": "9464"}).metrics_port == 9464
    assert Metrics().serve(0) == 0


# The API's request log


def test_the_api_logs_one_json_line_per_request_with_its_latency(world, caplog):
    caplog.set_level(logging.INFO, logger="opendevelop.api")
    world.get("/api/images")
    world.get("/api/sandboxes/0123456789abcdef")

    lines = [json.loads(r.getMessage()) for r in caplog.records if '"api.request"' in r.getMessage()]

    assert [(line["method"], line["status"]) for line in lines] == [("GET", 200), ("GET", 404)]
    assert all(isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0 for line in lines)
    assert lines[1]["path"] == "/api/sandboxes/{sandbox_id}"  # the route, with its id apart
    assert lines[1]["sandbox_id"] == "0123456789abcdef"


# A host registering itself (what the launch template's user-data runs)


def test_a_host_registers_itself_once_with_its_queues(world, monkeypatch):
    from dispatcher.__main__ import main

    monkeypatch.setenv("OPENDEVELOP_SERVER", "i-0fff")
    monkeypatch.setenv("OPENDEVELOP_SLOTS", "3")

    assert main(["--register-only"]) == 0
    row = DockerServer.get("i-0fff")
    assert (row.url, row.slots, row.state, row.runtime) == ("unix:///var/run/docker.sock", 3, "active", "runc")
    assert aws.queue_depth(world.settings, row.queue_url) == 0 and aws.queue_depth(world.settings, row.dlq_url) == 0

    row.update(actions=[DockerServer.state.set("draining")])
    assert main(["--register-only"]) == 0  # registered already: left as it is
    assert DockerServer.get("i-0fff").state == "draining"


def test_a_retired_servers_dispatcher_will_not_serve_it(world, monkeypatch):
    from dispatcher.__main__ import RETIRED, main

    DockerServer.get("local").update(actions=[DockerServer.state.set("stopping")])
    monkeypatch.setenv("OPENDEVELOP_SERVER", "local")

    assert main([]) == RETIRED
