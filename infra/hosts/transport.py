"""The SSH side of ``server-bootstrap``: one checked connection and commands run as root on it.

The connection uses key authentication only and checks the host key against a
known_hosts file, refusing an unknown or different key (paramiko's
``RejectPolicy``; nothing is ever added).  Files travel on a command's stdin
rather than by SFTP so that a login other than root works the same way
through ``sudo -n``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from chalicelib.errors import InvalidInput, OpenDevelopError

SSH_SPEC = re.compile(
    r"^(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?$"
)
CONNECT_TIMEOUT_S = 15


class HostError(OpenDevelopError):
    """The host could not be reached, refused us, or a step on it failed."""

    status = 502
    code = "HostError"


@dataclass(frozen=True)
class SSHTarget:
    """``user@host[:port]`` as the operator typed it, checked so it can never smuggle options into ssh."""

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

    def write(self, path: str, data: bytes, mode: str) -> None:
        """Replace ``path`` atomically (a temporary file, then ``mv``), never readable by others meanwhile."""
        folder = path.rsplit("/", 1)[0]
        self.run(
            f"writing {path}",
            f"""set -e
            umask 077
            mkdir -p {folder}
            cat > {path}.tmp
            chmod {mode} {path}.tmp
            mv {path}.tmp {path}""",
            stdin=data,
        )
