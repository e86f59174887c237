"""Per-app quotas: counted in DynamoDB by atomic conditional updates, answered 429 with Retry-After,
and freed whichever path settles a sandbox (issue #13)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib import admin, context, lifecycle, quotas, sandboxes
from chalicelib.errors import QuotaExceeded
from chalicelib.models import App, Counter, Sandbox
from chalicelib.validation import SandboxRequest

ONE = {"image": "base", "cmd": ["true"]}


def at_once(n: int, work: Callable[[], Any]) -> list[Any]:
    """``work`` from ``n`` threads released together: each one's result, or the exception it raised."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as e:  # noqa: BLE001 - the test sorts them
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def create_in_thread(world, timeout: int = 10) -> Callable[[], Sandbox]:
    """One create as the API makes it (``sandboxes.create``), from any thread."""
    ctx = context.get_context()
    app = App.get(world.app_id)
    return lambda: sandboxes.create(ctx, app, SandboxRequest(image="base", cmd=["true"], limits={"timeout": timeout}))


def split(results: list[Any]) -> tuple[list[Sandbox], list[QuotaExceeded]]:
    made = [r for r in results if isinstance(r, Sandbox)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(made) + len(refused) == len(results), [r for r in results if not isinstance(r, Sandbox | QuotaExceeded)]
    return made, refused


def active(app_id: str) -> int:
    try:
        return int(Counter.get(quotas.app_key(app_id), consistent_read=True).active or 0)
    except Counter.DoesNotExist:
        return 0


def test_over_the_concurrency_quota_is_a_429_with_retry_after_and_nothing_stored(world):
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"concurrency": 1})
    first = world.post_json(ONE)
    world.queued_messages()  # the first one's wake-up, out of the way

    over = world.post_json(ONE)

    assert first.status_code == 201
    assert over.status_code == 429
    assert over.json_body["Code"] == "TooManyRequests"
    assert over.json_body["Message"].startswith("concurrency: this app's limit is 1 ")
    assert int(over.headers["Retry-After"]) >= 1
    assert [row.sandbox_id for row in world.sandbox_rows()] == [first.json_body["id"]]
    assert world.queued_messages() == []


def test_concurrency_from_many_threads_never_overshoots_and_comes_back_when_sandboxes_settle(world):
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"concurrency": 3, "rate": 0})

    made, refused = split(at_once(12, create_in_thread(world)))

    assert len(made) == 3 and len(refused) == 9
    assert len(world.sandbox_rows()) == 3
    assert active(world.app_id) == 3
    # Each settling path frees its slot once: a result, a platform failure, a cancel.
    a, b, c = (Sandbox.get(s.sandbox_id) for s in made)
    token = lifecycle.claim(a, "local", "test-dispatcher")
    assert token and lifecycle.record(a.sandbox_id, token, [Sandbox.return_code.set(0)])
    assert lifecycle.fail(b.sandbox_id, lifecycle.queued_on("local"), "the engine is gone")
    assert world.client.http.delete(f"/api/sandboxes/{c.sandbox_id}", headers=world.auth).status_code == 200
    assert active(world.app_id) == 0
    # A lost (duplicate) settle frees nothing more.
    assert not lifecycle.fail(a.sandbox_id, lifecycle.running_as(token), "late")
    assert active(world.app_id) == 0

    again, _ = split(at_once(6, create_in_thread(world)))
    assert len(again) == 3


def test_the_rate_quota_from_many_threads_counts_creates_per_minute(world):
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"rate": 4, "concurrency": 0})

    made, refused = split(at_once(10, create_in_thread(world)))

    assert len(made) == 4 and len(refused) == 6
    assert all(r.message.startswith("rate: this app's limit is 4 ") for r in refused)
    assert all(1 <= r.retry_after <= 60 for r in refused)
    # Settling does not give creates back: the minute does.
    for s in made:
        lifecycle.cancel(Sandbox.get(s.sandbox_id))
    with pytest.raises(QuotaExceeded):
        create_in_thread(world)()


