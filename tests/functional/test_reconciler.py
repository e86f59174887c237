"""The reconciler: what crashes leave behind is re-routed, re-queued, re-woken or marked ``error``.

Each test sets up the state a crash would leave (a server that stopped
heartbeating, a lost message, a dead letter), runs one pass, and checks the
rows and the queues.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from chalicelib import admin, aws, reconciler
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.reconciler import ReconcilerSettings
from chalicelib.settings import SettingsError

CONFIG = ReconcilerSettings(max_attempts=3, resend_after_s=60, queued_max_s=3600)
NOTHING = {
    "dead_lettered": 0,
    "requeued": 0,
    "failed": 0,
    "rerouted": 0,
    "rewoken": 0,
    "webhooks": 0,
    "released": 0,
    "errors": 0,
}


def create(world) -> str:
    response = world.post_json({"image": "base", "cmd": ["echo hi"]})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def server(
    world, name: str, alive: bool = True, state: str = "active", inflight=None, instance: str = "i-1"
) -> DockerServer:
    row = admin.server_create(world.settings, name, "unix:///var/run/docker.sock", replace=True)
    actions = [
        DockerServer.last_heartbeat.set(utcnow()),
        DockerServer.beat.add(1),
        DockerServer.state.set(state),
        DockerServer.instance.set(instance),
        DockerServer.dead.set(not alive),
    ]
    if inflight is not None:
        actions.append(DockerServer.inflight.set(inflight))
    row.update(actions=actions)
    return row


def kill(row: DockerServer) -> None:
    """As if its dispatcher died: the reconciler saw its beat five minutes ago (by its own clock), unchanged since."""
    row.refresh()
    row.update(
        actions=[DockerServer.seen_beat.set(row.beat), DockerServer.seen_at.set(utcnow() - timedelta(minutes=5))]
    )


def wakeups(world, row: DockerServer) -> list[str]:
    """The sandbox ids of the messages waiting on a server's queue, taken off it."""
    ids = []
    sqs = aws.sqs(world.settings)
    while True:
        got = sqs.receive_message(QueueUrl=row.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not got.get("Messages"):
            return ids
        ids += [json.loads(m["Body"])["sandbox_id"] for m in got["Messages"]]
        for m in got["Messages"]:
            sqs.delete_message(QueueUrl=row.queue_url, ReceiptHandle=m["ReceiptHandle"])


def run_as(sandbox_id: str, server_name: str, holder: str = "i-1", token: str = "t-1", network: bool = False) -> None:  # noqa: S107
    Sandbox(sandbox_id).update(
        actions=[
            Sandbox.status.set("running"),
            Sandbox.server.set(server_name),
            Sandbox.attempts.set(1),
            Sandbox.token.set(token),
            Sandbox.holder.set(holder),
            Sandbox.network.set(network),
            Sandbox.started_at.set(utcnow()),
        ]
    )


def suspected_long_ago(sandbox_id: str) -> None:
    Sandbox(sandbox_id).update(actions=[Sandbox.suspect_at.set(utcnow() - timedelta(hours=1))])


def run_on(sandbox_id: str, server_name: str, attempts: int = 1, started_ago_s: float = 1) -> None:
    Sandbox(sandbox_id).update(
        actions=[
            Sandbox.status.set("running"),
            Sandbox.server.set(server_name),
            Sandbox.attempts.set(attempts),
            Sandbox.started_at.set(utcnow() - timedelta(seconds=started_ago_s)),
        ]
    )


def reconcile(world, config: ReconcilerSettings = CONFIG) -> dict:
    return reconciler.reconcile(world.settings, config)


# Queued


def test_a_sandbox_queued_on_a_dead_server_moves_to_a_healthy_one(world):
    sandbox_id = create(world)  # on "local", the only server yet
    wakeups(world, world.server)  # its first wake-up is lost with the server
    spare = server(world, "spare")
    kill(world.server)

    report = reconcile(world)

    assert report["rerouted"] == 1
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.server) == ("queued", "spare")
    assert wakeups(world, spare) == [sandbox_id]
    assert reconcile(world)["rerouted"] == 0  # once


@pytest.mark.parametrize("state", ["draining", "disabled"])
def test_a_sandbox_queued_on_a_server_taken_out_of_service_moves(world, state):
    sandbox_id = create(world)
    spare = server(world, "spare")
    admin.server_set_state("local", state)

    assert reconcile(world)["rerouted"] == 1

    assert Sandbox.get(sandbox_id).server == "spare"
    assert wakeups(world, spare) == [sandbox_id]


