"""Where a webhook may go: a ``callback_url`` checked at create, and every address checked at delivery.

Judge0's callbacks were a way into its own network (CVE-2024-29021).  Here:

* only ``http`` and ``https``, at most ``MAX_URL`` characters, no credentials in
  the URL; a URL whose host is an address that is refused (and not allowed by
  the operator) can never be delivered, so it is a 400 at create;
* at delivery the host is resolved *then* and every address it resolves to is
  checked (``resolve``): loopback, private, link-local (the metadata service
  169.254.169.254 included), multicast, reserved, unspecified and any other
  address that is not global are refused, and so are the platform's own
  endpoints (its AWS endpoints' host and port), unless ``OPENDEVELOP_WEBHOOK_ALLOW``
  allows them: a CIDR allows addresses in it (any port; the platform's own
  endpoints stay refused), ``host:port`` allows that host *as written in the
  URL* on that port, whatever it resolves to;
* the connection then goes to an address that was checked
  (``webhook_send.post``): no second lookup, so a name cannot resolve to a public
  address for the check and to a private one for the connection.

A refusal is final: the delivery is marked ``failed`` with the reason and never
retried (the receiver's DNS is not expected to move to a public address later).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from chalicelib.errors import InvalidInput
from chalicelib.settings import Settings

MAX_URL = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[Any]]  # socket.getaddrinfo's shape

# What is refused, in the order a reason is given.
REFUSED = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_private", "private"),
    ("is_reserved", "reserved"),
)


class Refused(Exception):
    """The target is not one a webhook may reach; the message says why (no secret, no body in it)."""


@dataclass(frozen=True)
class Target:
    """A parsed ``callback_url``: where to connect and what to ask for."""

    scheme: str
    host: str  # as written (lower case, no brackets): the Host header and the TLS server name
    port: int
    path: str  # the request target: path and query

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


@dataclass(frozen=True)
class Policy:
    """What the operator allows (``OPENDEVELOP_WEBHOOK_ALLOW``) and the platform's own endpoints."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[tuple[str, int]] = frozenset()
    own: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        networks, hosts = [], set()
        for entry in settings.webhook_allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                host, _, port = entry.rpartition(":")
                hosts.add((host.strip("[]").lower(), int(port)))
        return cls(tuple(networks), frozenset(hosts), frozenset(settings.own_endpoints()))

    def refusal(self, address: IPAddress, target: Target) -> str | None:
        """What ``address`` is, when a webhook to ``target`` may not connect to it ("a loopback address"); or None."""
        if (target.host, target.port) in self.hosts:
            return None
        if (str(address), target.port) in self.own or (target.host, target.port) in self.own:
            return f"the platform's own endpoint (port {target.port})"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return None
        for attribute, name in REFUSED:
            if getattr(address, attribute):
                return f"a {name} address"
        if not address.is_global:
            return "not a public address"
        return None


def parse(url: Any) -> Target:
    """``callback_url`` as a ``Target``, or ``InvalidInput`` naming the field."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("callback_url", "must be an http(s) URL")
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidInput("callback_url", f"is longer than {MAX_URL} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput("callback_url", "must be ASCII without spaces (encode it as a URL)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidInput("callback_url", f"is not a URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("callback_url", "must start with http:// or https://")
    if not parts.hostname:
        raise InvalidInput("callback_url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("callback_url", "may not hold credentials (user:password@)")
    if port == 0:
        raise InvalidInput("callback_url", "port 0 is not a port")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80), path)


def check(url: Any, policy: Policy) -> str:
    """At create: the URL, if a webhook could ever be delivered to it; ``InvalidInput`` otherwise."""
    target = parse(url)
    address = target.literal
    if address is not None:
        reason = policy.refusal(address, target)
        if reason:
            raise InvalidInput("callback_url", f"refused: {address} is {reason}")
    # A name is checked when it is resolved, at each delivery: what it resolves to may change.
    return str(url).strip()


def resolve(target: Target, policy: Policy, resolver: Resolver = socket.getaddrinfo) -> list[IPAddress]:
    """At delivery: every address ``target``'s host has now, each one checked; ``Refused`` if any is refused."""
    literal = target.literal
    if literal is not None:
        addresses: Iterable[IPAddress] = [literal]
    else:
        try:
            infos = resolver(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise OSError(f"cannot resolve {target.host}: {e}") from e
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    found: list[IPAddress] = []
    for address in addresses:
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"{target.host} has no address")
    for address in found:
        reason = policy.refusal(address, target)
        if reason:
            raise Refused(
                f"refused: {target.host} resolves to {address}, {reason}"
                if literal is None
                else f"refused: {address} is {reason}"
            )
    return found
