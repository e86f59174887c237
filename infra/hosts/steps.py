"""``server-bootstrap`` and ``server-shutdown``, one function per step, each returning what it changed.

Every step compares before it writes, so running bootstrap again changes
nothing and each step says ``unchanged``.  The steps, in order:

1. ``code``: the bundle's files (``infra/hosts/bundle.py``) to ``PREFIX/app``,
   replacing the old folder whole when the manifest differs.
2. ``host``: ``infra/local/host-setup.sh`` there (``docker.io`` and gVisor with
   apt, the engine started, the ``base`` image built without a registry) and
   ``python3-venv``; a fingerprint taken before and after says what changed.
3. ``python``: a virtualenv in ``PREFIX/venv`` with ``requirements-dispatcher.txt``
   (the API's packages plus docker and paramiko), rebuilt only when they change.
4. ``environment``: ``PREFIX/etc/dispatcher.env`` (mode 0600).
5. ``unit``: the systemd unit for ``PREFIX``; with systemd also in
   ``/etc/systemd/system``, enabled.
6. ``server``: registers the server (queues included) or brings its row up to
   date, leaving its state (``draining``...) alone.  Its URL is
   ``unix:///var/run/docker.sock`` (the dispatcher runs next to the engine);
   the row's ``host`` says where that is (``ssh://user@host:port``).
7. ``service``: (re)starts the dispatcher when anything above changed or it
   does not run: systemd where it runs, else ``infra/host/supervise.sh`` under
   ``setsid nohup`` (containers, minimal hosts).
8. ``heartbeat``: waits until the dispatcher's heartbeat shows in its row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pynamodb.exceptions import DoesNotExist

from chalicelib import admin, scheduling
from chalicelib.errors import InvalidInput
from chalicelib.models import DockerServer, utcnow
from chalicelib.settings import PROJECT_ROOT, Settings
from infra.hosts import egress
from infra.hosts.bundle import DEFAULT_PREFIX, ENGINE_URL, UNIT_NAME, Bundle, check_prefix, code_tar, sha256
from infra.hosts.transport import HostError, Remote, SSHTarget, connect

# Remote scripts.  The prefix `p` is already checked (no quoting surprises).

FINGERPRINT = r"""
dpkg-query -W -f '${Package} ${Version}\n' docker.io runsc debootstrap python3 python3-venv 2>/dev/null
command -v dockerd docker runsc 2>/dev/null
timeout 10 docker info --format '{{json .Runtimes}}' 2>/dev/null
timeout 10 docker images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' 'opendevelop/*' 2>/dev/null | sort
"""

PYTHON = "$(command -v /usr/bin/python3 || command -v python3)"
# A change to any of these restarts the dispatcher.
RESTART_ON = ("code", "python", "environment", "unit")


@dataclass
class Step:
    name: str
    changed: bool
    detail: str


@dataclass
class Report:
    server: str
    target: str
    steps: list[Step] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.steps)

    def add(self, name: str, changed: bool, detail: str) -> None:
        self.steps.append(Step(name, changed, detail))

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "target": self.target,
            "changed": self.changed,
            "steps": {s.name: {"changed": s.changed, "detail": s.detail} for s in self.steps},
        }

    def as_text(self) -> str:
        lines = [f"server {self.server} on {self.target}:"]
        lines += [f"  {s.name:<12} {s.detail}" for s in self.steps]
        lines.append("changed" if self.changed else "nothing changed")
        return "\n".join(lines)


def bootstrap(
    settings: Settings,
    name: str,
    target: SSHTarget,
    identity: str | None = None,
    known_hosts: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    slots: int | None = None,
    runtime: str = "runc",
    network: bool = False,
    env_file: str | None = None,
    base_image: bool = True,
    wait_s: float = 60,
    source: Path = PROJECT_ROOT,
) -> Report:
    """Make ``target`` the Docker server ``name``; idempotent.  Everything is checked before the host is touched."""
    admin._name("name", name)
    prefix = check_prefix(prefix)
    if runtime not in admin.RUNTIMES:
        raise InvalidInput("runtime", f"{runtime!r} must be one of {', '.join(admin.RUNTIMES)}")
    if slots is not None and not 1 <= slots <= 256:
        raise InvalidInput("slots", "must be between 1 and 256")
    bundle = Bundle.build(settings, name, prefix, env_file, source)
    report = Report(name, str(target))
    with connect(target, identity, known_hosts) as remote:
        facts = probe(remote, bundle.prefix)
        systemd = facts.get("systemd") == "yes"
        report.steps.append(install_code(remote, bundle, facts))
        report.steps.append(set_up_host(remote, bundle.prefix, base_image))
        if network:
            report.steps.append(sandbox_network(remote, settings))
        report.steps.append(install_python(remote, bundle, facts))
        report.steps.append(write_environment(remote, bundle, facts))
        report.steps.append(install_unit(remote, bundle, facts, systemd))
        report.steps.append(
            register_server(settings, name, target, slots or int(facts.get("nproc") or 2), runtime, network)
        )
        restart = any(s.changed for s in report.steps if s.name in RESTART_ON)
        last_beat = DockerServer.get(name, consistent_read=True).last_heartbeat
        service = start_service(remote, bundle.prefix, systemd, restart)
        report.steps.append(service)
        if wait_s > 0:
            # A new beat when the dispatcher (re)started: a warm stop clears the old one.
            previous = last_beat if service.changed else None
            ttl = settings.heartbeat_ttl_s
            report.steps.append(wait_heartbeat(remote, name, bundle.prefix, systemd, previous, ttl, wait_s))
    return report


def probe(remote: Remote, p: str) -> dict[str, str]:
    """What is installed now, in one round trip: the hashes every later step compares against."""
    return remote.facts(
        f"""
        f() {{ [ -f "$1" ] && sha256sum < "$1" | cut -c1-64; }}
        echo "manifest=$(f {p}/app/.manifest)"
        echo "requirements=$(cat {p}/venv/.requirements.sha256 2>/dev/null)"
        echo "venv=$([ -x {p}/venv/bin/python ] && echo yes)"
        echo "env=$(f {p}/etc/dispatcher.env)"
        echo "unit=$(f {p}/etc/{UNIT_NAME}.service)"
        echo "system_unit=$(f /etc/systemd/system/{UNIT_NAME}.service)"
        echo "systemd=$([ -d /run/systemd/system ] && command -v systemctl >/dev/null && echo yes)"
        echo "nproc=$(nproc)"
        """
    )


def install_code(remote: Remote, bundle: Bundle, facts: dict[str, str]) -> Step:
    """1. ``code``: swap ``PREFIX/app`` for the bundle whole, so a half-copied tree never runs."""
    p = bundle.prefix
    if facts.get("manifest") == sha256(bundle.manifest):
        return Step("code", False, "unchanged")
    remote.run(
        "installing the code",
        f"""set -e
        mkdir -p {p}
        rm -rf {p}/app.new {p}/app.old
        mkdir {p}/app.new
        tar -xzf - -C {p}/app.new --no-same-owner
        if [ -d {p}/app ]; then mv {p}/app {p}/app.old; fi
        mv {p}/app.new {p}/app
        rm -rf {p}/app.old""",
        stdin=code_tar(bundle.files, bundle.manifest),
    )
    return Step("code", True, f"installed in {p}/app ({len(bundle.files)} files)")


def set_up_host(remote: Remote, p: str, base_image: bool) -> Step:
    """2. ``host``: the Docker engine, gVisor, the base image and the catalogue, python3-venv (idempotent)."""
    before = remote.run("fingerprinting the host", FINGERPRINT, check=False)
    skip = "OPENDEVELOP_SKIP_IMAGE=1 " if not base_image else ""
    # A cold image catalogue (infra/images) takes a while: minutes per image on a slow mirror.
    remote.run(
        "setting up Docker (infra/local/host-setup.sh)", f"{skip}bash {p}/app/infra/local/host-setup.sh", timeout_s=3600
    )
    remote.run(
        "installing python3-venv",
        f"""set -e
        if ! {PYTHON} -c 'import ensurepip, venv' 2>/dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv
        fi""",
    )
    after = remote.run("fingerprinting the host", FINGERPRINT, check=False)
    return Step("host", before != after, "Docker, gVisor and images set up" if before != after else "unchanged")


def sandbox_network(remote: Remote, settings: Settings) -> Step:
    """2b. ``network`` (only for a server that allows network): the sandboxes' own Docker network and the
    host's rules that hold it in (``infra/hosts/egress.py``; idempotent: a rule present is not added again)."""
    endpoints = sorted({urlsplit(url).hostname or "" for url in egress_urls(settings)} - {""})
    listing = "iptables -S; iptables -S DOCKER-USER 2>/dev/null; docker network ls --format '{{.Name}}'"
    before = remote.run("listing the host's rules", listing, check=False)
    remote.run("the sandboxes' network and its rules", egress.script(egress.resolve(endpoints)))
    after = remote.run("listing the host's rules", listing, check=False)
    return Step("network", before != after, "sandbox network and rules set up" if before != after else "unchanged")


def egress_urls(settings: Settings) -> list[str]:
    """The platform's endpoints a sandbox must not reach (the AWS endpoints; real AWS is public)."""
    return [url for url in (settings.endpoint(s) for s in ("dynamodb", "sqs", "s3")) if url]


def install_python(remote: Remote, bundle: Bundle, facts: dict[str, str]) -> Step:
    """3. ``python``: the dispatcher's virtualenv (requirements-dispatcher.txt), only when the pins changed."""
    p = bundle.prefix
    if facts.get("requirements") == bundle.requirements_sha and facts.get("venv") == "yes":
        return Step("python", False, "unchanged")
    remote.run(
        "installing the dispatcher's requirements",
        f"""set -e
        {PYTHON} -m venv {p}/venv
        {p}/venv/bin/pip install -q --disable-pip-version-check -r {p}/app/requirements-dispatcher.txt
        echo {bundle.requirements_sha} > {p}/venv/.requirements.sha256""",
    )
    return Step("python", True, f"virtualenv {p}/venv")


def write_environment(remote: Remote, bundle: Bundle, facts: dict[str, str]) -> Step:
    """4. ``environment``: ``dispatcher.env``, mode 0600 (it may hold the host's AWS key)."""
    path = f"{bundle.prefix}/etc/dispatcher.env"
    if facts.get("env") == sha256(bundle.env):
        return Step("environment", False, "unchanged")
    remote.write(path, bundle.env, "600")
    return Step("environment", True, path)


def install_unit(remote: Remote, bundle: Bundle, facts: dict[str, str], systemd: bool) -> Step:
    """5. ``unit``: the service unit in ``PREFIX/etc``, and enabled in systemd where systemd runs."""
    p = bundle.prefix
    changed = facts.get("unit") != sha256(bundle.unit)
    if changed:
        remote.write(f"{p}/etc/{UNIT_NAME}.service", bundle.unit, "644")
    if systemd and facts.get("system_unit") != sha256(bundle.unit):
        remote.write(f"/etc/systemd/system/{UNIT_NAME}.service", bundle.unit, "644")
        remote.run("enabling the service", f"systemctl daemon-reload && systemctl enable {UNIT_NAME}")
        changed = True
    where = f"/etc/systemd/system/{UNIT_NAME}.service" if systemd else f"{p}/etc/{UNIT_NAME}.service (no systemd)"
    return Step("unit", changed, where if changed else "unchanged")


def register_server(settings: Settings, name: str, target: SSHTarget, slots: int, runtime: str, network: bool) -> Step:
    """6. ``server``: the row and its queues; only what bootstrap decides, never the state or heartbeat."""
    try:
        server = DockerServer.get(name)
    except DoesNotExist:
        server = admin.server_create(settings, name, ENGINE_URL, "", slots, runtime, network)
        server.update(actions=[DockerServer.host.set(target.url)])
        return Step("server", True, f"registered, queue {server.queue_url}")
    wanted: dict[str, Any] = {"url": ENGINE_URL, "slots": slots, "runtime": runtime, "network": network}
    wanted["host"] = target.url
    stale = sorted(attr for attr, value in wanted.items() if getattr(server, attr) != value)
    if not stale:
        return Step("server", False, "unchanged")
    server.update(actions=[getattr(DockerServer, attr).set(wanted[attr]) for attr in stale])
    scheduling.forget()
    return Step("server", True, f"updated ({', '.join(stale)})")


def start_service(remote: Remote, p: str, systemd: bool, restart: bool) -> Step:
    """7. ``service``: (re)start when something it runs changed or it is down; a restart is a warm stop."""
    if systemd:
        active = remote.run("checking the service", f"systemctl is-active {UNIT_NAME}", check=False).strip()
        if restart or active != "active":
            remote.run("starting the service", f"systemctl restart {UNIT_NAME}")
            return Step("service", True, f"{'restarted' if active == 'active' else 'started'} ({UNIT_NAME}, systemd)")
        return Step("service", False, f"unchanged ({UNIT_NAME} active)")
    supervise = f"{p}/app/infra/host/supervise.sh {p}"
    status = remote.run("checking the service", f"{supervise} status", check=False).strip()
    if restart or not status.startswith("running"):
        out = remote.run("starting the service", f"{supervise} restart").strip()
        verb = "restarted" if status.startswith("running") else "started"
        return Step("service", True, f"{verb} (supervise.sh, no systemd: {out})")
    return Step("service", False, f"unchanged (supervise.sh, {status})")


def wait_heartbeat(remote: Remote, name: str, p: str, systemd: bool, previous: Any, ttl_s: int, wait_s: float) -> Step:
    """8. ``heartbeat``: until the row shows a fresh beat other than ``previous``; else the log's tail."""
    deadline = time.monotonic() + wait_s
    while True:
        beat = DockerServer.get(name, consistent_read=True).last_heartbeat
        if beat is not None and beat != previous and (utcnow() - beat).total_seconds() < ttl_s:
            return Step("heartbeat", False, f"ok ({(utcnow() - beat).total_seconds():.0f} s ago)")
        if time.monotonic() > deadline:
            logs = f"journalctl -u {UNIT_NAME} -n 20 --no-pager" if systemd else f"tail -n 20 {p}/log/dispatcher.log"
            tail = remote.run("reading the dispatcher's log", logs, check=False)
            raise HostError(f"server {name}: no heartbeat from its dispatcher within {wait_s:g} s; its log:\n{tail}")
        time.sleep(0.5)


def shutdown(name: str, target: SSHTarget, identity: str | None, known_hosts: str | None, prefix: str) -> str:
    """Stop a bootstrapped host's dispatcher (a warm stop: running sandboxes finish first)."""
    p = check_prefix(prefix)
    with connect(target, identity, known_hosts) as remote:
        env = remote.run("reading the host's environment", f"cat {p}/etc/dispatcher.env", check=False)
        if f"OPENDEVELOP_SERVER={name}\n" not in env:
            raise HostError(f"{target}: {p} does not hold the dispatcher of server {name!r}")
        systemd = remote.run("probing the host", "[ -d /run/systemd/system ] && echo yes", check=False).strip()
        if systemd == "yes":
            remote.run("stopping the service", f"systemctl disable --now {UNIT_NAME}")
            return f"{UNIT_NAME} stopped and disabled"
        return remote.run("stopping the service", f"{p}/app/infra/host/supervise.sh {p} stop").strip()