def test_with_no_healthy_server_a_queued_sandbox_waits(world):
    sandbox_id = create(world)
    kill(world.server)
    server(world, "draining", state="draining")

    report = reconcile(world)

    assert report == NOTHING
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.server) == ("queued", "local")


def test_a_lost_wake_up_is_sent_again_once_the_row_has_waited_long_enough(world):
    sandbox_id = create(world)
    assert wakeups(world, world.server) == [sandbox_id]  # ... and then lost

    assert reconcile(world)["rewoken"] == 0  # too young: its message may be on its way
    Sandbox(sandbox_id).update(actions=[Sandbox.created_at.set(utcnow() - timedelta(seconds=61))])
    assert reconcile(world)["rewoken"] == 1

    assert wakeups(world, world.server) == [sandbox_id]
    assert Sandbox.get(sandbox_id).woken_at is not None
    assert reconcile(world)["rewoken"] == 0  # not again until another resend_after_s


def test_a_sandbox_no_server_takes_for_too_long_ends_in_error(world):
    sandbox_id = create(world)
    kill(world.server)
    Sandbox(sandbox_id).update(actions=[Sandbox.created_at.set(utcnow() - timedelta(hours=2))])

    assert reconcile(world)["failed"] == 1

    row = Sandbox.get(sandbox_id)
    assert row.status == "error" and "no Docker server took the sandbox" in row.error


# Running


def test_a_sandbox_running_on_a_dead_server_runs_again_elsewhere_once_its_deadline_passed(world):
    sandbox_id = create(world)
    run_on(sandbox_id, "local", attempts=1)
    spare = server(world, "spare")
    kill(world.server)

    # Its dispatcher may have died outright (no fence): the host's watchdog ends the container at its
    # deadline, so the run is waited out, by the reconciler's clock from its first sight, before it moves.
    assert reconcile(world) == NOTHING
    assert Sandbox.get(sandbox_id).suspect_at is not None
    assert reconcile(world)["requeued"] == 0
    assert Sandbox.get(sandbox_id).status == "running"

    suspected_long_ago(sandbox_id)
    assert reconcile(world)["requeued"] == 1

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.server, row.started_at, row.token) == ("queued", "spare", None, None)
    assert wakeups(world, spare) == [sandbox_id]


def test_a_sandbox_running_on_a_dead_server_after_its_last_attempt_ends_in_error(world):
    sandbox_id = create(world)
    run_on(sandbox_id, "local", attempts=3)
    server(world, "spare")
    kill(world.server)
    reconcile(world)
    suspected_long_ago(sandbox_id)

    assert reconcile(world)["failed"] == 1

    row = Sandbox.get(sandbox_id)
    assert row.status == "error"
    assert "server local stopped heartbeating" in row.error and "tried 3 times" in row.error


def test_a_sandbox_whose_dispatcher_came_back_as_a_new_instance_is_left_to_its_recovery_then_given_back(world):
    sandbox_id = create(world)
    run_as(sandbox_id, "local", holder="i-old")
    server(world, "local", instance="i-new", inflight=[])

    assert reconcile(world)["requeued"] == 0  # its recovery settles it first, if it can
    suspected_long_ago(sandbox_id)
    assert reconcile(world)["requeued"] == 1

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.token, row.holder) == ("queued", None, None)


def test_a_sandbox_running_on_a_live_server_is_left_alone(world):
    sandbox_id = create(world)
    run_on(sandbox_id, "local", started_ago_s=3600)

    assert reconcile(world)["requeued"] == 0  # a dispatcher that reports nothing in hand is not judged by it

    server(world, "local", inflight=[sandbox_id])
    run_on(sandbox_id, "local", started_ago_s=3600)
    assert reconcile(world)["requeued"] == 0
    assert Sandbox.get(sandbox_id).status == "running"


def test_a_sandbox_its_live_dispatcher_no_longer_holds_is_given_back(world):
    sandbox_id = create(world)
    server(world, "local", inflight=["someotherid00000"])
    run_as(sandbox_id, "local")

    assert reconcile(world)["requeued"] == 0  # noted, by the reconciler's clock: the next heartbeats may list it
    assert Sandbox.get(sandbox_id).suspect_at is not None
    assert reconcile(world)["requeued"] == 0  # not yet longer than any fence

    suspected_long_ago(sandbox_id)
    assert reconcile(world)["requeued"] == 1

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.server) == ("queued", "local")


