"""The dispatcher's queue loop against moto, with a fake engine: claims, retries, give-backs, cancels.

The real engine is exercised in tests/integration; here each failure is made
to happen exactly where it matters (DynamoDB down while the result is written,
the engine gone mid-run, a cancel while the container runs).  Retries run on a
fake clock, so their backoff costs no time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from pynamodb.connection.table import TableConnection
from pynamodb.exceptions import UpdateError

from chalicelib import aws
from chalicelib.models import DockerServer, Sandbox
from dispatcher.engine import EngineUnavailable, Leftover, NotStarted, PlatformError, RunResult, RunSpec
from dispatcher.settings import DispatcherSettings
from dispatcher.worker import Dispatcher


class FakeEngine:
    """Runs nothing; ``behaviour(spec)`` says what a run returns or raises."""

    def __init__(self, behaviour: Callable[[RunSpec], RunResult] | None = None) -> None:
        self.behaviour = behaviour or (lambda spec: ok(spec.cmd[0]))
        self.up = True
        self.runs: list[str] = []
        self.killed: list[str] = []
        self.released: list[str] = []

    def run(self, spec: RunSpec, payload: bytes) -> RunResult:
        self.runs.append(spec.sandbox_id)
        result = self.behaviour(spec)
        result.container_id = f"cid-{spec.sandbox_id}"
        return result

    def kill(self, sandbox_id: str) -> None:
        self.killed.append(sandbox_id)

    def release(self, container_id: str) -> None:
        self.released.append(container_id)

    def healthy(self) -> bool:
        return self.up

    def probe(self) -> str:
        return self.broken

    broken = ""

    def images(self) -> list[str]:
        return ["opendevelop/base:latest"]

    def leftovers(self) -> list[Leftover]:
        return []

    def start(self) -> None: ...
    def close(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class FakeClock:
    """Sleeping moves the clock on at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def ok(text: str) -> RunResult:
    return RunResult(0, text.encode() + b"\n", b"", text.encode() + b"\n", False, False, False, 0.1)


def make(world, engine: FakeEngine, **config: Any) -> Dispatcher:
    settings = DispatcherSettings(server="local", slots=2, retry_budget_s=5, backoff_s=0, **config)
    return Dispatcher(world.settings, settings, DockerServer.get("local"), engine, clock=FakeClock())


def submit(world, cmd: str = "hello") -> str:
    response = world.post_json({"image": "base", "cmd": [cmd]})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def receive(dispatcher: Dispatcher) -> dict[str, Any]:
    got = dispatcher.inbox.sqs.receive_message(
        QueueUrl=dispatcher.server.queue_url,
        MaxNumberOfMessages=1,
        WaitTimeSeconds=0,
        VisibilityTimeout=30,
        AttributeNames=["ApproximateReceiveCount"],
    ).get("Messages", [])
    assert len(got) == 1, got
    return got[0]


def queue_counts(dispatcher: Dispatcher) -> dict[str, int]:
    attrs = dispatcher.inbox.sqs.get_queue_attributes(
        QueueUrl=dispatcher.server.queue_url,
        AttributeNames=["All"],
    )["Attributes"]
    return {
        name: int(attrs[f"ApproximateNumberOf{name}"]) for name in ("Messages", "MessagesNotVisible", "MessagesDelayed")
    }


def waiting(dispatcher: Dispatcher) -> int:
    return sum(queue_counts(dispatcher).values())


def test_a_sandbox_is_claimed_run_recorded_and_its_message_deleted(world):
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world, "hello")

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.return_code, row.stdout, row.attempts) == ("terminated", 0, "hello\n", 1)
    assert row.token is not None  # the claim's fence
    assert engine.runs == [sandbox_id]
    assert engine.released == [f"cid-{sandbox_id}"]  # after the result was written
    assert waiting(dispatcher) == 0
    assert dispatcher.hands.ids() == []


def test_a_second_wake_up_runs_nothing(world):
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    aws.send_wakeup(world.settings, dispatcher.server.queue_url, sandbox_id)

    dispatcher.handle(receive(dispatcher))
    dispatcher.handle(receive(dispatcher))

    assert engine.runs == [sandbox_id]
    assert waiting(dispatcher) == 0


