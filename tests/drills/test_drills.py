"""The fault drills of issue #11, "One run, one result" (a to l), on the real local stack.

Every drill runs programs longer than the heartbeat TTL (6 s here) that print
a token unique to each start, breaks one thing, and ends with the checks of
``Drill.finish``: one final state per sandbox, the expected one (no ``error``
from an outage), never two runs at once, no start after a completed run, no
container alive more than 5 s past its deadline.  Each records its row of the
results table whether it passes or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import docker
import pytest
import requests
from pynamodb.exceptions import DoesNotExist

from infra.local.stack import DOCKER_URL, ROOT

from .drill import Drill, program
from .engines import Engine, saved_base_image
from .stack import SLOTS, TTL_S, DrillStack

pytestmark = pytest.mark.timeout(240)

LONG = TTL_S + 2  # seconds: a program that outlives the heartbeat TTL


def dispatcher_name(stack: DrillStack, key: str) -> str:
    return f"dispatcher-{stack.servers[key]}"


def host_death(stack: DrillStack, key: str) -> None:
    """Server ``key``'s host dies: its dispatcher is killed -9 and its containers go with the machine."""
    stack.kill_9(dispatcher_name(stack, key))
    api = docker.APIClient(base_url=stack.engines[key], timeout=30)
    for container in api.containers(all=True, filters={"label": f"opendevelop.server={stack.servers[key]}"}):
        api.remove_container(container["Id"], force=True)