def test_a_sandbox_whose_server_was_deleted_moves_on_once_it_has_waited(world):
    sandbox_id = create(world)
    run_on(sandbox_id, "gone")
    spare = server(world, "spare")
    kill(world.server)  # spare is then the one ready server

    assert reconcile(world)["requeued"] == 0  # nobody proves it stopped: waited out, by the reconciler's clock
    suspected_long_ago(sandbox_id)
    assert reconcile(world)["requeued"] == 1

    assert Sandbox.get(sandbox_id).server == "spare"
    assert wakeups(world, spare) == [sandbox_id]


# Dead letters


def dead_letter(world, row: DockerServer, sandbox_id: str) -> None:
    aws.sqs(world.settings).send_message(QueueUrl=row.dlq_url, MessageBody=json.dumps({"sandbox_id": sandbox_id}))


def dead_letter_by_receives(world, sandbox_id: str) -> None:
    """Received MAX_RECEIVES times and never deleted (each time its handling failed): SQS moves it on."""
    sqs = aws.sqs(world.settings)
    for _ in range(aws.MAX_RECEIVES):
        got = sqs.receive_message(QueueUrl=world.server.queue_url, WaitTimeSeconds=0, VisibilityTimeout=0)
        assert [json.loads(m["Body"])["sandbox_id"] for m in got["Messages"]] == [sandbox_id]
    assert "Messages" not in sqs.receive_message(QueueUrl=world.server.queue_url, WaitTimeSeconds=0)


def test_a_dead_letter_of_a_readable_queued_sandbox_wakes_it_again_outages_do_not_fail_work(world):
    sandbox_id = create(world)
    dead_letter_by_receives(world, sandbox_id)

    report = reconcile(world)

    assert (report["dead_lettered"], report["rewoken"]) == (0, 1)
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.dead_letters) == ("queued", 1)
    assert wakeups(world, world.server) == [sandbox_id]


def test_a_message_that_keeps_reaching_the_dead_letter_queue_ends_its_sandbox_in_error(world):
    sandbox_id = create(world)
    sqs = aws.sqs(world.settings)
    for _ in range(CONFIG.max_attempts):  # woken again each time, and each time dead-lettered again
        dead_letter_by_receives(world, sandbox_id)
        assert reconcile(world)["rewoken"] == 1
    dead_letter_by_receives(world, sandbox_id)

    assert reconcile(world)["dead_lettered"] == 1

    row = Sandbox.get(sandbox_id)
    assert row.status == "error"
    assert "dead-letter queue" in row.error and f"failed {aws.MAX_RECEIVES} deliveries" in row.error
    assert "Messages" not in sqs.receive_message(QueueUrl=world.server.dlq_url, WaitTimeSeconds=0)


def test_a_dead_letter_for_a_finished_sandbox_changes_nothing(world):
    sandbox_id = create(world)
    Sandbox(sandbox_id).update(actions=[Sandbox.status.set("terminated"), Sandbox.return_code.set(0)])
    dead_letter(world, world.server, sandbox_id)

    assert reconcile(world)["dead_lettered"] == 0

    assert Sandbox.get(sandbox_id).status == "terminated"
    assert "Messages" not in aws.sqs(world.settings).receive_message(QueueUrl=world.server.dlq_url)


def test_a_sandbox_with_network_is_never_run_again_after_its_start(world):
    sandbox_id = create(world)
    run_as(sandbox_id, "local", network=True, holder="i-old")
    server(world, "local", instance="i-new", inflight=[])  # its dispatcher was replaced
    reconcile(world)
    suspected_long_ago(sandbox_id)

    report = reconcile(world)

    assert (report["requeued"], report["failed"]) == (0, 1)
    row = Sandbox.get(sandbox_id)
    assert row.status == "error" and "network access" in row.error and "not run again" in row.error


def test_liveness_never_compares_the_dispatchers_clock_with_the_reconcilers(world):
    sandbox_id = create(world)
    run_as(sandbox_id, "local")
    # The dispatcher's clock is an hour behind: its heartbeat time looks ancient, but its beat moves.
    world.server.update(actions=[DockerServer.last_heartbeat.set(utcnow() - timedelta(hours=1))])
    for _ in range(3):
        world.server.update(actions=[DockerServer.beat.add(1), DockerServer.inflight.set([sandbox_id])])
        assert reconcile(world)["requeued"] == 0
    assert not DockerServer.get("local").dead

    kill(world.server)  # now the beat stops (seen unchanged for five minutes by the reconciler)
    assert reconcile(world)["requeued"] == 0  # dead by the reconciler's clock: its run is waited out ...
    assert DockerServer.get("local").dead
    suspected_long_ago(sandbox_id)
    assert reconcile(world)["requeued"] == 1  # ... then run again


