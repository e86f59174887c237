"""Network access is off unless the request asks for it and both its app and its server allow it."""

from __future__ import annotations

from chalicelib import admin, scheduling
from chalicelib.models import DockerServer, Sandbox

REQUEST = {"image": "base", "cmd": ["python test.py"], "network": True}


def test_an_app_that_may_not_use_the_network_is_refused(world):
    response = world.post_json(REQUEST)

    assert response.status_code == 400
    assert response.json_body["Message"].startswith("network: this app may not")
    world.assert_nothing_stored()


def test_an_allowed_app_on_a_server_without_network_is_refused_naming_the_server(world):
    admin.app_set_limits(world.app_id, {}, world.settings, network=True)

    response = world.post_json(REQUEST)

    assert response.status_code == 400
    assert response.json_body["Message"] == "network: server 'local' does not allow network access"
    world.assert_nothing_stored()


def test_with_both_allowing_it_the_sandbox_is_stored_with_network(world):
    admin.app_set_limits(world.app_id, {}, world.settings, network=True)
    world.server.update(actions=[DockerServer.network.set(True)])
    scheduling.forget()

    response = world.post_json(REQUEST)

    assert response.status_code == 201, response.json_body
    assert Sandbox.get(response.json_body["id"]).network is True


def test_without_asking_a_sandbox_of_an_allowed_app_has_no_network(world):
    admin.app_set_limits(world.app_id, {}, world.settings, network=True)
    world.server.update(actions=[DockerServer.network.set(True)])
    scheduling.forget()

    response = world.post_json({**REQUEST, "network": False})

    assert response.status_code == 201
    assert Sandbox.get(response.json_body["id"]).network is False


# The policy holds after the create (issue #13): the dispatcher checks again, the reconciler moves with it.


def network_sandbox(world) -> str:
    admin.app_set_limits(world.app_id, {}, world.settings, network=True)
    world.server.update(actions=[DockerServer.network.set(True)])
    scheduling.forget()
    response = world.post_json(REQUEST)
    assert response.status_code == 201, response.json_body
    return str(response.json_body["id"])


def test_an_app_whose_network_was_revoked_has_its_queued_sandbox_end_error_unrun(world):
    from tests.functional.test_dispatcher import FakeEngine, make, receive

    sandbox_id = network_sandbox(world)
    admin.app_set_limits(world.app_id, {}, world.settings, network=False)
    engine = FakeEngine()
    dispatcher = make(world, engine)

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.attempts) == ("error", 0)
    assert row.error == f"network access refused: app {world.app_id!r} may no longer give its sandboxes network access"
    assert engine.runs == []


def test_a_server_that_no_longer_allows_network_refuses_the_sandbox(world):
    from tests.functional.test_dispatcher import FakeEngine, make, receive

    sandbox_id = network_sandbox(world)
    engine = FakeEngine()
    dispatcher = make(world, engine)
    DockerServer.get("local").update(actions=[DockerServer.network.set(False)])

    dispatcher.handle(receive(dispatcher))

    row = Sandbox.get(sandbox_id)
    assert (row.status, row.error) == (
        "error",
        "network access refused: server 'local' no longer allows network access",
    )
    assert engine.runs == []


def test_a_sandbox_with_network_still_allowed_runs(world):
    from tests.functional.test_dispatcher import FakeEngine, make, receive

    sandbox_id = network_sandbox(world)
    engine = FakeEngine()

    make(world, engine).handle(receive(make(world, engine)))

    assert engine.runs == [sandbox_id]
    assert Sandbox.get(sandbox_id).status == "terminated"


def test_the_reconciler_moves_a_sandbox_with_network_only_to_a_server_that_allows_it(world):
    from tests.functional.test_reconciler import kill, reconcile, server, wakeups

    sandbox_id = network_sandbox(world)
    wakeups(world, world.server)
    plain = server(world, "plain")  # healthy, but without network
    kill(world.server)

    assert reconcile(world)["rerouted"] == 0
    assert Sandbox.get(sandbox_id).server == "local"
    assert wakeups(world, plain) == []

    open_one = server(world, "open")
    open_one.update(actions=[DockerServer.network.set(True)])
    assert reconcile(world)["rerouted"] == 1
    assert Sandbox.get(sandbox_id).server == "open"
    assert wakeups(world, open_one) == [sandbox_id]
