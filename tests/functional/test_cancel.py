"""DELETE /api/sandboxes/{id}: a queued or running sandbox ends ``cancelled``; a finished one is a 409."""

from __future__ import annotations

from chalicelib.models import Sandbox, utcnow
from dispatcher.engine import RunResult
from dispatcher.pipeline import Pipeline
from dispatcher.settings import DispatcherSettings
from dispatcher.worker import Dispatcher


def create(world) -> str:
    response = world.post_json({"image": "base", "cmd": ["sleep 5"]})
    assert response.status_code == 201, response.json_body
    return response.json_body["id"]


def delete(world, sandbox_id: str, headers: dict[str, str] | None = None):
    return world.client.http.delete(f"/api/sandboxes/{sandbox_id}", headers=world.auth if headers is None else headers)


def set_status(sandbox_id: str, status: str) -> None:
    Sandbox(sandbox_id).update(actions=[Sandbox.status.set(status), Sandbox.started_at.set(utcnow())])


def pipeline_of(world) -> Pipeline:
    """A dispatcher's claim and record, without an engine (none is needed for either)."""
    dispatcher = Dispatcher(world.settings, DispatcherSettings(server="local"), world.server, engine=None)  # type: ignore[arg-type]
    return dispatcher.pipeline


def test_a_queued_sandbox_is_cancelled_and_never_claimed(world):
    sandbox_id = create(world)

    response = delete(world, sandbox_id)

    assert response.status_code == 200, response.json_body
    body = response.json_body
    assert body["id"] == sandbox_id
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None and body["return_code"] is None
    assert world.get(f"/api/sandboxes/{sandbox_id}").json_body["status"] == "cancelled"
    # Its wake-up is still on the queue; the dispatcher that receives it finds nothing to run.
    assert pipeline_of(world).claim(sandbox_id) is None
    assert Sandbox.get(sandbox_id).status == "cancelled"


def test_a_running_sandbox_is_marked_cancelled_for_its_dispatcher_to_kill(world):
    sandbox_id = create(world)
    set_status(sandbox_id, "running")

    response = delete(world, sandbox_id)

    assert response.status_code == 200
    assert response.json_body["status"] == "cancelled"
    assert response.json_body["started_at"] is not None and response.json_body["duration_ms"] is not None


def test_a_finished_sandbox_cannot_be_cancelled(world):
    sandbox_id = create(world)
    set_status(sandbox_id, "terminated")

    response = delete(world, sandbox_id)

    assert response.status_code == 409
    assert response.json_body["Code"] == "ConflictError"
    assert "terminated" in response.json_body["Message"]
    assert Sandbox.get(sandbox_id).status == "terminated"


def test_cancelling_twice_is_a_conflict_the_second_time(world):
    sandbox_id = create(world)
    assert delete(world, sandbox_id).status_code == 200

    response = delete(world, sandbox_id)

    assert response.status_code == 409
    assert "cancelled" in response.json_body["Message"]


def test_another_apps_sandbox_is_not_found_and_stays_as_it_was(world):
    sandbox_id = create(world)
    other_id, other_secret = world.new_app()

    response = delete(world, sandbox_id, headers=world.auth_for(other_id, other_secret))

    assert response.status_code == 404
    assert response.json_body["Code"] == "NotFoundError"
    assert Sandbox.get(sandbox_id).status == "queued"
    assert delete(world, "0123456789abcdef").status_code == 404


def test_cancelling_needs_credentials(world):
    sandbox_id = create(world)

    assert delete(world, sandbox_id, headers={}).status_code == 401
    assert Sandbox.get(sandbox_id).status == "queued"


def test_a_dispatcher_never_overwrites_a_cancel_with_its_result(world):
    sandbox_id = create(world)
    pipeline = pipeline_of(world)
    claim = pipeline.claim(sandbox_id)
    assert claim is not None and not claim.orphan and claim.sandbox.status == "running" and claim.token

    assert delete(world, sandbox_id).status_code == 200

    assert not pipeline.record(claim.sandbox, claim.token, RunResult(137, b"", b"", b"", False, False, False, 0.5))

    row = Sandbox.get(sandbox_id)
    assert row.status == "cancelled" and row.return_code is None