def test_a_backlog_costs_no_wake_ups_while_its_queue_holds_a_message_for_every_row(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "5")  # every row woken: none parked beyond the 2 slots
    world.reload_settings()
    ids = [create(world) for _ in range(5)]
    for sandbox_id in ids:
        Sandbox(sandbox_id).update(actions=[Sandbox.created_at.set(utcnow() - timedelta(seconds=61))])

    assert reconcile(world)["rewoken"] == 0  # five rows, five messages: none is lost

    assert sorted(wakeups(world, world.server)) == sorted(ids)  # all five messages are lost ...
    sqs = aws.sqs(world.settings)
    sqs.send_message(QueueUrl=world.server.queue_url, MessageBody=json.dumps({"sandbox_id": ids[0]}))  # ... one found
    assert reconcile(world)["rewoken"] == 4  # only as many as the queue is short of


def test_a_dead_letter_for_a_sandbox_a_live_dispatcher_holds_is_dropped(world):
    sandbox_id = create(world)
    run_on(sandbox_id, "local")
    server(world, "local", inflight=[sandbox_id])
    dead_letter(world, world.server, sandbox_id)

    assert reconcile(world)["dead_lettered"] == 0

    assert Sandbox.get(sandbox_id).status == "running"


def test_a_malformed_row_is_skipped_and_logged_and_the_others_are_settled(world, caplog):
    bad, good = create(world), create(world)
    wakeups(world, world.server)
    for sandbox_id in (bad, good):
        Sandbox(sandbox_id).update(actions=[Sandbox.created_at.set(utcnow() - timedelta(seconds=61))])
    table = f"{world.settings.table_prefix}-sandboxes"
    Sandbox._get_connection().connection.client.update_item(
        TableName=table,
        Key={"sandbox_id": {"S": bad}},
        UpdateExpression="SET attempts = :bad",  # a projected attribute of the wrong type
        ExpressionAttributeValues={":bad": {"S": "three"}},
    )

    report = reconcile(world)

    assert (report["rewoken"], report["errors"]) == (1, 1)
    assert wakeups(world, world.server) == [good]
    assert any("reconcile.bad_row" in r.message and bad in r.message for r in caplog.records)


def test_a_row_too_malformed_to_load_can_still_be_marked_error(world):
    sandbox_id = create(world)
    table = f"{world.settings.table_prefix}-sandboxes"
    Sandbox._get_connection().connection.client.update_item(
        TableName=table,
        Key={"sandbox_id": {"S": sandbox_id}},
        UpdateExpression="SET limits = :bad",
        ExpressionAttributeValues={":bad": {"S": "{not json"}},
    )
    with pytest.raises(ValueError):
        Sandbox.get(sandbox_id)
    dead_letter(world, world.server, sandbox_id)

    assert reconcile(world)["dead_lettered"] == 1

    item = Sandbox._get_connection().connection.client.get_item(TableName=table, Key={"sandbox_id": {"S": sandbox_id}})
    assert item["Item"]["status"] == {"S": "error"}


# Wiring and settings


def test_the_chalice_schedule_runs_a_pass(world):
    sandbox_id = create(world)
    spare = server(world, "spare")
    kill(world.server)

    event = world.client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )
    response = world.client.lambda_.invoke("reconcile", event)

    assert response.payload["rerouted"] == 1
    assert Sandbox.get(sandbox_id).server == "spare"
    assert sandbox_id in wakeups(world, spare)


def test_reconciler_settings_are_read_from_the_environment():
    config = ReconcilerSettings.from_env({"OPENDEVELOP_RESEND_AFTER": "15", "OPENDEVELOP_MAX_ATTEMPTS": "5"})
    assert (config.resend_after_s, config.max_attempts, config.interval_s) == (15, 5, 10)
    with pytest.raises(SettingsError, match="OPENDEVELOP_RECONCILE_INTERVAL"):
        ReconcilerSettings.from_env({"OPENDEVELOP_RECONCILE_INTERVAL": "soon"})


def test_a_stale_note_is_forgotten_once_the_run_is_held_so_a_later_judgment_waits_from_its_own_sight(world):
    sandbox_id = create(world)
    run_as(sandbox_id, "local", holder="i-1")
    server(world, "local", instance="i-1", inflight=[])  # read before the claim's heartbeat listed it
    reconcile(world)
    assert Sandbox.get(sandbox_id).suspect_at is not None

    server(world, "local", instance="i-1", inflight=[sandbox_id])  # the next heartbeat lists it
    reconcile(world)

    assert Sandbox.get(sandbox_id).suspect_at is None
