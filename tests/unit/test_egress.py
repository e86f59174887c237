"""The host's rules for sandboxes with network: what they drop, and that applying them twice changes nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dispatcher.container import SANDBOX_BRIDGE, SANDBOX_NETWORK, Hardening, Shape, configure
from infra.hosts import egress

FAKE_IPTABLES = """#!/bin/sh
# Keeps "chain rule..." lines in $RULES; -C checks, -I inserts, -N/-L make and list a chain.
case "$1" in
  -n) grep -q "^chain $3\\$" "$RULES" 2>/dev/null ;;
  -N) echo "chain $2" >> "$RULES" ;;
  -C) shift; grep -qxF -- "$*" "$RULES" 2>/dev/null ;;
  -I) chain=$2; shift 3; echo "$chain $*" >> "$RULES" ;;
  *) exit 2 ;;
esac
"""
FAKE_DOCKER = """#!/bin/sh
# "network inspect NAME" answers from $NETWORKS; "network create ... NAME" adds to it.
case "$2" in
  inspect) grep -qxF "$3" "$NETWORKS" 2>/dev/null ;;
  create) for last; do :; done; echo "$*" >> "$NETWORKS.log"; echo "$last" >> "$NETWORKS" ;;
esac
"""


def apply(tmp_path: Path, text: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("iptables", FAKE_IPTABLES), ("docker", FAKE_DOCKER)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RULES": str(tmp_path / "rules"),
        "NETWORKS": str(tmp_path / "networks"),
    }
    subprocess.run(["sh", "-c", text], env=env, check=True, timeout=30)


def test_the_rules_drop_the_host_other_containers_metadata_private_ranges_and_the_endpoints():
    text = " ".join(" ".join([chain, *rule]) for chain, rule in egress.rules(["203.0.113.7"]))

    assert f"INPUT -i {SANDBOX_BRIDGE} -j DROP" in text
    assert f"DOCKER-USER -i {SANDBOX_BRIDGE} -o {SANDBOX_BRIDGE} -j DROP" in text
    for cidr in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "203.0.113.7/32"):
        assert f"-i {SANDBOX_BRIDGE} -d {cidr} -j DROP" in text


def test_the_script_makes_the_network_without_inter_container_traffic_and_applying_it_twice_changes_nothing(
    tmp_path,
):
    text = egress.script(["203.0.113.7"])

    apply(tmp_path, text)
    first = (tmp_path / "rules").read_text()
    apply(tmp_path, text)

    assert (tmp_path / "rules").read_text() == first
    lines = first.splitlines()
    assert len(lines) == len(set(lines)) == len(egress.rules(["203.0.113.7"])) + 1  # + the chain
    created = (tmp_path / "networks.log").read_text().splitlines()
    assert len(created) == 1
    assert "com.docker.network.bridge.enable_icc=false" in created[0]
    assert created[0].endswith(SANDBOX_NETWORK)


def test_a_sandbox_with_network_is_on_its_own_network_never_the_default_bridge():
    on = configure(Shape("opendevelop/base", 256, 1, 64, 64, network=True), Hardening())
    off = configure(Shape("opendevelop/base", 256, 1, 64, 64, network=False), Hardening())

    assert (on.network_mode, off.network_mode) == (SANDBOX_NETWORK, "none")
