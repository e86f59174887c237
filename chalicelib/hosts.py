"""Setting up a Docker host over SSH: ``manage.py server-bootstrap`` and ``server-shutdown``.

``bootstrap`` makes a Debian machine an OpenDevelop Docker server, from the
checkout it runs in, over one paramiko connection:

1. ``code``: ships the dispatcher (``chalicelib``, ``dispatcher``,
   ``requirements.txt`` and the host scripts under ``infra``) to
   ``PREFIX/app`` as one tar on a command's stdin, replacing the old folder
   whole; a manifest of content hashes says whether anything changed.
2. ``host``: runs ``infra/local/host-setup.sh`` there (installs ``docker.io``
   and gVisor with apt, starts the engine, builds the ``base`` image and the
   image catalogue of ``infra/images`` without a registry) and installs ``python3-venv``; a fingerprint of packages,
   runtimes and images taken before and after says whether it changed anything.
3. ``python``: a virtualenv in ``PREFIX/venv`` with ``requirements.txt``
   (from the package index the host reaches), rebuilt only when they change.
4. ``environment``: ``PREFIX/etc/dispatcher.env`` (mode 0600) from
   ``infra/host/dispatcher.env.template``.
5. ``unit``: ``infra/host/opendevelop-dispatcher.service`` for ``PREFIX``; with
   systemd also in ``/etc/systemd/system``, enabled.
6. ``server``: registers the server (queues included) or brings its row up to
   date, leaving its state (``draining``...) alone.  Its URL is
   ``unix:///var/run/docker.sock``: the dispatcher runs on the host, next to
   the engine; the row's ``host`` says where that is (``ssh://user@host:port``).
7. ``service``: (re)starts the dispatcher when anything above changed or it
   does not run: systemd where it runs, else ``infra/host/supervise.sh``, a
   small supervisor loop under ``setsid nohup`` (containers, minimal hosts).
8. ``heartbeat``: waits until the dispatcher's heartbeat shows in its row.

Every step compares before it writes, so running it again changes nothing and
says ``unchanged``.  The connection uses key authentication only and checks the
host key against a known_hosts file, refusing an unknown or different key
(paramiko's ``RejectPolicy``; nothing is ever added).  Files travel on a
command's stdin rather than by SFTP so that a login other than root works the
same way through ``sudo -n``.
"""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import string
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from pynamodb.exceptions import DoesNotExist

from chalicelib import admin, scheduling
from chalicelib.errors import InvalidInput, OpenDevelopError
from chalicelib.models import DockerServer, utcnow
from chalicelib.settings import PROJECT_ROOT, Settings

DEFAULT_PREFIX = "/opt/opendevelop"
UNIT_NAME = "opendevelop-dispatcher"
ENGINE_URL = "unix:///var/run/docker.sock"
# What the dispatcher needs on the host, relative to the checkout.
SHIPPED = ("requirements.txt", "chalicelib", "dispatcher", "infra/host", "infra/local/host-setup.sh", "infra/images")
SSH_SPEC = re.compile(
    r"^(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?$"
)
PREFIX_RE = re.compile(r"^/[A-Za-z0-9_./-]+$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_VALUE = re.compile(r"^[A-Za-z0-9_./:@%+=,-]*$")
CONNECT_TIMEOUT_S = 15


class HostError(OpenDevelopError):
    """The host could not be reached, refused us, or a step on it failed."""

    status = 502
    code = "HostError"


@dataclass(frozen=True)
class SSHTarget:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, spec: str) -> SSHTarget:
        match = SSH_SPEC.match(spec or "")
        if not match:
            raise InvalidInput("ssh", f"{spec!r} is not user@host or user@host:port")
        port = int(match["port"] or 22)
        if not 1 <= port <= 65535:
            raise InvalidInput("ssh", f"port {port} is out of range")
        return cls(match["user"], match["host"].strip("[]"), port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


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


# The connection


@contextmanager
def connect(target: SSHTarget, identity: str | None, known_hosts: str | None) -> Iterator[Remote]:
    """A checked, key-authenticated connection; any refusal is a ``HostError`` saying why."""
    client = paramiko.SSHClient()
    hosts_file = known_hosts or str(Path("~/.ssh/known_hosts").expanduser())
    if not Path(hosts_file).is_file():
        raise InvalidInput("known-hosts", f"{hosts_file} does not exist; host keys are never accepted blindly")
    if identity is not None and not Path(identity).is_file():
        raise InvalidInput("identity", f"{identity} does not exist")
    client.load_host_keys(hosts_file)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            key_filename=identity,
            look_for_keys=identity is None,
            allow_agent=identity is None,
            timeout=CONNECT_TIMEOUT_S,
            banner_timeout=CONNECT_TIMEOUT_S,
            auth_timeout=CONNECT_TIMEOUT_S,
        )
    except paramiko.BadHostKeyException as e:
        raise HostError(
            f"{target}: the host key does not match {hosts_file} "
            f"(known {e.expected_key.get_name()} {e.expected_key.fingerprint}, "
            f"offered {e.key.get_name()} {e.key.fingerprint}); refusing to connect"
        ) from None
    except paramiko.AuthenticationException as e:
        raise HostError(f"{target}: key authentication failed ({e})") from None
    except paramiko.SSHException as e:
        if "not found in known_hosts" in str(e):
            raise HostError(
                f"{target}: its host key is not in {hosts_file}; check the host's fingerprint and add it "
                "(host keys are never accepted automatically)"
            ) from None
        raise HostError(f"{target}: {e}") from None
    except OSError as e:  # refused, unreachable, timed out
        raise HostError(f"{target}: cannot connect: {e}") from None
    try:
        yield Remote(client, target)
    finally:
        client.close()