def test_daily_seconds_reserve_each_timeout_and_give_back_what_was_not_used(world):
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"daily_seconds": 25, "concurrency": 0})

    made, refused = split(at_once(6, create_in_thread(world, timeout=10)))

    assert len(made) == 2 and len(refused) == 4  # 2 x 10 s reserved of 25; a third would make 30
    assert refused[0].message.startswith("daily_seconds: this app's limit is 25 ")
    assert refused[0].retry_after <= 24 * 3600
    row = Sandbox.get(made[0].sandbox_id)
    token = lifecycle.claim(row, "local", "test-dispatcher")
    assert token and lifecycle.record(row.sandbox_id, token, [Sandbox.return_code.set(0)])  # ran < 1 s: 1 s charged
    third = create_in_thread(world, timeout=10)()  # 1 + 10 + 10 <= 25
    assert third.status == "queued"
    with pytest.raises(QuotaExceeded):
        create_in_thread(world, timeout=10)()
    with pytest.raises(QuotaExceeded):
        create_in_thread(world, timeout=30)()  # more than the whole day's quota, however empty


def test_a_failed_create_gives_its_quota_back(world, monkeypatch):
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"concurrency": 1})

    def no_queue(*args: Any) -> None:
        from chalicelib.errors import Unavailable

        raise Unavailable("SQS is down")

    monkeypatch.setattr(sandboxes.aws, "send_wakeup", no_queue)
    assert world.post_json(ONE).status_code == 503
    monkeypatch.undo()

    assert active(world.app_id) == 0
    assert world.post_json(ONE).status_code == 201


def test_usage_shows_the_apps_own_running_queued_today_and_limits(world):
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"concurrency": 7})
    ids = [world.post_json(ONE).json_body["id"] for _ in range(3)]
    other_id, other_secret = world.new_app()
    world.post(b'{"image": "base", "cmd": ["true"]}', "application/json", world.auth_for(other_id, other_secret))
    row = Sandbox.get(ids[0])
    token = lifecycle.claim(row, "local", "test-dispatcher")
    lifecycle.claim(Sandbox.get(ids[1]), "local", "test-dispatcher")
    lifecycle.record(ids[0], token, [Sandbox.return_code.set(0)])

    body = world.get("/api/usage").json_body

    assert body == {
        "running": 1,
        "queued": 1,
        "today": {"sandboxes": 3, "run_seconds": body["today"]["run_seconds"]},
        "limits": {"concurrency": 7, "rate": world.settings.quotas["rate"], "daily_seconds": 86400},
    }
    assert body["today"]["run_seconds"] in (0, 1)
    assert world.get("/api/usage", headers={}).status_code == 401


def test_defaults_come_from_the_settings_and_zero_is_no_limit(world):
    world.monkeypatch.setenv("OPENDEVELOP_QUOTA_CONCURRENCY", "2")
    world.reload_settings()
    assert [world.post_json(ONE).status_code for _ in range(3)] == [201, 201, 429]

    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={"concurrency": 0})
    context.reset_context()  # the app row is cached a few seconds
    assert world.post_json(ONE).status_code == 201


def test_the_three_counters_are_written_at_once_one_round_trip_not_three(world, monkeypatch):
    """Each counter write made slow (0.3 s, as a far DynamoDB): a create still waits about one of them."""
    slow_write = 0.3
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real_add = quotas.add

    def slow_add(*args: Any) -> bool:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            threading.Event().wait(slow_write)
            return real_add(*args)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(quotas, "add", slow_add)
    app = App.get(world.app_id)
    taken = quotas.take(app, world.settings, 10, share=10)  # rate, concurrency and daily_seconds all limited

    assert taken.rate and taken.concurrency and taken.day and taken.woken
    assert most[0] == 3, "the three writes were not in flight together"
    assert slow_write <= taken.ms / 1000 < 2 * slow_write, taken.ms


@pytest.mark.parametrize("refuses", ["rate", "concurrency", "daily_seconds"])
def test_a_create_refused_by_one_quota_gives_back_what_the_others_took(world, refuses):
    others = {"rate": 100, "concurrency": 100, "daily_seconds": 1000}
    admin.app_set_limits(world.app_id, {}, world.settings, app_quotas={**others, refuses: 1})
    first = create_in_thread(world, timeout=1)()
    before = counters()

    with pytest.raises(QuotaExceeded) as refused:
        create_in_thread(world, timeout=1)()

    assert refused.value.message.startswith(f"{refuses}: this app's limit is 1 ")
    assert counters() == before  # every counter as the first create left it
    assert [row.sandbox_id for row in world.sandbox_rows()] == [first.sandbox_id]


def counters() -> dict[str, dict[str, Any]]:
    """Every counter's numbers (not its expiry, which each write sets again)."""
    return {
        row.key: {k: v for k, v in row.attribute_values.items() if k not in ("key", "expires_at")}
        for row in Counter.scan(consistent_read=True)
    }
