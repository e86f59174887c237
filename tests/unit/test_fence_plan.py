"""The fence's timing is one configuration, checked as a whole at start."""

from __future__ import annotations

import pytest

from chalicelib.settings import Settings, SettingsError
from dispatcher.settings import DispatcherSettings, fence_plan


def test_the_default_fence_fires_and_its_kill_ends_strictly_before_the_ttl() -> None:
    plan = fence_plan(Settings(heartbeat_ttl_s=30), DispatcherSettings(server="s"))

    assert plan.lease_s + plan.kill_s < plan.ttl_s
    assert plan.margin_s > 0 and plan.lease_s >= 2 * plan.heartbeat_s
    assert "margin" in plan.describe()


def test_a_lease_that_leaves_no_margin_is_refused_naming_the_variables() -> None:
    with pytest.raises(SettingsError, match="OPENDEVELOP_LEASE.*OPENDEVELOP_KILL_WORST.*OPENDEVELOP_HEARTBEAT_TTL"):
        fence_plan(Settings(heartbeat_ttl_s=30), DispatcherSettings(server="s", lease_s=28, kill_s=3))


def test_a_lease_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(SettingsError, match="two heartbeats"):
        fence_plan(Settings(heartbeat_ttl_s=10), DispatcherSettings(server="s", heartbeat_s=5, kill_s=3))