class Remote:
    """Commands on the host, as root (``sudo -n`` for any other login)."""

    def __init__(self, client: paramiko.SSHClient, target: SSHTarget) -> None:
        self.client = client
        self.target = target
        self.sudo = target.user != "root"

    def run(self, what: str, script: str, stdin: bytes = b"", timeout_s: float = 900, check: bool = True) -> str:
        """Run a POSIX sh script; return its output (stdout and stderr together)."""
        command = f"sh -c {shlex.quote(script)}"
        if self.sudo:
            command = f"sudo -n {command}"
        transport = self.client.get_transport()
        assert transport is not None
        channel = transport.open_session()
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(timeout_s)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            chunks = []
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            code = channel.recv_exit_status()
        except TimeoutError:
            raise HostError(f"{self.target}: {what}: no answer within {timeout_s:g} s") from None
        finally:
            channel.close()
        output = b"".join(chunks).decode("utf-8", errors="replace")
        if check and code != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise HostError(f"{self.target}: {what} failed (exit {code}):\n{tail}")
        return output

    def facts(self, script: str) -> dict[str, str]:
        """Run a script printing ``key=value`` lines; return them."""
        out = self.run("probing the host", script)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# What gets shipped


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shipped_files(source: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in SHIPPED:
        path = source / entry
        if not path.exists():
            raise InvalidInput("source", f"{source} has no {entry}; is it an OpenDevelop checkout?")
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                files[file.relative_to(source).as_posix()] = file.read_bytes()
    return files


def manifest(files: dict[str, bytes]) -> bytes:
    lines = [f"{sha256(data)}  {name}\n" for name, data in sorted(files.items())]
    return "".join(lines).encode()


def code_tar(files: dict[str, bytes], manifest_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in [*sorted(files.items()), (".manifest", manifest_bytes)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def render_env(settings: Settings, server: str, extra: dict[str, str], template: str) -> bytes:
    values: dict[str, str] = {}
    if settings.stage == "local" or settings.aws_endpoint_url:
        # The local stack's endpoint and dummy credentials; a real stage's hosts get their own
        # credentials through --env-file (never the operator's).
        if settings.aws_endpoint_url:
            values["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
        if settings.stage == "local" and settings.aws_access_key_id and settings.aws_secret_access_key:
            values["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id
            values["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key
    values.update(extra)
    fixed = {
        "stage": settings.stage,
        "server": server,
        "table_prefix": settings.table_prefix,
        "bucket": settings.bucket,
        "region": settings.region,
    }
    for name, value in [*fixed.items(), *values.items()]:
        if not ENV_VALUE.match(value):
            raise InvalidInput("env-file", f"{name}: {value!r} may hold only letters, digits and _./:@%+=,-")
    lines = "".join(f"{name}={value}\n" for name, value in sorted(values.items()))
    return string.Template(template).substitute(fixed, extra=lines).rstrip("\n").encode() + b"\n"


def read_env_file(path: str | None) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines allowed) for the host's environment."""
    if not path:
        return {}
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidInput("env-file", f"cannot read {path}: {e.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise InvalidInput("env-file", f"{path}:{number}: expected NAME=value")
        out[name] = value
    reserved = {
        "OPENDEVELOP_SERVER",
        "OPENDEVELOP_STAGE",
        "OPENDEVELOP_TABLE_PREFIX",
        "OPENDEVELOP_BUCKET",
        "OPENDEVELOP_DOCKER_URL",
        "OPENDEVELOP_HMAC_KEY",
        "OPENDEVELOP_HMAC_KEY_SECRET",
        "AWS_DEFAULT_REGION",
    }
    if reserved & out.keys():
        raise InvalidInput("env-file", f"{', '.join(sorted(reserved & out.keys()))}: set by server-bootstrap itself")
    return out


def render_unit(template: str, prefix: str) -> bytes:
    return template.replace("@PREFIX@", prefix).encode()


def _prefix(prefix: str) -> str:
    prefix = prefix.rstrip("/")
    if not PREFIX_RE.match(prefix) or ".." in prefix.split("/") or prefix in ("", "/usr", "/etc", "/var"):
        raise InvalidInput("prefix", f"{prefix!r} must be an absolute path of letters, digits and _./-")
    return prefix


# Remote scripts.  `P` is the install prefix, already validated (no quoting surprises).

FINGERPRINT = r"""
dpkg-query -W -f '${Package} ${Version}\n' docker.io runsc debootstrap python3 python3-venv 2>/dev/null
command -v dockerd docker runsc 2>/dev/null
timeout 10 docker info --format '{{json .Runtimes}}' 2>/dev/null
timeout 10 docker images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' 'opendevelop/*' 2>/dev/null | sort
"""

PYTHON = "$(command -v /usr/bin/python3 || command -v python3)"


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
    prefix = _prefix(prefix)
    if runtime not in admin.RUNTIMES:
        raise InvalidInput("runtime", f"{runtime!r} must be one of {', '.join(admin.RUNTIMES)}")
    if slots is not None and not 1 <= slots <= 256:
        raise InvalidInput("slots", "must be between 1 and 256")
    files = shipped_files(source)
    wanted_manifest = manifest(files)
    env = render_env(settings, name, read_env_file(env_file), files["infra/host/dispatcher.env.template"].decode())
    unit = render_unit(files["infra/host/opendevelop-dispatcher.service"].decode(), prefix)
    requirements_sha = sha256(files["requirements.txt"])
    report = Report(name, str(target))
    p = prefix
    with connect(target, identity, known_hosts) as remote:
        facts = remote.facts(
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
        systemd = facts.get("systemd") == "yes"

        # 1. code
        code_changed = facts.get("manifest") != sha256(wanted_manifest)
        if code_changed:
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
                stdin=code_tar(files, wanted_manifest),
            )
        report.add("code", code_changed, f"installed in {p}/app ({len(files)} files)" if code_changed else "unchanged")

        # 2. the host: Docker engine, gVisor, base image, python3-venv
        before = remote.run("fingerprinting the host", FINGERPRINT, check=False)
        skip = "OPENDEVELOP_SKIP_IMAGE=1 " if not base_image else ""
        # A cold image catalogue (infra/images) takes a while: minutes per image on a slow mirror.
        remote.run(
            "setting up Docker (infra/local/host-setup.sh)",
            f"{skip}bash {p}/app/infra/local/host-setup.sh",
            timeout_s=3600,
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
        report.add("host", before != after, "Docker, gVisor and images set up" if before != after else "unchanged")

        # 3. python
        python_changed = facts.get("requirements") != requirements_sha or facts.get("venv") != "yes"
        if python_changed:
            remote.run(
                "installing the dispatcher's requirements",
                f"""set -e
                {PYTHON} -m venv {p}/venv
                {p}/venv/bin/pip install -q --disable-pip-version-check -r {p}/app/requirements.txt
                echo {requirements_sha} > {p}/venv/.requirements.sha256""",
            )
        report.add("python", python_changed, f"virtualenv {p}/venv" if python_changed else "unchanged")

        # 4. environment, 5. unit
        env_changed = facts.get("env") != sha256(env)
        if env_changed:
            _write(remote, f"{p}/etc/dispatcher.env", env, "600")
        report.add("environment", env_changed, f"{p}/etc/dispatcher.env" if env_changed else "unchanged")
        unit_changed = facts.get("unit") != sha256(unit)
        if unit_changed:
            _write(remote, f"{p}/etc/{UNIT_NAME}.service", unit, "644")
        if systemd and facts.get("system_unit") != sha256(unit):
            _write(remote, f"/etc/systemd/system/{UNIT_NAME}.service", unit, "644")
            remote.run("enabling the service", f"systemctl daemon-reload && systemctl enable {UNIT_NAME}")
            unit_changed = True
        where = f"/etc/systemd/system/{UNIT_NAME}.service" if systemd else f"{p}/etc/{UNIT_NAME}.service (no systemd)"
        report.add("unit", unit_changed, where if unit_changed else "unchanged")

        # 6. the server's row and queues
        server_changed, detail = _register(
            settings, name, target, slots or int(facts.get("nproc") or 2), runtime, network
        )
        report.add("server", server_changed, detail)

        # 7. the service
        restart = code_changed or python_changed or env_changed or unit_changed
        last_beat = DockerServer.get(name, consistent_read=True).last_heartbeat
        service_changed, detail = _service(remote, p, systemd, restart)
        report.add("service", service_changed, detail)

        # 8. its heartbeat: a new one when the dispatcher (re)started (a warm stop clears the old one)
        if wait_s > 0:
            previous = last_beat if service_changed else None
            ttl = settings.heartbeat_ttl_s
            report.add("heartbeat", False, _wait_heartbeat(remote, name, p, systemd, previous, ttl, wait_s))
    return report


def _write(remote: Remote, path: str, data: bytes, mode: str) -> None:
    folder = path.rsplit("/", 1)[0]
    remote.run(
        f"writing {path}",
        f"""set -e
        umask 077
        mkdir -p {folder}
        cat > {path}.tmp
        chmod {mode} {path}.tmp
        mv {path}.tmp {path}""",
        stdin=data,
    )


def _register(
    settings: Settings, name: str, target: SSHTarget, slots: int, runtime: str, network: bool
) -> tuple[bool, str]:
    try:
        server = DockerServer.get(name)
    except DoesNotExist:
        server = admin.server_create(settings, name, ENGINE_URL, "", slots, runtime, network)
        server.update(actions=[DockerServer.host.set(target.url)])
        return True, f"registered, queue {server.queue_url}"
    wanted: dict[str, Any] = {"url": ENGINE_URL, "slots": slots, "runtime": runtime, "network": network}
    wanted["host"] = target.url
    stale = sorted(attr for attr, value in wanted.items() if getattr(server, attr) != value)
    if not stale:
        return False, "unchanged"
    # Only what bootstrap decides; the server's state (draining...) and heartbeat stay as they are.
    server.update(actions=[getattr(DockerServer, attr).set(wanted[attr]) for attr in stale])
    scheduling.forget()
    return True, f"updated ({', '.join(stale)})"


def _service(remote: Remote, p: str, systemd: bool, restart: bool) -> tuple[bool, str]:
    if systemd:
        active = remote.run("checking the service", f"systemctl is-active {UNIT_NAME}", check=False).strip()
        if restart or active != "active":
            remote.run("starting the service", f"systemctl restart {UNIT_NAME}")
            return True, f"{'restarted' if active == 'active' else 'started'} ({UNIT_NAME}, systemd)"
        return False, f"unchanged ({UNIT_NAME} active)"
    supervise = f"{p}/app/infra/host/supervise.sh {p}"
    status = remote.run("checking the service", f"{supervise} status", check=False).strip()
    if restart or not status.startswith("running"):
        out = remote.run("starting the service", f"{supervise} restart").strip()
        verb = "restarted" if status.startswith("running") else "started"
        return True, f"{verb} (supervise.sh, no systemd: {out})"
    return False, f"unchanged (supervise.sh, {status})"


def _wait_heartbeat(remote: Remote, name: str, p: str, systemd: bool, previous: Any, ttl_s: int, wait_s: float) -> str:
    """Until the server's row shows a fresh heartbeat other than ``previous``."""
    deadline = time.monotonic() + wait_s
    while True:
        beat = DockerServer.get(name, consistent_read=True).last_heartbeat
        if beat is not None and beat != previous and (utcnow() - beat).total_seconds() < ttl_s:
            return f"ok ({(utcnow() - beat).total_seconds():.0f} s ago)"
        if time.monotonic() > deadline:
            logs = f"journalctl -u {UNIT_NAME} -n 20 --no-pager" if systemd else f"tail -n 20 {p}/log/dispatcher.log"
            tail = remote.run("reading the dispatcher's log", logs, check=False)
            raise HostError(f"server {name}: no heartbeat from its dispatcher within {wait_s:g} s; its log:\n{tail}")
        time.sleep(0.5)


def shutdown(name: str, target: SSHTarget, identity: str | None, known_hosts: str | None, prefix: str) -> str:
    """Stop a bootstrapped host's dispatcher (a warm stop: running sandboxes finish first)."""
    p = _prefix(prefix)
    with connect(target, identity, known_hosts) as remote:
        env = remote.run("reading the host's environment", f"cat {p}/etc/dispatcher.env", check=False)
        if f"OPENDEVELOP_SERVER={name}\n" not in env:
            raise HostError(f"{target}: {p} does not hold the dispatcher of server {name!r}")
        systemd = remote.run("probing the host", "[ -d /run/systemd/system ] && echo yes", check=False).strip()
        if systemd == "yes":
            remote.run("stopping the service", f"systemctl disable --now {UNIT_NAME}")
            return f"{UNIT_NAME} stopped and disabled"
        return remote.run("stopping the service", f"{p}/app/infra/host/supervise.sh {p} stop").strip()
