"""Issue #13 under load on the real stack: quotas hit from many threads at once, fair share, a cancel that wins.

The module builds its own stack (moto's server, ``chalice local``, one
dispatcher with 2 slots, so the fair share is 2), because one test kills its
dispatcher with ``kill -9`` and another holds it and the Docker engine.  Each
test makes fresh apps with ``manage.py app-create`` and sets their quotas with
``manage.py app-set-limits``, as an operator does, so no test sees another's
counters.  Figures are printed (``[fair]`` lines) even when pytest captures.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from infra.local.stack import DOCKER_URL

from .conftest import running_stack
from .helpers import ROOT, Client, RunningStack, dockerd_pid, models_bound_to, multipart

pytestmark = pytest.mark.timeout(240)

FINAL = ("terminated", "error", "cancelled")


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[fair] {line}", flush=True)


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[RunningStack]:
    name = f"fl{secrets.token_hex(3)}"
    with running_stack(tmp_path_factory.mktemp(name), name) as running:
        yield running


@pytest.fixture(autouse=True)
def logs_on_failure(fair: RunningStack, show_logs_on_failure: list[Path]) -> None:
    assert fair.stack.log_dir is not None
    show_logs_on_failure.append(fair.stack.log_dir)


# The operator's commands, and what a client sees


def manage(fair: RunningStack, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args, "--json"],
        cwd=ROOT,
        env=fair.stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stderr}"
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def new_app(fair: RunningStack, **quotas: int) -> Client:
    """A fresh app with these quotas, made and limited through ``manage.py`` as an operator does."""
    app = manage(fair, "app-create", "--app_name", f"load-{secrets.token_hex(2)}", "--username", "demo")
    limits = [arg for name, value in quotas.items() for arg in (f"--{name}", str(value))]
    if limits:
        manage(fair, "app-set-limits", "--app_id", app["app_id"], *limits)
    client = Client(fair.stack.api_url, (app["app_id"], app["secret"]))
    usage(client)  # the API is warm (its first request builds its context) before any burst
    return client


def burst(client: Client, n: int, cmd: list[str], timeout: str) -> list[requests.Response]:
    """``n`` creates at once, from ``n`` threads released together."""
    ready = threading.Barrier(n)

    def post(_: int) -> requests.Response:
        ready.wait()
        # A long wait: on a loaded 2-core machine a burst's answers can take many seconds.
        return client.post(files=multipart(cmd, image="base", timeout=timeout), timeout=120)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(post, range(n)))


def split(responses: list[requests.Response], limit: int) -> list[str]:
    """Exactly ``limit`` creates accepted, the rest 429 with a Retry-After; the ids accepted."""
    codes = Tally(r.status_code for r in responses)
    assert codes == {201: limit, 429: len(responses) - limit}, codes
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["Code"] == "TooManyRequests", refused.text
        assert int(refused.headers["Retry-After"]) >= 1, refused.headers
    return [r.json()["id"] for r in responses if r.status_code == 201]


def stored(client: Client) -> set[str]:
    return set(client.listed_ids())


def counter(fair: RunningStack, key: str) -> dict[str, float]:
    """A quota counter as DynamoDB holds it (0 for what it lacks)."""
    from chalicelib.models import Counter

    with models_bound_to(fair.stack.settings()):
        try:
            row = Counter.get(key, consistent_read=True)
        except Counter.DoesNotExist:
            return {}
        return {k: float(v) for k, v in row.attribute_values.items() if isinstance(v, (int, float))}


def app_id(client: Client) -> str:
    assert client.auth is not None
    return client.auth[0]


def usage(client: Client) -> dict[str, Any]:
    response = client.get("/api/usage")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def wait_final(client: Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {i: client.sandbox(i) for i in ids}
        if all(s["status"] in FINAL for s in seen.values()):
            return seen
        open_ = {i: s["status"] for i, s in seen.items() if s["status"] not in FINAL}
        assert time.monotonic() < deadline, f"not final after {timeout:g} s: {open_}"
        time.sleep(0.25)


def assert_settled(fair: RunningStack, client: Client) -> None:
    """Nothing of the app running or queued, its slots all free: a new create is accepted."""
    now = usage(client)
    assert (now["running"], now["queued"]) == (0, 0), now
    slots = counter(fair, f"app#{app_id(client)}")
    assert slots.get("active", 0) == 0 and slots.get("woken", 0) == 0, slots
    assert client.wait_done(client.submit(["true"]), timeout=30)["status"] == "terminated"


# 1. Quotas from many threads at once


def test_the_concurrency_quota_from_many_threads_never_overshoots_and_comes_back(
    fair: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    client = new_app(fair, concurrency=3)

    responses = burst(client, 8, ["sleep 2"], timeout="20")

    ids = split(responses, 3)
    assert stored(client) == set(ids)  # the 429s stored nothing
    assert counter(fair, f"app#{app_id(client)}")["active"] == 3
    started = time.monotonic()
    wait_final(client, ids, timeout=60)
    settled_s = time.monotonic() - started
    assert_settled(fair, client)
    report(capsys, f"concurrency 3, 8 creates at once: 3 x 201, 5 x 429; all settled {settled_s:.1f} s later")


def test_the_rate_quota_from_many_threads_never_overshoots(
    fair: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    client = new_app(fair, rate=4)
    if time.time() % 60 > 50:  # the burst stays inside one one-minute window
        time.sleep(61 - time.time() % 60)
    minute = int(time.time()) // 60

    responses = burst(client, 8, ["true"], timeout="10")

    ids = split(responses, 4)
    assert int(time.time()) // 60 == minute, "the burst crossed a minute: its window rolled over"
    assert stored(client) == set(ids)
    assert counter(fair, f"app#{app_id(client)}#m#{minute}")["n"] == 4
    assert all(int(r.headers["Retry-After"]) <= 60 for r in responses if r.status_code == 429)
    wait_final(client, ids, timeout=60)
    report(capsys, "rate 4/minute, 8 creates at once: 4 x 201, 4 x 429 (Retry-After <= 60 s)")


def test_the_daily_seconds_quota_from_many_threads_never_overshoots_and_gives_back_the_unused(
    fair: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    client = new_app(fair, daily_seconds=30)
    day = f"app#{app_id(client)}#d#{datetime.now(UTC).date().isoformat()}"

    # Each reserves its 10 s timeout.  Each runs 5 s, so none has settled (and given back the unused
    # part of its reservation) when the counter is read just after the burst's answers.
    responses = burst(client, 8, ["sleep 5"], timeout="10")

    ids = split(responses, 3)
    assert counter(fair, day)["charged"] == 30
    assert stored(client) == set(ids)
    done = wait_final(client, ids, timeout=60)
    after = counter(fair, day)
    ran = sum(math.ceil((when(d["finished_at"]) - when(d["started_at"])).total_seconds()) for d in done.values())
    # The unused part of each 10 s reservation came back: what stays charged is what ran.
    assert after["charged"] == after["run_seconds"] == ran < 30, (after, ran)
    assert_settled(fair, client)
    report(
        capsys,
        f"daily_seconds 30, 8 creates of timeout 10 at once: 3 x 201, 5 x 429; after they ran, "
        f"{after['charged']:g} s charged ({after.get('run_seconds', 0):g} s run)",
    )


def test_the_slots_come_back_after_a_kill_9_of_the_dispatcher_while_the_apps_sandboxes_run(
    fair: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    client = new_app(fair, concurrency=2)
    # Long enough that the restarted dispatcher's recovery often finds one still running (or not yet
    # started): it kills it and gives it back, queued again and still holding its slot, and it runs
    # again.  One that finished meanwhile ends error, never run again.  Each releases its slot once.
    ids = split(burst(client, 8, ["sleep 12", "echo k"], timeout="40"), 2)
    deadline = time.monotonic() + 30
    while any(client.sandbox(i)["status"] != "running" for i in ids):
        assert time.monotonic() < deadline, [client.sandbox(i)["status"] for i in ids]
        time.sleep(0.1)
    log = fair.stack.log_dir / f"dispatcher-{fair.server}.log"  # type: ignore[operator]
    ready_before = log.read_text().count('"dispatcher.ready"')

    proc = fair.stack.procs.pop(f"dispatcher-{fair.server}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic()
    # Dead, its sandboxes still hold the app's slots: nothing more is accepted meanwhile.
    assert client.post(files=multipart(["true"], image="base")).status_code == 429
    restarted = fair.stack.start_dispatcher(fair.server)
    while log.read_text().count('"dispatcher.ready"') <= ready_before:
        assert restarted.poll() is None and time.monotonic() - killed_at < 30, "the dispatcher did not restart"
        time.sleep(0.1)

    done = wait_final(client, ids, timeout=90)
    settled_s = time.monotonic() - killed_at
    assert all(d["status"] in ("terminated", "error") for d in done.values()), done
    assert_settled(fair, client)
    report(
        capsys,
        f"kill -9 of the dispatcher while 2 of an app's sandboxes (its whole concurrency) ran: restarted, "
        f"they settled ({sorted((d['status'], d['error']) for d in done.values())}) {settled_s:.1f} s after "
        "the kill; "
        "the app's usage back to 0 running / 0 queued, its slots free, a new create accepted",
    )


# 2. Fair share


def test_fair_share_another_apps_sandbox_runs_before_a_floods_backlog_drains(
    fair: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = new_app(fair), new_app(fair)
    flood = [a.submit(["sleep 6"], timeout="30") for _ in range(6)]  # 3x the share (2 slots)
    b_posted = time.monotonic()
    b_id = b.submit(["echo hi"])

    b_done = b.wait_done(b_id, timeout=60)
    b_s = time.monotonic() - b_posted
    a_then = Tally(a.sandbox(i)["status"] for i in flood)

    assert b_done["status"] == "terminated" and b_done["stdout"] == "hi\n", b_done
    assert a_then["queued"] >= 1, f"app A's backlog had drained before app B's sandbox finished: {a_then}"
    wait_final(a, flood, timeout=90)
    a_s = time.monotonic() - b_posted
    report(
        capsys,
        f"fair share: app A submitted 6 x sleep 6 (3x the share of 2), then app B echo hi: B finished "
        f"{b_s:.1f} s after its POST while A had {a_then['queued']} queued, {a_then['running']} running; "
        f"A drained {a_s:.1f} s after",
    )


# 3. A cancel between the claim and the start


def test_a_cancel_between_the_claim_and_the_start_wins_the_program_never_starts(
    fair: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine is held (SIGSTOP) so the dispatcher's run waits on its first engine call just
    after its claim; the dispatcher itself is then stopped and the engine let go at once (about a
    second held: it is shared).  The cancel is answered while the claimed sandbox cannot start."""
    client = fair.client
    log = fair.stack.log_dir / f"dispatcher-{fair.server}.log"  # type: ignore[operator]
    dispatcher = fair.stack.procs[f"dispatcher-{fair.server}"]
    engine = dockerd_pid()
    assert engine is not None, "no dockerd process on this machine"
    token = secrets.token_hex(8)
    events = StartWatcher()
    offset = log.stat().st_size
    try:
        os.kill(engine, signal.SIGSTOP)
        held_at = time.monotonic()
        try:
            sandbox_id = client.submit([f"echo START-{token}"])
            while not any('"sandbox.claimed"' in line and sandbox_id in line for line in new_lines(log, offset)):
                assert time.monotonic() - held_at < 10, "the dispatcher did not claim the sandbox within 10 s"
                time.sleep(0.01)
            os.killpg(dispatcher.pid, signal.SIGSTOP)
        finally:
            os.kill(engine, signal.SIGCONT)
            engine_held_s = time.monotonic() - held_at
        try:
            assert client.sandbox(sandbox_id)["status"] == "running"  # claimed, its program not started
            cancel = requests.delete(f"{client.url}/api/sandboxes/{sandbox_id}", auth=client.auth, timeout=30)
            assert cancel.status_code == 200, cancel.text
            assert cancel.json()["status"] == "cancelled", cancel.json()
        finally:
            os.killpg(dispatcher.pid, signal.SIGCONT)

        done = client.wait_done(sandbox_id, timeout=30)
        deadline = time.monotonic() + 30
        while not any('"sandbox.cancelled_before_start"' in s and sandbox_id in s for s in new_lines(log, offset)):
            assert time.monotonic() < deadline, "the dispatcher never logged sandbox.cancelled_before_start"
            time.sleep(0.1)
        time.sleep(2)  # anything late would show by now
    finally:
        events.close()

    assert done["status"] == "cancelled", done
    assert not done["stdout"] and done["return_code"] is None, done
    assert not [s for s in new_lines(log, offset) if '"sandbox.started"' in s and sandbox_id in s]
    assert f"od-{sandbox_id}" not in events.started, events.started
    assert client.sandbox(sandbox_id)["status"] == "cancelled"
    report(
        capsys,
        f"cancel between claim and start (engine held {engine_held_s:.1f} s, then the dispatcher stopped): "
        "answered 200 cancelled; the program never started (no sandbox.started, no container start, empty "
        "stdout), the row stays cancelled",
    )


def new_lines(path: Path, offset: int) -> list[str]:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read().splitlines()


class StartWatcher:
    """The names of containers the engine started (``docker events``), from now until ``close()``."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._api = docker.APIClient(base_url=DOCKER_URL, timeout=None)
        self._stream = self._api.events(since=time.time(), decode=True, filters={"type": "container", "event": "start"})
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self._stream:
                self.started.append(((event.get("Actor") or {}).get("Attributes") or {}).get("name", ""))
        except Exception:  # noqa: BLE001 - closed
            return

    def close(self) -> None:
        self._stream.close()
