"""The dispatcher's queue loop against moto, with a fake Docker runner: claims, retries, give-backs, cancels.

The real engine is exercised in tests/integration; here each failure is made
to happen exactly where it matters (DynamoDB down while the result is written,
the engine gone mid-run, a cancel while the container runs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from botocore.exceptions import EndpointConnectionError
from pynamodb.exceptions import UpdateError

from chalicelib import aws
from chalicelib.models import DockerServer, Sandbox
from dispatcher.runner import PlatformError, RunResult, RunSpec
from dispatcher.settings import DispatcherSettings
from dispatcher.worker import Dispatcher


class FakeEngine:
    def __init__(self) -> None:
        self.up = True

    def ping(self) -> bool:
        if not self.up:
            raise requests.exceptions.ConnectionError("engine down")
        return True

    def events(self, **kwargs: Any) -> list[dict[str, Any]]:
        return []


class FakeRunner:
    """Runs nothing; ``behaviour(spec)`` says what a run returns or raises."""

    def __init__(self, behaviour: Callable[[RunSpec], RunResult] | None = None) -> None:
        self.behaviour = behaviour or (lambda spec: ok(spec.cmd[0]))
        self.runs: list[str] = []
        self.killed: list[str] = []
        self.removed: list[str] = []
        self.api = FakeEngine()
        self.pool = None

    def run(self, spec: RunSpec, payload: bytes, remove: bool = True) -> RunResult:
        self.runs.append(spec.sandbox_id)
        result = self.behaviour(spec)
        result.container_id = "" if remove else f"cid-{spec.sandbox_id}"
        return result

    def container_name(self, sandbox_id: str) -> str:
        return f"od-{sandbox_id}"

    def kill(self, name: str) -> None:
        self.killed.append(name)

    def leftovers(self) -> list[dict[str, Any]]:
        return []

    def live_ids(self) -> set[str]:
        return set()

    def sandbox_of(self, container: dict[str, Any]) -> str:
        return str((container.get("Labels") or {}).get("opendevelop.sandbox", ""))

    def remove(self, cid: str) -> None:
        self.removed.append(cid)

    def local_images(self) -> list[str]:
        return ["opendevelop/base:latest"]


def ok(text: str) -> RunResult:
    return RunResult(0, text.encode() + b"\n", b"", text.encode() + b"\n", False, False, False, 0.1)


def make(world, runner: FakeRunner, **config: Any) -> Dispatcher:
    settings = DispatcherSettings(server="local", slots=2, retry_budget_s=5, backoff_s=0, **config)
    return Dispatcher(world.settings, settings, DockerServer.get("local"), runner)  # type: ignore[arg-type]


def submit(world, cmd: str = "hello") -> str:
    response = world.post_json({"image": "base", "cmd": [cmd]})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def receive(dispatcher: Dispatcher) -> dict[str, Any]:
    got = dispatcher.sqs.receive_message(
        QueueUrl=dispatcher.server.queue_url,
        MaxNumberOfMessages=1,
        WaitTimeSeconds=0,
        VisibilityTimeout=30,
        AttributeNames=["ApproximateReceiveCount"],
    ).get("Messages", [])
    assert len(got) == 1, got
    return got[0]


def waiting(dispatcher: Dispatcher) -> int:
    attrs = dispatcher.sqs.get_queue_attributes(
        QueueUrl=dispatcher.server.queue_url,
        AttributeNames=["All"],
    )["Attributes"]
    return sum(
        int(attrs[name])
        for name in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )


def test_a_sandbox_is_claimed_run_recorded_and_its_message_deleted(world):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world, "hello")

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.return_code, row.stdout, row.attempts) == ("terminated", 0, "hello\n", 1)
    assert runner.runs == [sandbox_id]
    assert runner.removed == [f"cid-{sandbox_id}"]  # after the result was written
    assert waiting(dispatcher) == 0
    assert dispatcher.inflight == {}


def test_a_second_wake_up_runs_nothing(world):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    aws.send_wakeup(world.settings, dispatcher.server.queue_url, sandbox_id)

    dispatcher.handle(receive(dispatcher))
    dispatcher.handle(receive(dispatcher))

    assert runner.runs == [sandbox_id]
    assert waiting(dispatcher) == 0


def test_a_sandbox_moved_to_another_server_is_not_claimed_here(world):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    Sandbox(sandbox_id).update(actions=[Sandbox.server.set("elsewhere")])  # as the reconciler moves it

    dispatcher.handle(receive(dispatcher))

    assert runner.runs == []
    assert Sandbox.get(sandbox_id).status == "queued"


def flaky_updates(monkeypatch: pytest.MonkeyPatch, failures: int, when: Callable[[], bool]) -> list[int]:
    """Sandbox.update fails as an unreachable endpoint would, ``failures`` times while ``when()``."""
    original = Sandbox.update
    left = [failures]

    def update(self: Sandbox, actions: Any, condition: Any = None, **kwargs: Any) -> Any:
        if when() and left[0] > 0:
            left[0] -= 1
            raise UpdateError("Failed to update item", cause=EndpointConnectionError(endpoint_url="http://aws"))
        return original(self, actions, condition, **kwargs)

    monkeypatch.setattr(Sandbox, "update", update)
    return left


def test_the_result_is_written_once_dynamodb_answers_again(world, monkeypatch):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world, "kept")
    left = flaky_updates(monkeypatch, 3, when=lambda: bool(runner.runs))

    dispatcher.handle(receive(dispatcher))

    assert left == [0]
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.stdout) == ("terminated", "kept\n")
    assert runner.runs == [sandbox_id]
    assert waiting(dispatcher) == 0


def test_when_dynamodb_stays_down_the_message_is_kept_and_the_row_settled_later(world, monkeypatch):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    flaky_updates(monkeypatch, 1000, when=lambda: bool(runner.runs))

    dispatcher.handle(receive(dispatcher))  # retries for retry_budget_s, then lets the message go

    assert Sandbox.get(sandbox_id).status == "running"
    assert waiting(dispatcher) == 1  # not deleted: it comes back
    monkeypatch.undo()
    # It comes back to a row running here that no slot holds: given back, and run again.
    dispatcher.handle(receive(dispatcher))
    assert Sandbox.get(sandbox_id).status == "queued"
    dispatcher.handle(receive(dispatcher))
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("terminated", 2)


def test_a_platform_failure_gives_the_sandbox_back_until_its_last_attempt(world):
    def broken(spec: RunSpec) -> RunResult:
        raise PlatformError("creating the container: boom")

    runner = FakeRunner(broken)
    dispatcher = make(world, runner, max_attempts=3)
    sandbox_id = submit(world)

    statuses = []
    for _ in range(3):
        dispatcher.handle(receive(dispatcher))
        statuses.append(Sandbox.get(sandbox_id).status)

    assert statuses == ["queued", "queued", "error"]
    row = Sandbox.get(sandbox_id)
    assert row.attempts == 3 and "boom" in row.error
    assert waiting(dispatcher) == 0


def test_a_failure_that_is_not_transient_is_an_error_at_once(world):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    Sandbox(sandbox_id).update(actions=[Sandbox.limits.set({"timeout": "soon"})])

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert row.status == "error" and "malformed" in row.error
    assert runner.runs == []


def test_the_engine_going_away_does_not_count_as_a_try(world):
    def engine_gone(spec: RunSpec) -> RunResult:
        runner.api.up = False
        raise requests.exceptions.ConnectionError("Connection aborted: docker.sock")

    runner = FakeRunner(engine_gone)
    dispatcher = make(world, runner, max_attempts=1)
    sandbox_id = submit(world)

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("queued", 0)
    assert "Docker engine" not in (row.error or "")
    assert not dispatcher.engine_up.is_set()  # it takes no work until the engine answers
    assert waiting(dispatcher) == 1
    time.sleep(1.1)
    # A fresh wake-up: receives lost to an engine outage never add up to a dead letter.
    assert receive(dispatcher)["Attributes"]["ApproximateReceiveCount"] == "1"


def test_a_cancel_kills_the_container_and_the_row_stays_cancelled(world):
    killed = threading.Event()

    def runs_until_killed(spec: RunSpec) -> RunResult:
        assert killed.wait(10)
        return RunResult(137, b"partial", b"", b"partial", False, False, False, 1.0)

    runner = FakeRunner(runs_until_killed)
    runner.kill = lambda name: (runner.killed.append(name), killed.set())  # type: ignore[method-assign]
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    handler = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    handler.start()
    while Sandbox.get(sandbox_id).status != "running":
        time.sleep(0.01)

    assert world.client.http.delete(f"/api/sandboxes/{sandbox_id}", headers=world.auth).status_code == 200
    dispatcher._watch_once()
    handler.join(10)

    assert runner.killed == [f"od-{sandbox_id}"]
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.return_code, row.logs) == ("cancelled", None, None)
    assert waiting(dispatcher) == 0


def test_a_dispatcher_cut_off_from_the_database_kills_its_containers_before_its_lease_runs_out(world):
    killed = threading.Event()

    def runs_until_killed(spec: RunSpec) -> RunResult:
        assert killed.wait(10)
        return RunResult(137, b"", b"", b"", False, False, False, 1.0)

    runner = FakeRunner(runs_until_killed)
    runner.kill = lambda name: (runner.killed.append(name), killed.set())  # type: ignore[method-assign]
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    handler = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    handler.start()
    while Sandbox.get(sandbox_id).status != "running":
        time.sleep(0.01)

    dispatcher.last_db_ok = time.monotonic() - dispatcher.lease_s - 1  # no heartbeat written for that long
    dispatcher._watch_once()
    handler.join(10)

    assert runner.killed == [f"od-{sandbox_id}"]
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("queued", 0)  # given back, not counted


def test_recovery_gives_back_what_a_dead_dispatcher_left_running(world):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    sandbox_id = submit(world)
    receive(dispatcher)  # the dead dispatcher's message, hidden for now
    Sandbox(sandbox_id).update(
        actions=[Sandbox.status.set("running"), Sandbox.attempts.set(1), Sandbox.started_at.set(Sandbox.created_at)]
    )

    dispatcher.recover()

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.server) == ("queued", "local")
    attrs = dispatcher.sqs.get_queue_attributes(
        QueueUrl=dispatcher.server.queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"  # a fresh wake-up, after any dead long poll


def test_the_heartbeat_reports_what_the_dispatcher_holds(world):
    runner = FakeRunner()
    dispatcher = make(world, runner)
    dispatcher.inflight["abc123"] = object()  # type: ignore[assignment]

    dispatcher._beat(images=True)

    row = DockerServer.get("local")
    assert (row.running, row.slots, row.inflight, row.images) == (1, 2, ["abc123"], ["opendevelop/base:latest"])
    assert row.last_heartbeat is not None


def test_without_an_engine_the_heartbeat_goes_stale(world):
    runner = FakeRunner()
    runner.api.up = False
    dispatcher = make(world, runner)
    before = DockerServer.get("local").last_heartbeat

    dispatcher._beat()

    assert DockerServer.get("local").last_heartbeat == before
    assert not dispatcher.engine_up.is_set()


def test_a_draining_dispatcher_learns_its_state_from_its_heartbeat(world):
    from chalicelib import admin

    dispatcher = make(world, FakeRunner())
    admin.server_set_state("local", "draining")

    dispatcher._beat()

    assert dispatcher.server.state == "draining"  # its loop takes no new work while so