def log_events(stack: DrillStack, name: str, event: str) -> list[dict[str, Any]]:
    path = stack.log(name)
    found = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{") and f'"{event}"' in line:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("event") == event:
                found.append(data)
    return found


# a. Partition


def test_a_partition_of_one_dispatcher_from_aws(drill: Drill, stack: DrillStack) -> None:
    """Server a's dispatcher loses AWS (every request hangs) for 12 s, twice the TTL, while b stays up.

    One of its programs finishes during the partition (its result must be kept
    and written late, never re-run); a longer one is fenced and may run again
    on b, but only once the first run is dead.
    """
    short = drill.create(program(3.5), on="a")
    long_ = drill.create(program(14), on="a")
    control = drill.create(program(LONG), on="b")
    for sandbox_id in (short, long_, control):
        stack.events.wait_running(sandbox_id, 30)
    started = stack.events.runs(short)[0].started
    time.sleep(max(0.0, started + 1.5 - time.time()))

    drill.fault()
    stack.proxies["a"].fault("*", "hang")
    try:
        time.sleep(12)
    finally:
        stack.proxies["a"].clear()
    drill.wait_final(45)
    drill.finish()


# b. Clock skew


@pytest.mark.parametrize(
    ("who", "skew_s"),
    [("dispatcher", 60), ("dispatcher", -60), ("reconciler", 60), ("reconciler", -60)],
    ids=["dispatcher+60s", "dispatcher-60s", "reconciler+60s", "reconciler-60s"],
)
def test_b_clock_skew(drill: Drill, stack: DrillStack, who: str, skew_s: int) -> None:
    """One process's wall clock is 60 s off.  Liveness is judged on the observer's clock, so:

    * a dispatcher behind or ahead runs its work once, and when its host dies
      the work moves on within the TTL, not TTL + 60 s;
    * a reconciler ahead does not take running work from live servers; one
      behind still sees a dead server die within the TTL.
    """
    drill.fault()
    if who == "dispatcher":
        stack.stop(dispatcher_name(stack, "a"))
        stack.start_dispatcher_of("a", skew_s=skew_s)
    else:
        stack.stop("reconciler")
        stack.start_reconciler_with(skew_s=skew_s)
    timeout_s = LONG + 4  # a dead host's work runs again only once its deadline has surely passed
    ids = [
        drill.create(program(LONG), on="a", timeout_s=timeout_s),
        drill.create(program(LONG), on="a", timeout_s=timeout_s),
        drill.create(program(LONG), on="b", timeout_s=timeout_s),
    ]
    if (who, skew_s) in (("dispatcher", 60), ("reconciler", -60)):
        # Now the host of a dies: the reconciler must see it within the TTL on its own clock.
        for sandbox_id in ids[:2]:
            stack.events.wait_running(sandbox_id, 20)
        time.sleep(1)
        drill.fault()
        host_death(stack, "a")
        drill.note("host of server a killed (dispatcher -9, containers removed) 1 s after its runs started")
    # Expected: the runs' own LONG s, or a dead host noticed within the TTL (by the reconciler's own
    # clock) and its work run again once its deadline (timeout + the watchdog's grace) has passed.
    dead_host = (who, skew_s) in (("dispatcher", 60), ("reconciler", -60))
    drill.wait_final(TTL_S + timeout_s + 3 + LONG + 8 if dead_host else LONG + 8)
    drill.finish()


# c. The Docker engine stalled


def test_c_docker_engine_stalled_longer_than_the_lease(drill: Drill, stack: DrillStack) -> None:
    """Server b's dockerd is stopped (SIGSTOP) for 10 s, longer than the TTL, while two programs run on it.

    The containers go on running under their shims, out of the dispatcher's
    reach: their work must not start anywhere else meanwhile.
    """
    on_b = [drill.create(program(12), on="b"), drill.create(program(12), on="b")]
    control = drill.create(program(LONG), on="a")
    for sandbox_id in [*on_b, control]:
        stack.events.wait_running(sandbox_id, 30)
    engine = stack.own_engine
    assert engine is not None

    drill.fault()
    engine.pause()
    try:
        time.sleep(10)
    finally:
        engine.resume()
    drill.wait_final(45)
    drill.finish()


# d. The dispatcher stopped past the deadline


def test_d_sigstop_of_the_dispatcher_past_the_deadline(drill: Drill, stack: DrillStack) -> None:
    """``sleep 600`` with a 5 s timeout; its dispatcher is stopped (SIGSTOP) 1 s in, for 12 s.

    The container must be gone within the deadline + 5 s all the same.
    """
    cmd = ['echo "start $(cat /proc/sys/kernel/random/uuid)"', "sleep 600"]
    sandbox_id = drill.create(cmd, timeout_s=5, on="a")
    run = stack.events.wait_running(sandbox_id, 30)
    time.sleep(max(0.0, run.started + 1 - time.time()))

    drill.fault()
    stack.signal(dispatcher_name(stack, "a"), signal.SIGSTOP)
    try:
        ended = stack.events.wait_ended(sandbox_id, max(0.0, run.started + 12 - time.time()))
        state = "gone" if ended else "still running"
        drill.note(f"container {state} {time.time() - run.started:.1f} s after its start")
        time.sleep(max(0.0, run.started + 12 - time.time()))
    finally:
        stack.signal(dispatcher_name(stack, "a"), signal.SIGCONT)
    drill.wait_final(30)
    row = drill.states.rows.get(sandbox_id)
    if row is not None and row.status == "terminated" and not row.timed_out:
        drill.find(f"{sandbox_id}: terminated without timed_out")
    drill.finish()


# e. The output write to S3 failing


def test_e_the_output_write_to_s3_failing(drill: Drill, stack: DrillStack) -> None:
    """Output too large for the row goes to S3; S3 fails (503) for server a's dispatcher for 12 s
    after the programs end, four times its retry budget (3 s here)."""
    stack.stop(dispatcher_name(stack, "a"))
    stack.start_dispatcher_of("a", env={"OPENDEVELOP_RETRY_BUDGET": "3"})
    big = "head -c 300000 /dev/zero | tr '\\0' x; echo"
    ids = [drill.create(program(LONG, extra=big), on="a", output_kb=512) for _ in range(2)]
    stack.proxies["a"].fault("s3", "fail")
    try:
        for sandbox_id in ids:
            stack.events.wait_running(sandbox_id, 30)
        ends = max(stack.events.runs(i)[0].started for i in ids) + LONG
        time.sleep(max(0.0, ends - time.time()))
        drill.fault()
        time.sleep(12)
        faulted = sum(n for k, n in stack.proxies["a"].stats()["faulted"].items() if k.startswith("s3:"))
        drill.note(f"S3 requests of the dispatcher failed: {faulted}")
        if not faulted:
            drill.find("the fault never hit: the dispatcher sent no S3 request through its endpoint")
    finally:
        stack.proxies["a"].clear()
    drill.wait_final(40)
    drill.finish()


# f. DynamoDB unreachable, SQS up


def test_f_dynamodb_unreachable_longer_than_five_receive_cycles(drill: Drill, stack: DrillStack) -> None:
    """Four sandboxes are queued just as DynamoDB becomes unreachable for both dispatchers and the
    reconciler (SQS stays up) for 18 s: more than 5 receive cycles at a 1 s retry budget and a 1 s poll."""
    for key in ("a", "b"):
        stack.stop(dispatcher_name(stack, key))
        stack.start_dispatcher_of(key, env={"OPENDEVELOP_RETRY_BUDGET": "1"})
    roles = ("a", "b", "reconciler")
    for role in roles:
        stack.proxies[role].fault("dynamodb", "refuse")
    drill.fault()
    try:
        for key in ("a", "a", "b", "b"):
            drill.create(program(LONG), on=key)
        time.sleep(18)
    finally:
        for role in roles:
            stack.proxies[role].clear()
    failed = [e for k in ("a", "b") for e in log_events(stack, dispatcher_name(stack, k), "sandbox.claim_failed")]
    receives = [int(e.get("receives", 0)) for e in failed if e.get("sandbox_id") in drill.ids]
    drill.note(
        f"failed claims in the outage: {len(receives)}, most receives of one message: {max(receives, default=0)}"
    )
    drill.wait_final(40)
    drill.finish()


# g. kill -9 while recording


def test_g_kill_9_of_the_dispatcher_while_it_records(drill: Drill, stack: DrillStack) -> None:
    """The program ends; writing its result to the row fails (503) and is being retried when the
    dispatcher is killed -9.  Restarted (as systemd would), the result of that run must be the one kept."""
    sandbox_id = drill.create(program(LONG), on="a")
    stack.events.wait_running(sandbox_id, 30)
    name = dispatcher_name(stack, "a")
    seen = len(log_events(stack, name, "retry"))
    stack.proxies["a"].fault("dynamodb", "fail", action="UpdateItem", contains=f'{stack.table_prefix}-sandboxes"')
    try:
        deadline = time.monotonic() + LONG + 15
        while not [e for e in log_events(stack, name, "retry")[seen:] if e.get("what") == "recording the result"]:
            assert time.monotonic() < deadline, "the dispatcher never tried to record the result"
            time.sleep(0.05)
        drill.fault()
        stack.kill_9(name)
    finally:
        stack.proxies["a"].clear()
    stack.start_dispatcher_of("a")
    drill.wait_final(40)
    drill.finish()


# h. Operators: server-delete and a second dispatcher


def test_h_server_delete_and_a_second_dispatcher_while_work_runs(drill: Drill, stack: DrillStack) -> None:
    """``server-delete`` of a server running work must be refused; a second dispatcher for a server
    whose dispatcher lives must refuse to start, naming the live one.  The work runs once either way."""
    from chalicelib.models import DockerServer

    on_b = drill.create(program(LONG), on="b")
    stack.events.wait_running(on_b, 30)
    live = stack.dispatcher_proc("b")
    assert live is not None
    drill.fault()
    second = stack.start_dispatcher_of("b", wait=False, name="dispatcher-second")
    try:
        second.wait(12)
        out = stack.log("dispatcher-second").read_text(errors="replace")
        if second.returncode == 0:
            drill.find(f"the second dispatcher of {stack.servers['b']} exited 0 instead of refusing")
        elif str(live.pid) not in out:
            drill.find(f"the second dispatcher refused without naming the live one (pid {live.pid}): {out[-300:]!r}")
    except subprocess.TimeoutExpired:
        drill.find(f"a second dispatcher of {stack.servers['b']} started and served beside the live one")
    finally:
        stack.stop("dispatcher-second")

    on_a = drill.create(program(LONG), on="a")
    stack.events.wait_running(on_a, 30)
    result = subprocess.run(
        [sys.executable, "manage.py", "server-delete", "--name", stack.servers["a"]],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode == 0:
        drill.find(f"server-delete of {stack.servers['a']} succeeded while sandbox {on_a} ran on it")
    else:
        drill.note(f"server-delete refused: {(result.stderr or result.stdout).strip()[-200:]}")
    try:
        DockerServer.get(stack.servers["a"])
    except DoesNotExist:
        drill.note("server a's row is gone")
    drill.wait_final(30)
    drill.finish()


# i. docker kill from outside


def test_i_docker_kill_of_a_sandbox_from_outside(drill: Drill, stack: DrillStack) -> None:
    """An operator runs ``docker kill`` on a sandbox's container: it ends ``error``, stopped outside the platform."""
    sandbox_id = drill.create(program(LONG), on="a", expect=("error",))
    run = stack.events.wait_running(sandbox_id, 30)
    time.sleep(1)
    drill.fault()
    docker.APIClient(base_url=stack.engines[run.engine], timeout=30).kill(run.container)
    drill.wait_final(20)
    row = drill.states.rows.get(sandbox_id)
    if row is not None and row.status == "error" and "stopped outside the platform" not in (row.error or "").lower():
        drill.find(f"{sandbox_id}: error without saying it was stopped outside the platform: {row.error!r}")
    if row is not None and row.status == "terminated":
        drill.note(f"recorded as a result: return_code {row.return_code}")
    if stack.events.starts(sandbox_id) != 1:
        drill.find(f"{sandbox_id}: started {stack.events.starts(sandbox_id)} times")
    drill.finish()


# j. The engine's disk full


def test_j_an_engine_whose_disk_is_full(drill: Drill, stack: DrillStack) -> None:
    """A third server whose engine's data root (a 400 MB tmpfs) is full: it reports itself unhealthy
    and the work submitted through the API goes to the other two."""
    from chalicelib import admin
    from chalicelib.models import DockerServer
    from chalicelib.scheduling import is_healthy

    engine = Engine(f"{stack.table_prefix}c", disk_mb=400)
    server = f"{stack.table_prefix}c"
    stack.servers["c"] = server
    try:
        engine.start(saved_base_image(stack.log_dir.parent))  # type: ignore[union-attr]
        stack.events.watch("c", engine.url)
        stack.engines["c"] = engine.url
        admin.server_create(stack.settings(), server, engine.url, "", SLOTS, replace=True)
        stack.start_proxy("c")
        stack.start_dispatcher_of("c")
        stack.wait_alive(("c",), 20)
        drill.fault()
        drill.note(f"filled {engine.fill() // 2**20} MB")
        deadline = time.monotonic() + TTL_S + 2
        while is_healthy(DockerServer.get(server), TTL_S) and time.monotonic() < deadline:
            time.sleep(0.2)
        if is_healthy(DockerServer.get(server), TTL_S):
            drill.find(f"server {server} still healthy {TTL_S + 2} s after its disk filled")
        client = requests.Session()
        client.auth = (stack.demo["app_id"], stack.demo["secret"])
        for _ in range(9):
            body = {"image": "base", "cmd": program(LONG), "timeout": 30}
            response = client.post(f"{stack.api_url}/api/sandboxes", json=body, timeout=30)
            assert response.status_code == 201, response.text
            drill.track(response.json()["id"], 30)
        drill.wait_final(40)
        on_c = [i for i in drill.ids if (row := drill.states.rows.get(i)) is not None and row.server == server]
        if on_c:
            drill.find(f"{len(on_c)} of {len(drill.ids)} sandboxes ended on the full server {server}")
        drill.finish()
    finally:
        stack.stop(f"dispatcher-{server}", timeout_s=10)
        stack.stop("aws-proxy-c")
        stack.events.unwatch("c")
        stack.proxies.pop("c", None)
        stack.servers.pop("c", None)
        stack.engines.pop("c", None)
        with contextlib.suppress(Exception):
            admin.server_delete(stack.settings(), server)
        engine.stop(keep_log=stack.log_dir / f"dockerd-{engine.name}.log" if stack.log_dir else None)


# k. A malformed row in the by_status index


def test_k_a_malformed_row_does_not_stop_the_reconciler(drill: Drill, stack: DrillStack) -> None:
    """A ``queued`` row with a wrong-typed attribute sits in the by_status index beside three sandboxes
    queued on a server that never came up: the reconciler skips and logs the bad row, and moves the others."""
    from chalicelib import admin
    from chalicelib.models import Sandbox

    dead = f"{stack.table_prefix}d"
    stack.servers["d"] = dead
    admin.server_create(stack.settings(), dead, DOCKER_URL, "", SLOTS, replace=True)  # no dispatcher: never alive
    bad_id = "bad" + drill.stack.table_prefix
    client = Sandbox._get_connection().connection.client
    table = f"{stack.table_prefix}-sandboxes"
    try:
        client.put_item(
            TableName=table,
            Item={
                "sandbox_id": {"S": bad_id},
                "app_id": {"S": "drill-malformed"},
                "created_at": {"S": "2020-01-01T00:00:00.000000+0000"},
                "status": {"S": "queued"},
                "server": {"S": dead},
                "image": {"S": "base"},
                "docker_image": {"S": "opendevelop/base:latest"},
                "cmd": {"L": [{"S": "true"}]},
                "attempts": {"S": "three"},  # a number attribute, written as a string
            },
        )
        drill.fault()
        for _ in range(3):
            drill.create(program(LONG), on="d")
        drill.wait_final(LONG + 10)
        logged = bad_id in stack.log("reconciler").read_text(errors="replace")
        if not logged:
            drill.find(f"the reconciler's log does not name the malformed row {bad_id}")
        if stack.procs["reconciler"].poll() is not None:
            drill.find("the reconciler exited")
        drill.finish()
    finally:
        client.delete_item(TableName=table, Key={"sandbox_id": {"S": bad_id}})
        stack.servers.pop("d", None)
        with contextlib.suppress(Exception):
            admin.server_delete(stack.settings(), dead)


# l. A backlog


BACKLOG = int(os.environ.get("DRILLS_BACKLOG", "2000"))
BACKLOG_RUN = min(BACKLOG, int(os.environ.get("DRILLS_BACKLOG_RUN", "120")))


def passes(timeline: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """The reconciler's whole passes in its requests: each begins with its one Scan of the servers
    (requests before the first Scan belong to a pass begun earlier, and are left out)."""
    found: list[dict[str, Any]] = []
    for at, key in timeline:
        if key == "dynamodb:Scan":
            found.append({"at": at, "requests": 0, "sends": 0})
        if found:
            found[-1]["requests"] += 1
            found[-1]["sends"] += key in ("sqs:SendMessage", "sqs:SendMessageBatch")
    for this, after in zip(found, found[1:], strict=False):
        this["seconds"] = after["at"] - this["at"]
    return found[:-1]  # the last one may be unfinished


def queued_count() -> int:
    from chalicelib.models import Sandbox

    return sum(1 for _ in Sandbox.by_status.query("queued", attributes_to_get=["sandbox_id"]))


@pytest.mark.timeout(600)
def test_l_a_backlog_of_queued_sandboxes(drill: Drill, stack: DrillStack) -> None:
    """2,000 sandboxes queued (DRILLS_BACKLOG): the reconciler's work per pass grows at most linearly
    with the backlog, measured at 1/4 of it and all of it; then DRILLS_BACKLOG_RUN of them (120 by default: this
    machine runs about 4 sandboxes a second) run, each once, while the reconciler's sends per pass are
    counted against the backlog of that moment.

    While the backlog builds, both dispatchers are stopped; the rows beyond those that run wait on a
    server that never comes up, and are deleted before the others run.
    """
    from chalicelib import admin
    from chalicelib.models import Sandbox

    parked = f"{stack.table_prefix}p"
    stack.servers["p"] = parked
    admin.server_create(stack.settings(), parked, DOCKER_URL, "", SLOTS, replace=True)  # never alive
    proxy = stack.proxies["reconciler"]
    cmd = ['echo "start $(cat /proc/sys/kernel/random/uuid)"', "echo done"]
    parked_ids: list[str] = []
    try:
        for key in ("a", "b"):
            stack.stop(dispatcher_name(stack, key))  # a warm stop clears the heartbeat: both are down
        run_ids = stack.create_many(BACKLOG_RUN, cmd, 10, on=("a", "b"))
        measured = []
        for size in (BACKLOG // 4, BACKLOG):
            more = size - BACKLOG_RUN - len(parked_ids)
            if more > 0:
                parked_ids += stack.create_many(more, cmd, 10, on=("p",), wake=False)
            # The rows are in before `since`: the first whole pass after it sees all of them.
            since = time.time()
            deadline = time.monotonic() + 60
            while not (seen := passes(proxy.timeline(since))) and time.monotonic() < deadline:
                time.sleep(0.5)
            if not seen:
                drill.find(f"no reconciler pass over a backlog of {size} ended within 60 s: work per pass not measured")
                continue
            measured.append((max(size, BACKLOG_RUN), seen[0]["requests"], seen[0]["seconds"]))
        drill.note(
            "reconciler per pass at a backlog of " + ", ".join(f"{n}: {r} requests, {s:.1f} s" for n, r, s in measured)
        )
        if len(measured) == 2:
            (small, small_work, _), (large, large_work, _) = measured
            if large_work > 1.5 * small_work * large / small:
                drill.find(
                    f"requests per pass grew faster than the backlog: {small_work} at {small}, {large_work} at {large}"
                )  # noqa: E501
        with Sandbox.batch_write() as batch:
            for sandbox_id in parked_ids:
                batch.delete(Sandbox(sandbox_id))
        parked_ids = []

        drill.states.interval_s = 2.0
        for sandbox_id in run_ids:
            drill.track(sandbox_id, 10)
        drill.fault()
        since = time.time()
        for key in ("a", "b"):
            stack.start_dispatcher_of(key)
        backlog: list[tuple[float, int]] = []
        deadline = time.monotonic() + BACKLOG_RUN / 2 + 60
        while not drill.wait_final(5):
            backlog.append((time.time(), queued_count()))
            if time.monotonic() > deadline:
                break
        drain_s = time.monotonic() - drill.fault_at  # type: ignore[operator]
        during = passes(proxy.timeline(since))
        sends = sum(p["sends"] for p in during)
        heavy = []
        for p in during:
            waiting = next((n for t, n in reversed(backlog) if t <= p["at"]), BACKLOG_RUN)
            if p["requests"] > 2 * waiting + 10:
                heavy.append((round(p["at"] - since), p["requests"], waiting))
        most = max((p["sends"] for p in during), default=0)
        drill.note(
            f"{BACKLOG_RUN} ran in {drain_s:.0f} s; reconciler: {len(during)} passes, {sends} wake-ups sent "
            f"({sends / max(1, BACKLOG_RUN):.2f} per sandbox), at most {most} in one pass"
        )
        if heavy:
            drill.find(f"passes with more than 2 requests per waiting sandbox (at s, requests, waiting): {heavy[:5]}")
        drill.finish()
    finally:
        if parked_ids:
            with Sandbox.batch_write() as batch:
                for sandbox_id in parked_ids:
                    batch.delete(Sandbox(sandbox_id))
        stack.servers.pop("p", None)
        with contextlib.suppress(Exception):
            admin.server_delete(stack.settings(), parked)
