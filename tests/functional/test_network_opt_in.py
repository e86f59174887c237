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
