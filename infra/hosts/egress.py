"""The network a sandbox with network access gets, and the host's rules that hold it in.

A network-on sandbox runs on its own Docker bridge network (``od-sandbox``,
bridge ``od-sandbox0``) with inter-container traffic off, never on Docker's
default bridge.  The host drops, for traffic coming in from that bridge:

* other containers on the bridge (inter-container communication),
* the host itself (``INPUT``: the Docker API, the dispatcher, anything listening),
* link-local ``169.254.0.0/16`` (the cloud's instance metadata service),
* the private, shared, loopback and multicast ranges (the platform's own
  network, other hosts of the VPC),
* the platform's endpoints given at set-up (the AWS endpoint, the API).

``script()`` is a POSIX shell script that makes the network and inserts each
rule only when ``iptables -C`` does not find it, so running it again changes
nothing.  ``manage.py server-bootstrap --network`` runs it on the host
(``python -m infra.hosts.egress [--endpoint HOST ...]`` prints it);
docs/operating.md lists the rules.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import socket
import sys
from collections.abc import Iterable, Sequence

from dispatcher.container import SANDBOX_BRIDGE, SANDBOX_NETWORK, SANDBOX_SUBNET

CHAIN = "DOCKER-USER"  # Docker's own place for a host's rules about containers' traffic; never flushed by it
BLOCKED = (
    "169.254.0.0/16",  # link-local: instance metadata (IMDS), and the like
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT, shared address space
    "127.0.0.0/8",
    "0.0.0.0/8",
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved
)


def rules(endpoints: Iterable[str] = ()) -> list[tuple[str, list[str]]]:
    """(chain, rule) pairs, in the order they must hold; ``endpoints`` are addresses or CIDRs to drop too."""
    out: list[tuple[str, list[str]]] = [
        ("INPUT", ["-i", SANDBOX_BRIDGE, "-j", "DROP"]),  # the host itself
        (CHAIN, ["-i", SANDBOX_BRIDGE, "-o", SANDBOX_BRIDGE, "-j", "DROP"]),  # container to container
    ]
    for cidr in (*BLOCKED, *(str(ipaddress.ip_network(e, strict=False)) for e in endpoints)):
        out.append((CHAIN, ["-i", SANDBOX_BRIDGE, "-d", cidr, "-j", "DROP"]))
    return out


def resolve(hosts: Iterable[str]) -> list[str]:
    """The IPv4 addresses of the platform's endpoints (host names or addresses)."""
    found: list[str] = []
    for host in hosts:
        try:
            ipaddress.ip_network(host, strict=False)
            found.append(host)
            continue
        except ValueError:
            pass
        for info in socket.getaddrinfo(host, None, family=socket.AF_INET):
            address = str(info[4][0])
            if address not in found:
                found.append(address)
    return found


def script(endpoints: Sequence[str] = ()) -> str:
    """The idempotent shell script: the network, then every rule not present yet."""
    q = shlex.quote
    lines = [
        "set -eu",
        f"docker network inspect {q(SANDBOX_NETWORK)} >/dev/null 2>&1 || docker network create --driver bridge "
        f"--subnet {q(SANDBOX_SUBNET)} -o com.docker.network.bridge.name={q(SANDBOX_BRIDGE)} "
        f"-o com.docker.network.bridge.enable_icc=false {q(SANDBOX_NETWORK)}",
        f"iptables -n -L {CHAIN} >/dev/null 2>&1 || iptables -N {CHAIN}",
    ]
    # Each rule is inserted at the top, so the list is walked backwards to keep its order.
    for chain, rule in reversed(rules(endpoints)):
        spec = " ".join(q(part) for part in rule)
        lines.append(f"iptables -C {chain} {spec} 2>/dev/null || iptables -I {chain} 1 {spec}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.hosts.egress", description="print the host's sandbox-network script"
    )
    parser.add_argument("--endpoint", action="append", default=[], help="a platform endpoint to drop (host or CIDR)")
    args = parser.parse_args(argv)
    sys.stdout.write(script(resolve(args.endpoint)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