def test_a_sandbox_moved_to_another_server_is_not_claimed_here(world):
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    Sandbox(sandbox_id).update(actions=[Sandbox.server.set("elsewhere")])  # as the reconciler moves it

    dispatcher.handle(receive(dispatcher))

    assert engine.runs == []
    assert Sandbox.get(sandbox_id).status == "queued"


def flaky_updates(monkeypatch: pytest.MonkeyPatch, failures: int, when: Callable[[], bool]) -> list[int]:
    """Every write of a sandbox row fails as an unreachable endpoint would, ``failures`` times while ``when()``;
    set the returned counter to 0 to bring DynamoDB back."""
    original = TableConnection.update_item
    left = [failures]

    def update_item(self: TableConnection, *args: Any, **kwargs: Any) -> Any:
        if self.table_name == Sandbox.Meta.table_name and when() and left[0] > 0:
            left[0] -= 1
            raise UpdateError("Failed to update item", cause=EndpointConnectionError(endpoint_url="http://aws"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TableConnection, "update_item", update_item)
    return left


def test_the_result_is_written_once_dynamodb_answers_again(world, monkeypatch):
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world, "kept")
    left = flaky_updates(monkeypatch, 3, when=lambda: bool(engine.runs))

    dispatcher.handle(receive(dispatcher))

    assert left == [0]
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.stdout) == ("terminated", "kept\n")
    assert engine.runs == [sandbox_id]
    assert waiting(dispatcher) == 0


def test_when_dynamodb_stays_down_the_finished_result_is_kept_and_written_later_never_run_again(world, monkeypatch):
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world, "once")
    left = flaky_updates(monkeypatch, 10**9, when=lambda: bool(engine.runs))

    slot = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    slot.start()  # the outage outlasts retry_budget_s many times over
    deadline = time.monotonic() + 10
    while not any(dispatcher.spool.kept()) and time.monotonic() < deadline:
        time.sleep(0.01)

    kept = list(dispatcher.spool.kept())
    assert [(k.sandbox_id, (k.path / "stdout").read_bytes()) for k in kept] == [(sandbox_id, b"once\n")]  # on the host
    assert Sandbox.get(sandbox_id).status == "running"
    assert slot.is_alive()  # still recording, the message still held
    left[0] = 0  # DynamoDB answers again
    slot.join(10)

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.stdout, row.attempts) == ("terminated", "once\n", 1)
    assert engine.runs == [sandbox_id]  # one run, one result
    assert list(dispatcher.spool.kept()) == []
    assert waiting(dispatcher) == 0


def test_a_platform_failure_gives_the_sandbox_back_until_its_last_attempt(world):
    def broken(spec: RunSpec) -> RunResult:
        raise PlatformError("creating the container: boom")

    engine = FakeEngine(broken)
    dispatcher = make(world, engine, max_attempts=3)
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
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    Sandbox(sandbox_id).update(actions=[Sandbox.limits.set({"timeout": "soon"})])

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert row.status == "error" and "malformed" in row.error
    assert engine.runs == []


def test_the_engine_going_away_does_not_count_as_a_try(world):
    def engine_gone(spec: RunSpec) -> RunResult:
        engine.up = False
        raise EngineUnavailable("ConnectionError: Connection aborted: docker.sock")

    engine = FakeEngine(engine_gone)
    dispatcher = make(world, engine, max_attempts=1)
    sandbox_id = submit(world)

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("queued", 0)
    assert "Docker engine" not in (row.error or "")
    assert not dispatcher.flags.engine_up.is_set()  # it takes no work until the engine answers
    # A fresh wake-up (sent with a delay, so never received yet) replaced the received message:
    # receives lost to an engine outage never add up to a dead letter.
    assert queue_counts(dispatcher) == {"Messages": 0, "MessagesNotVisible": 0, "MessagesDelayed": 1}


def test_a_container_stopped_from_outside_while_the_engine_answers_ends_in_error_never_run_again(world):
    def stopped(spec: RunSpec) -> RunResult:
        return RunResult(143, b"", b"", b"", False, False, False, 0.5, stopped_by="kill signal 15")

    engine = FakeEngine(stopped)
    dispatcher = make(world, engine, max_attempts=3)
    sandbox_id = submit(world)

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.return_code) == ("error", None)  # never a result, and never run again
    assert "stopped outside the platform" in row.error and "signal 15" in row.error
    assert engine.runs == [sandbox_id]
    assert engine.released == [f"cid-{sandbox_id}"]
    assert waiting(dispatcher) == 0


