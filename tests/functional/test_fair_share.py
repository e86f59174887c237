"""Fair share (issue #13): an app's flood waits parked, so another app's sandbox is next in the queue.

Each app has at most its fair share of sandboxes woken (a wake-up in a
server's queue, or running); the rest are stored ``queued`` and parked, and
are woken oldest first as the app's own sandboxes settle.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chalicelib import context, lifecycle, quotas, reconciler, releases
from chalicelib.models import Counter, Sandbox
from tests.functional.test_dispatcher import FakeEngine, make, receive


def post(world, headers: dict[str, str] | None = None) -> str:
    response = world.post_json({"image": "base", "cmd": ["true"]}, headers)
    assert response.status_code == 201, response.json_body
    return str(response.json_body["id"])


def queue(world) -> list[str]:
    """The sandboxes whose wake-ups wait in the server's queue, in order (received, so they stay hidden)."""
    return [body["sandbox_id"] for body in world.queued_messages()]


def counter(app_id: str) -> dict[str, Any]:
    row = Counter.get(quotas.app_key(app_id), consistent_read=True)
    return {"active": int(row.active or 0), "woken": int(row.woken or 0), "parked": int(row.parked or 0)}


def test_a_flood_is_parked_beyond_the_share_and_another_apps_sandbox_is_next(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "2")
    world.reload_settings()
    flood = [post(world) for _ in range(6)]
    other_id, other_secret = world.new_app()
    other = post(world, world.auth_for(other_id, other_secret))

    assert queue(world) == [*flood[:2], other]  # the other app's is behind two, not six
    rows = {row.sandbox_id: row for row in world.sandbox_rows()}
    assert [rows[s].parked_app for s in flood] == [None, None] + [world.app_id] * 4
    assert {rows[s].status for s in flood} == {"queued"}
    assert counter(world.app_id) == {"active": 6, "woken": 2, "parked": 4}
    assert world.get("/api/usage").json_body["queued"] == 6  # parked ones are queued, as the app sees it


def test_the_apps_own_settles_wake_its_parked_sandboxes_oldest_first_until_all_ran(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "2")
    world.reload_settings()
    flood = [post(world) for _ in range(5)]
    engine = FakeEngine()
    dispatcher = make(world, engine)

    for _ in range(5):
        dispatcher.handle(receive(dispatcher))  # one run settles, and wakes the oldest parked one

    assert engine.runs == flood
    assert {row.status for row in world.sandbox_rows()} == {"terminated"}
    assert counter(world.app_id) == {"active": 0, "woken": 0, "parked": 0}


def test_a_parked_sandbox_cancelled_frees_its_place_and_is_never_woken(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "1")
    world.reload_settings()
    first, second, third = (post(world) for _ in range(3))
    world.queued_messages()

    assert world.client.http.delete(f"/api/sandboxes/{second}", headers=world.auth).status_code == 200
    assert counter(world.app_id) == {"active": 2, "woken": 1, "parked": 1}
    assert lifecycle.fail(first, lifecycle.queued_on("local"), "the engine is gone")  # the woken one settles

    assert queue(world) == [third]
    assert Sandbox.get(second).status == "cancelled"
    assert Sandbox.get(third).parked_app is None
    assert counter(world.app_id) == {"active": 1, "woken": 1, "parked": 0}


def test_the_reconciler_wakes_parked_sandboxes_a_lost_settle_left_behind(world):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "1")
    world.reload_settings()
    first, second = post(world), post(world)
    world.queued_messages()
    # The first settles, but its process dies before the release (the counters still count it).
    Sandbox(first).update(actions=[Sandbox.status.set("cancelled")])
    Counter(quotas.app_key(world.app_id)).update(actions=[Counter.woken.add(-1), Counter.active.add(-1)])

    reconciler.reconcile(world.settings)

    assert queue(world) == [second]
    assert Sandbox.get(second).parked_app is None


def test_a_share_follows_the_active_servers_slots_by_default(world):
    context.reset_context()
    slots = int(world.server.slots)
    ids = [post(world) for _ in range(slots + 2)]

    assert queue(world) == ids[:slots]


def test_quotas_a_process_died_before_freeing_are_freed_by_the_reconciler_and_its_parked_wake(world, monkeypatch):
    world.monkeypatch.setenv("OPENDEVELOP_FAIR_SHARE", "1")
    world.reload_settings()
    first, second = post(world), post(world)
    world.queued_messages()
    # The first is cancelled, and the process dies between the settling write and the release.
    monkeypatch.setattr(releases, "release", lambda row, unmark=False: None)
    assert lifecycle.cancel(Sandbox.get(first))
    monkeypatch.undo()
    assert counter(world.app_id) == {"active": 2, "woken": 1, "parked": 1}  # the share is held: second waits
    assert Sandbox.get(first).release_pending == "1"

    reconciler.reconcile(world.settings)  # within the grace: a live process may still be releasing
    assert counter(world.app_id) == {"active": 2, "woken": 1, "parked": 1}

    later = Sandbox.get(first).finished_at + timedelta(seconds=releases.RELEASE_GRACE_S + 1)
    errors: list[str] = []
    assert releases.rederive_releases(errors, now=later) == 1
    assert errors == []
    assert Sandbox.get(first).release_pending is None
    assert counter(world.app_id) == {"active": 1, "woken": 1, "parked": 0}  # freed, and second woken
    assert queue(world) == [second]
    assert releases.rederive_releases(errors, now=later) == 0  # once only


def test_a_settle_that_releases_leaves_no_mark(world):
    sandbox_id = post(world)
    assert lifecycle.cancel(Sandbox.get(sandbox_id))
    assert Sandbox.get(sandbox_id).release_pending is None
    assert counter(world.app_id)["active"] == 0
