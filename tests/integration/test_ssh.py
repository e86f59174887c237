"""Docker hosts over SSH, against a real OpenSSH server on 127.0.0.1.

The set-up installs Debian's ``openssh-server`` if it is missing and starts
``sshd -D -f <own config>`` on a free loopback port, with its own host key and
one authorized client key, all in a temporary folder (nothing in /etc/ssh or
~/.ssh is read or changed).  The tests then act as an operator would:

    ./manage.py server-bootstrap --name B --ssh root@127.0.0.1:PORT --identity KEY \\
        --known-hosts KNOWN_HOSTS --prefix TMP/opt --env-file dispatcher.env
    ./manage.py server-create --name S --url ssh://root@127.0.0.1:PORT
    python -m dispatcher --server S      # OPENDEVELOP_SSH_IDENTITY / OPENDEVELOP_SSH_KNOWN_HOSTS

and run the documented example (``python test.py`` printing ``hello
opendevelop!``) through the HTTP API on each.  The "remote" host is this
machine, so bootstrap installs into a temporary prefix and drives the same
Docker engine; its dispatcher runs under the fallback supervisor (no systemd
here).  The stack (moto, ``chalice local``) is this module's own.

The ssh:// per-run overhead is measured here too (``test_ssh_overhead_per_run``):

    .venv/bin/python -m pytest tests/integration/test_ssh.py -k overhead
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import DOCKER_URL, Stack, free_port, port_open

from .helpers import (
    ROOT,
    Client,
    RunningStack,
    children,
    models_bound_to,
    multipart,
    remove_containers,
    wait_for_text,
)

pytestmark = pytest.mark.timeout(300)

TEST_PY = 'print("hello opendevelop!")\n'
HELLO = "hello opendevelop!\n"
SSHD = "/usr/sbin/sshd"


# An OpenSSH server of our own


@dataclass
class SSHServer:
    port: int
    folder: Path
    identity: Path  # the authorized client key
    known_hosts: Path  # holds the server's real host key
    proc: subprocess.Popen[bytes]

    @property
    def login(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def known_hosts_with(self, name: str, key_line: str) -> Path:
        path = self.folder / name
        path.write_text(f"[127.0.0.1]:{self.port} {key_line}\n")
        return path


def ensure_sshd() -> None:
    """Debian's openssh-server, installed without starting the system's own sshd."""
    if Path(SSHD).exists():
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:  # no service starts during this install (removed right after)
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
            result = subprocess.run(install, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"apt-get install openssh-server failed:\n{result.stdout}{result.stderr}"
    finally:
        if made_policy:
            policy.unlink()
    assert Path(SSHD).exists(), "openssh-server is installed but has no /usr/sbin/sshd"


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    ensure_sshd()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    folder = tmp_path_factory.mktemp("sshd")
    host_key_line = keygen(folder / "host_key")
    client_key_line = keygen(folder / "client_key")
    (folder / "authorized_keys").write_text(client_key_line + "\n")
    port = free_port()
    (folder / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {folder}/host_key
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The keys live in a temporary folder under /tmp, which StrictModes would refuse.
StrictModes no
MaxSessions 100
MaxStartups 100
LogLevel VERBOSE
"""
    )
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log, stderr=log)
    server = SSHServer(port, folder, folder / "client_key", folder / "known_hosts", proc)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            assert proc.poll() is None, (folder / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not listen within 10 s"
            time.sleep(0.05)
        # As docs/operating.md has the operator do it (then compare the fingerprint out of band).
        scan = subprocess.run(
            ["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"], capture_output=True, text=True, timeout=30
        )
        assert scan.stdout.split() == [f"[127.0.0.1]:{port}", *host_key_line.split()], scan
        server.known_hosts.write_text(scan.stdout)
        yield server
    finally:
        proc.terminate()  # the listener; each session's process ends with its connection
        proc.wait(10)


# The stack, and what the tests make on it


@dataclass
class SSHWorld:
    running: RunningStack
    sshd: SSHServer
    base: Path
    prefix: Path
    env_file: Path
    bootstrapped: str  # the server manage.py server-bootstrap sets up
    over_ssh: str  # the server whose dispatcher runs here and drives the engine over ssh://

    @property
    def stack(self) -> Stack:
        return self.running.stack

    @property
    def client(self) -> Client:
        return self.running.client

    def manage(self, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *argv],
            cwd=ROOT,
            env=self.stack.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def bootstrap(self, *extra: str, known_hosts: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.manage(
            "server-bootstrap",
            f"--name={self.bootstrapped}",
            f"--ssh={self.sshd.login}",
            f"--identity={self.sshd.identity}",
            f"--known-hosts={known_hosts or self.sshd.known_hosts}",
            f"--prefix={self.prefix}",
            f"--env-file={self.env_file}",
            "--slots=2",
            "--json",
            *extra,
        )

    def server(self, name: str) -> Any:
        from chalicelib.models import DockerServer

        with models_bound_to(self.stack.settings()):
            return DockerServer.get(name, consistent_read=True)

    def only_active(self, name: str) -> None:
        """Every other server of this stack drains, so the next sandbox runs on ``name``."""
        for server in (self.bootstrapped, self.over_ssh):
            state = "active" if server == name else "draining"
            if self._exists(server):
                run = self.manage(f"server-{'activate' if state == 'active' else 'drain'}", f"--name={server}")
                assert run.returncode == 0, run.stderr

    def _exists(self, name: str) -> bool:
        from pynamodb.exceptions import DoesNotExist

        try:
            self.server(name)
            return True
        except DoesNotExist:
            return False

    def run_example(self, expect_server: str) -> dict[str, Any]:
        response = self.client.post(files=multipart(["python test.py"], {"test.py": TEST_PY}, image="base"))
        assert response.status_code == 201, response.text
        done = self.client.wait_done(response.json()["id"], timeout=60)
        assert done["status"] == "terminated" and done["return_code"] == 0, done
        assert done["logs"] == HELLO and done["stdout"] == HELLO
        assert done["server"] == expect_server
        return done

    def supervisor_pid(self) -> int | None:
        pidfile = self.prefix / "run" / "supervise.pid"
        if not pidfile.exists():
            return None
        pid = int(pidfile.read_text())
        return pid if Path(f"/proc/{pid}").exists() else None


@pytest.fixture(scope="module")
def world(sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[SSHWorld]:
    name = f"ssh{secrets.token_hex(3)}"
    base = tmp_path_factory.mktemp(name)
    stack = Stack(
        aws_port=free_port(),
        api_port=free_port(),
        table_prefix=name,
        state_dir=base / "state",
        log_dir=base / "logs",
        extra_env={
            "OPENDEVELOP_POLL_WAIT": "2",
            "OPENDEVELOP_SSH_IDENTITY": str(sshd.identity),
            "OPENDEVELOP_SSH_KNOWN_HOSTS": str(sshd.known_hosts),
        },
    )
    env_file = base / "dispatcher.env"
    env_file.write_text("# what the host's dispatcher gets besides the stage's settings\nOPENDEVELOP_POLL_WAIT=2\n")
    world = SSHWorld(RunningStack(stack, name, {}), sshd, base, base / "opt", env_file, f"{name}b", f"{name}s")
    try:
        stack.start_aws()
        world.running.demo = stack.bootstrap(servers=())
        stack.start_api()
        yield world
    finally:
        supervise = world.prefix / "app" / "infra" / "host" / "supervise.sh"
        if supervise.exists():
            subprocess.run([str(supervise), str(world.prefix), "stop"], capture_output=True, timeout=120)
        stack.stop_all()
        for server in (world.bootstrapped, world.over_ssh):
            remove_containers(docker_client, server)


@pytest.fixture
def logs_of(world: SSHWorld, show_logs_on_failure: list[Path]) -> list[Path]:
    show_logs_on_failure += [world.stack.log_dir, world.prefix / "log", world.sshd.folder / "sshd.log"]  # type: ignore[list-item]
    return show_logs_on_failure


def report(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    data: dict[str, Any] = json.loads(run.stdout)
    return data


# Host keys are checked, never accepted


def test_an_unknown_host_key_is_refused_and_nothing_happens(world: SSHWorld, logs_of: list[Path]) -> None:
    empty = world.base / "empty_known_hosts"
    empty.write_text("")

    run = world.bootstrap(known_hosts=empty)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "its host key is not in" in run.stderr and "never accepted automatically" in run.stderr
    assert empty.read_text() == ""  # nothing was added
    assert not world.prefix.exists()
    assert not world._exists(world.bootstrapped)


def test_a_different_host_key_is_refused_and_nothing_happens(world: SSHWorld, logs_of: list[Path]) -> None:
    impostor = keygen(world.base / "impostor_key")
    wrong = world.sshd.known_hosts_with("wrong_known_hosts", impostor)

    run = world.bootstrap(known_hosts=wrong)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "the host key does not match" in run.stderr and "refusing to connect" in run.stderr
    assert not world.prefix.exists()
    assert not world._exists(world.bootstrapped)


# server-bootstrap


def test_bootstrap_sets_up_the_host_and_the_documented_example_runs_on_it(world: SSHWorld, logs_of: list[Path]) -> None:
    data = report(world.bootstrap())

    steps = data["steps"]
    assert list(steps) == ["code", "host", "python", "environment", "unit", "server", "service", "heartbeat"]
    for step in ("code", "python", "environment", "unit", "server", "service"):
        assert steps[step]["changed"] is True, (step, steps[step])
    assert steps["heartbeat"]["detail"].startswith("ok")
    assert "supervise.sh" in steps["service"]["detail"]  # no systemd on this machine

    env_file = world.prefix / "etc" / "dispatcher.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    env = env_file.read_text()
    assert f"OPENDEVELOP_SERVER={world.bootstrapped}\n" in env
    assert "OPENDEVELOP_DOCKER_URL=unix:///var/run/docker.sock\n" in env
    assert "OPENDEVELOP_POLL_WAIT=2\n" in env  # from --env-file
    assert "HMAC" not in env  # the dispatcher never gets the key of the app secrets
    assert (world.prefix / "venv" / "bin" / "python").exists()
    log = (world.prefix / "log" / "dispatcher.log").read_text()  # docs/operating.md: reading the logs
    assert '"event": "dispatcher.ready"' in log and f'"server": "{world.bootstrapped}"' in log

    server = world.server(world.bootstrapped)
    assert server.url == "unix:///var/run/docker.sock"  # the dispatcher runs next to the engine
    assert server.host == world.sshd.url
    assert server.state == "active" and int(server.slots) == 2
    world.only_active(world.bootstrapped)
    world.run_example(world.bootstrapped)


def test_bootstrap_again_changes_nothing(world: SSHWorld, logs_of: list[Path]) -> None:
    pid = world.supervisor_pid()
    env_file = world.prefix / "etc" / "dispatcher.env"
    before = (env_file.stat().st_mtime_ns, (world.prefix / "app").stat().st_ino)

    data = report(world.bootstrap())

    assert data["changed"] is False, data
    for name, step in data["steps"].items():
        assert step["changed"] is False, (name, step)
    assert data["steps"]["service"]["detail"].startswith("unchanged")
    assert world.supervisor_pid() == pid is not None  # the dispatcher was not restarted
    assert (env_file.stat().st_mtime_ns, (world.prefix / "app").stat().st_ino) == before


def test_an_upgrade_ships_the_new_code_and_restarts_the_dispatcher(world: SSHWorld, logs_of: list[Path]) -> None:
    from infra.hosts import SHIPPED

    source = world.base / "newer-checkout"
    for entry in SHIPPED:
        (source / entry).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / entry).is_dir():
            shutil.copytree(ROOT / entry, source / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / entry, source / entry)
    with open(source / "dispatcher" / "__init__.py", "a") as f:
        f.write("# a newer release\n")
    pid = world.supervisor_pid()

    data = report(world.bootstrap(f"--source={source}"))

    steps = data["steps"]
    assert steps["code"]["changed"] is True and steps["service"]["changed"] is True
    assert steps["python"]["changed"] is False  # same requirements: the virtualenv stays
    assert steps["service"]["detail"].startswith("restarted")
    assert world.supervisor_pid() not in (None, pid)
    assert (world.prefix / "app" / "dispatcher" / "__init__.py").read_text().endswith("# a newer release\n")
    world.run_example(world.bootstrapped)


# A server whose engine is reached over ssh://


def test_a_server_over_ssh_runs_the_documented_example(world: SSHWorld, logs_of: list[Path]) -> None:
    run = world.manage("server-create", f"--name={world.over_ssh}", f"--url={world.sshd.url}", "--slots=2")
    assert run.returncode == 0, run.stderr
    proc = world.stack.start_dispatcher(world.over_ssh)
    wait_for_text(world.stack.log_dir / f"dispatcher-{world.over_ssh}.log", '"dispatcher.ready"', 30, proc)  # type: ignore[operator]
    world.only_active(world.over_ssh)

    done = world.run_example(world.over_ssh)

    assert done["duration_ms"] is not None
    sessions = (world.sshd.folder / "sshd.log").read_text().count("Accepted publickey for root")
    assert sessions >= 1


def test_a_dispatcher_refuses_a_remote_whose_host_key_differs(world: SSHWorld, logs_of: list[Path]) -> None:
    impostor = keygen(world.base / "impostor2_key")
    wrong = world.sshd.known_hosts_with("wrong_known_hosts2", impostor)
    env = {**world.stack.env(), "OPENDEVELOP_SSH_KNOWN_HOSTS": str(wrong)}

    run = subprocess.run(
        [sys.executable, "-m", "dispatcher", "--server", world.over_ssh],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 1, run.stdout + run.stderr
    assert f"cannot reach the Docker engine at {world.sshd.url}" in run.stderr
    assert "BadHostKeyException" in run.stderr


# Draining and retiring a bootstrapped host


def test_drain_shut_down_and_delete_a_bootstrapped_host(world: SSHWorld, logs_of: list[Path]) -> None:
    assert world.manage("server-activate", f"--name={world.over_ssh}").returncode == 0
    drained = world.manage("server-drain", f"--name={world.bootstrapped}")
    assert drained.returncode == 0, drained.stderr
    world.run_example(world.over_ssh)  # new work goes elsewhere

    run = world.manage(
        "server-shutdown",
        f"--name={world.bootstrapped}",
        f"--ssh={world.sshd.login}",
        f"--identity={world.sshd.identity}",
        f"--known-hosts={world.sshd.known_hosts}",
        f"--prefix={world.prefix}",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("stopped")
    assert world.supervisor_pid() is None
    assert world.server(world.bootstrapped).last_heartbeat is None  # a warm stop clears it

    deleted = world.manage("server-delete", f"--name={world.bootstrapped}")
    assert deleted.returncode == 0, deleted.stderr
    assert not world._exists(world.bootstrapped)


# How much ssh:// costs per run


def _tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_ssh_overhead_per_run(world: SSHWorld, capsys: pytest.CaptureFixture[str], docker_client: Any) -> None:
    """The documented example, 20 runs each through the Runner over unix:// and ssh://, interleaved.

    The SSH connection is opened once; each run's attach stream takes one channel
    (the engine hijacks it), prepared in advance by the warm pool; every other call
    reuses pooled channels.
    """
    from dispatcher.docker_ssh import POOL_KEY, docker_api
    from dispatcher.runner import Runner, RunSpec

    server = f"{world.over_ssh}m"
    payload = _tar({"test.py": TEST_PY})
    keys = {"ssh_identity": str(world.sshd.identity), "ssh_known_hosts": str(world.sshd.known_hosts)}
    runners = {
        scheme: Runner(docker_api(url, max_pool_size=8, **keys), server)
        for scheme, url in (("unix", DOCKER_URL), ("ssh", world.sshd.url))
    }
    times: dict[str, list[float]] = {scheme: [] for scheme in runners}
    runs = 20
    try:
        for i in range(runs + 1):
            for scheme, runner in runners.items():
                spec = RunSpec(
                    sandbox_id=f"{scheme}{i:04d}{secrets.token_hex(6)}",
                    docker_image="opendevelop/base:latest",
                    cmd=["python test.py"],
                    timeout_s=10,
                    memory_mb=128,
                    cpus=1,
                    pids=64,
                    disk_mb=16,
                    output_bytes=65536,
                    files_bytes=len(payload),
                )
                started = time.monotonic()
                result = runner.run(spec, payload)
                if i > 0:  # the first run of each warms the image cache and the pool
                    times[scheme].append(time.monotonic() - started)
                assert result.stdout == HELLO.encode() and result.return_code == 0
        adapter = runners["ssh"].api._custom_adapter
        pool = adapter.pools.get(POOL_KEY)
        connects, opened, spare = adapter.connects, pool.opened, pool.spare
    finally:
        for runner in runners.values():
            runner.api.close()  # the SSH connection too: the reconnect test counts sshd's sessions
        remove_containers(docker_client, server)
    unix_ms = statistics.median(times["unix"]) * 1000
    ssh_ms = statistics.median(times["ssh"]) * 1000
    line = (
        f"ssh:// overhead per run: unix:// median {unix_ms:.0f} ms, ssh:// median {ssh_ms:.0f} ms "
        f"(+{ssh_ms - unix_ms:.0f} ms) over {runs} runs each; 1 SSH connection, "
        f"{opened} channels for {runs + 1} runs"
    )
    with capsys.disabled():  # the figure belongs in every run's output, not only a failure's
        print(f"\n{line}")
    (world.base / "ssh-overhead.txt").write_text(line + "\n")

    assert connects == 1  # one SSH handshake for everything
    # One channel per run (the attach stream), plus the pool's reusable ones and the spares.
    assert opened <= (runs + 1) + spare + 3, line
    assert ssh_ms - unix_ms < 250, line


def test_the_dispatcher_reconnects_after_the_ssh_connection_drops(world: SSHWorld, logs_of: list[Path]) -> None:
    """The remote end drops the dispatcher's SSH connection; the next sandbox still runs, over a new one."""
    world.only_active(world.over_ssh)
    world.run_example(world.over_ssh)
    sessions = children(world.sshd.proc.pid)  # sshd's process per connection: only the dispatcher's now
    assert sessions, "no sshd session serves the dispatcher's connection"
    for pid in sessions:
        os.kill(pid, signal.SIGTERM)

    world.run_example(world.over_ssh)

    log = (world.stack.log_dir / f"dispatcher-{world.over_ssh}.log").read_text()  # type: ignore[operator]
    assert '"ssh.reconnect"' in log