def test_a_container_its_stopping_engine_stopped_is_given_back_not_counted(world):
    engine = FakeEngine()

    def stopped(spec: RunSpec) -> RunResult:
        engine.up = False  # the engine is shutting down: it stops its containers, then stops answering
        return RunResult(143, b"", b"", b"", False, False, False, 0.5, stopped_by="kill signal 15")

    engine.behaviour = stopped
    dispatcher = make(world, engine, max_attempts=1)
    sandbox_id = submit(world)

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts, row.return_code) == ("queued", 0, None)  # never a result
    assert engine.released == [f"cid-{sandbox_id}"]
    assert not dispatcher.flags.engine_up.is_set()


def run_until_killed(engine_killed: threading.Event, started: threading.Event, code: int, out: bytes):
    def behaviour(spec: RunSpec) -> RunResult:
        started.set()  # claimed: the row says running
        assert engine_killed.wait(10)
        return RunResult(code, out, b"", out, False, False, False, 1.0)

    return behaviour


def test_a_cancel_kills_the_container_and_the_row_stays_cancelled(world):
    killed, started = threading.Event(), threading.Event()
    engine = FakeEngine(run_until_killed(killed, started, 137, b"partial"))
    engine.kill = lambda sandbox_id: (engine.killed.append(sandbox_id), killed.set())  # type: ignore[method-assign]
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    handler = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    handler.start()
    assert started.wait(10)

    assert world.client.http.delete(f"/api/sandboxes/{sandbox_id}", headers=world.auth).status_code == 200
    dispatcher.duties.watch_once()
    handler.join(10)

    assert engine.killed == [sandbox_id]
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.return_code, row.logs) == ("cancelled", None, None)
    assert waiting(dispatcher) == 0


def gated(claimed: threading.Event, go_on: threading.Event, programs: list[str]):
    """An engine run as the runner makes one: the container is made, then the gate is asked before the start."""

    def behaviour(spec: RunSpec) -> RunResult:
        claimed.set()  # the row says running; the container is being made
        assert go_on.wait(10)
        reason = spec.gate() if spec.gate else ""
        if reason:
            raise NotStarted(reason)
        programs.append(spec.sandbox_id)  # the program starts
        return ok("ran")

    return behaviour


def test_a_cancel_between_the_claim_and_the_start_means_the_program_never_starts(world):
    claimed, go_on, programs = threading.Event(), threading.Event(), []
    engine = FakeEngine(gated(claimed, go_on, programs))
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    handler = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    handler.start()
    assert claimed.wait(10)

    cancel = world.client.http.delete(f"/api/sandboxes/{sandbox_id}", headers=world.auth)
    go_on.set()  # the cancel was answered before the watch loop ever looked
    handler.join(10)

    assert cancel.status_code == 200
    assert programs == []
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.return_code) == ("cancelled", None)
    assert waiting(dispatcher) == 0  # its message is settled, not left to come back
    assert dispatcher.hands.ids() == []


def test_a_run_whose_row_still_holds_its_token_passes_the_gate(world):
    claimed, go_on, programs = threading.Event(), threading.Event(), []
    go_on.set()
    dispatcher = make(world, FakeEngine(gated(claimed, go_on, programs)))
    sandbox_id = submit(world)

    dispatcher.handle(receive(dispatcher))

    assert programs == [sandbox_id]
    assert Sandbox.get(sandbox_id).status == "terminated"


def test_a_run_handed_over_before_its_start_never_starts_and_writes_nothing(world):
    claimed, go_on, programs = threading.Event(), threading.Event(), []
    dispatcher = make(world, FakeEngine(gated(claimed, go_on, programs)))
    sandbox_id = submit(world)
    handler = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    handler.start()
    assert claimed.wait(10)

    # The reconciler gave it back meanwhile, and another claim took it (a new token).
    Sandbox(sandbox_id).update(actions=[Sandbox.token.set("another-claim")])
    go_on.set()
    handler.join(10)

    assert programs == []
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.token, row.return_code) == ("running", "another-claim", None)  # the successor's


