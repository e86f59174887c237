"""``GET /api/sandboxes/{id}?wait=N``: held until the sandbox settles, with one reader for all waiters."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chalicelib import context, waiting
from chalicelib.models import Sandbox


def create(world) -> str:
    response = world.post_json({"image": "base", "cmd": ["true"]})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def settle_later(sandbox_id: str, after_s: float, status: str = "terminated") -> threading.Thread:
    def settle() -> None:
        time.sleep(after_s)
        row = Sandbox.get(sandbox_id)
        row.update(actions=[Sandbox.status.set("running")])
        time.sleep(0.1)
        row.update(actions=[Sandbox.return_code.set(0), Sandbox.logs.set("hi\n"), Sandbox.status.set(status)])

    thread = threading.Thread(target=settle)
    thread.start()
    return thread


def test_a_wait_returns_soon_after_the_sandbox_settles(world):
    sandbox_id = create(world)
    settler = settle_later(sandbox_id, 0.3)

    started = time.monotonic()
    response = world.get(f"/api/sandboxes/{sandbox_id}?wait=10")
    elapsed = time.monotonic() - started
    settler.join()

    assert response.status_code == 200
    assert (response.json_body["status"], response.json_body["logs"]) == ("terminated", "hi\n")
    assert 0.35 < elapsed < 1.5


def test_a_wait_that_runs_out_returns_the_sandbox_as_it_is(world):
    sandbox_id = create(world)

    started = time.monotonic()
    response = world.get(f"/api/sandboxes/{sandbox_id}?wait=0.6")
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json_body["status"] == "queued"
    assert 0.6 <= elapsed < 1.6


def test_a_settled_sandbox_is_returned_at_once(world):
    sandbox_id = create(world)
    Sandbox.get(sandbox_id).update(actions=[Sandbox.status.set("cancelled")])

    started = time.monotonic()
    response = world.get(f"/api/sandboxes/{sandbox_id}?wait=20")

    assert response.json_body["status"] == "cancelled"
    assert time.monotonic() - started < 0.5


def test_many_waiters_share_one_read_per_tick(world, monkeypatch):
    ids = [create(world) for _ in range(12)]
    reads: list[int] = []
    batch_get = Sandbox.batch_get

    def counting(items, *args, **kwargs):
        items = list(items)
        reads.append(len(items))
        return batch_get(items, *args, **kwargs)

    monkeypatch.setattr(Sandbox, "batch_get", counting)
    settlers = [settle_later(sandbox_id, 0.5 + i * 0.05) for i, sandbox_id in enumerate(ids)]
    rows = {sandbox_id: Sandbox.get(sandbox_id) for sandbox_id in ids}

    reader = context.get_context().reader  # the API process's one reader

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        done = list(pool.map(lambda sandbox_id: reader.wait(rows[sandbox_id], 10), ids))
    elapsed = time.monotonic() - started
    for settler in settlers:
        settler.join()

    assert [row.status for row in done] == ["terminated"] * len(ids)
    assert [row.sandbox_id for row in done] == ids
    assert elapsed < 3
    # One batched read per tick for everyone, not one per waiter: at most one every 25 ms.
    assert max(reads) > 1
    assert len(reads) <= elapsed / waiting.FAST_TICK_S + 2, (len(reads), elapsed)