def test_a_dispatcher_cut_off_from_the_database_kills_its_containers_before_its_lease_runs_out(world):
    killed, started = threading.Event(), threading.Event()
    engine = FakeEngine(run_until_killed(killed, started, 137, b""))
    engine.kill = lambda sandbox_id: (engine.killed.append(sandbox_id), killed.set())  # type: ignore[method-assign]
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    handler = threading.Thread(target=dispatcher.handle, args=(receive(dispatcher),))
    handler.start()
    assert started.wait(10)

    # The last acknowledged heartbeat was sent longer ago than the lease: the fence thread fires on
    # its own, with no network call on its way.
    dispatcher.duties.last_ok_sent = time.monotonic() - dispatcher.duties.lease_s - 1
    fence = threading.Thread(target=dispatcher.duties.fence_loop, daemon=True)
    fence.start()
    handler.join(10)
    dispatcher.flags.done.set()

    assert engine.killed == [sandbox_id]
    assert dispatcher.flags.fenced.is_set()
    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("queued", 0)  # given back, not counted


def test_recovery_gives_back_what_a_dead_dispatcher_left_running(world):
    engine = FakeEngine()
    dispatcher = make(world, engine)
    sandbox_id = submit(world)
    receive(dispatcher)  # the dead dispatcher's message, hidden for now
    Sandbox(sandbox_id).update(
        actions=[Sandbox.status.set("running"), Sandbox.attempts.set(1), Sandbox.started_at.set(Sandbox.created_at)]
    )

    dispatcher.recover()

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.server) == ("queued", "local")
    # A fresh wake-up, after any dead long poll.
    assert queue_counts(dispatcher)["MessagesDelayed"] == 1


def test_the_heartbeat_reports_what_the_dispatcher_holds(world):
    dispatcher = make(world, FakeEngine())
    dispatcher.hands.hold("abc123", "message-1", "receipt-1")
    beat = int(DockerServer.get("local").beat or 0)

    dispatcher.duties.beat(images=True)

    row = DockerServer.get("local")
    assert (row.running, row.slots, row.inflight, row.images) == (1, 2, ["abc123"], ["opendevelop/base:latest"])
    assert row.last_heartbeat is not None
    assert (row.beat, row.instance) == (beat + 1, dispatcher.duties.instance)  # alive, and who it is


def test_without_an_engine_the_dispatcher_keeps_beating_but_takes_no_new_work(world):
    engine = FakeEngine()
    engine.up = False
    dispatcher = make(world, engine)
    before = int(DockerServer.get("local").beat or 0)

    dispatcher.duties.beat()

    row = DockerServer.get("local")
    # Its running work must not be moved while it may still run; new work goes elsewhere.
    assert int(row.beat) == before + 1
    assert (row.engine_ok, row.engine_error) == (False, "the engine does not answer")
    assert not dispatcher.flags.engine_up.is_set()


def test_a_draining_dispatcher_learns_its_state_from_its_heartbeat(world):
    from chalicelib import admin

    dispatcher = make(world, FakeEngine())
    admin.server_set_state("local", "draining")

    dispatcher.duties.beat()

    assert dispatcher.server.state == "draining"  # its loop takes no new work while so


def test_an_engine_that_cannot_make_containers_makes_the_server_unhealthy_not_the_sandbox_fail(world):
    from dispatcher.engine import EngineBroken

    def full(spec: RunSpec) -> RunResult:
        raise EngineBroken("creating the container: no space left on device")

    engine = FakeEngine(full)
    engine.broken = "creating a container: no space left on device"  # what the heartbeat's probe meets
    dispatcher = make(world, engine, max_attempts=1)
    sandbox_id = submit(world)

    dispatcher.handle(receive(dispatcher))
    dispatcher.duties.beat()

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("queued", 0)  # not its fault: given back, not counted
    server = DockerServer.get("local")
    assert server.engine_ok is False and "no space left on device" in server.engine_error
    assert dispatcher.flags.broken  # it takes no work meanwhile

    engine.broken = ""  # the disk has room again: the next heartbeat's probe sees it
    dispatcher.duties.beat()
    assert not dispatcher.flags.broken
    assert DockerServer.get("local").engine_ok is True
