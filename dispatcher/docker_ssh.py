"""The Docker API client of a dispatcher: a local socket, TCP, or a remote engine over SSH.

For ``ssh://user@host[:port]`` docker-py speaks HTTP over SSH channels that
run ``docker system dial-stdio`` on the remote (paramiko, no ``ssh`` binary
here; the remote needs the ``docker`` CLI on its PATH).  Measured per run of
the documented example against ``unix://`` on one machine (median of 20,
``tests/integration/test_ssh.py::test_ssh_overhead_per_run``), docker-py as it
comes costs about +1.1 s, because

* it keys its connection pools by the whole request URL, so a container's
  start, wait and remove each opened a channel, and every channel starts a
  login shell and the ``docker`` CLI on the remote (~0.2 s);
* Nagle's algorithm meets delayed ACKs on small HTTP writes.

Here one SSH connection is opened at start and kept; all requests share one
pool of channels on it (``SSHAdapter.get_connection``); ``TCP_NODELAY`` is set;
and since each run's attach stream is hijacked by the engine and never comes
back, ``WarmPool`` keeps two channels opened in advance, so no run waits for
one.  That leaves a few tens of milliseconds per run (+30 to +90 ms measured on a
busy 2-core machine, next to runs of ~0.3-0.6 s).

docker-py's own SSH adapter takes its key and known hosts from ``~/.ssh``.  A
dispatcher is a service, so ``SSHAdapter`` takes them explicitly instead
(``OPENDEVELOP_SSH_IDENTITY``, ``OPENDEVELOP_SSH_KNOWN_HOSTS``), uses key
authentication only, refuses a host key that is not in the known hosts file
(never adds one), keeps the connection alive, and reconnects when the remote
dropped it instead of failing every call after.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import urllib.parse
from typing import Any

import docker
import paramiko
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.errors import DockerException
from docker.transport.sshconn import SSHConnectionPool, SSHHTTPAdapter
from urllib3.exceptions import ClosedPoolError, EmptyPoolError

from chalicelib.logs import log

logger = logging.getLogger("opendevelop.dispatcher")

KEEPALIVE_S = 15
POOL_KEY = "http+docker://ssh"
CONNECT_TIMEOUT_S = 15


class WarmPool(SSHConnectionPool):
    """docker-py's pool of HTTP-over-SSH connections, plus a few kept ready in advance.

    Each run's attach stream is hijacked by the engine and never comes back to
    the pool, so every run needs one new connection: a channel, and on the
    remote a login shell starting ``docker system dial-stdio`` (~0.2 s on the
    test host).  Opening the next ones in the background while the current run
    goes on takes that off the run's path.
    """

    def __init__(self, *args: Any, spare: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spare = spare
        self._warm: list[Any] = []
        self._warm_lock = threading.Lock()
        self._refilling = threading.Lock()
        self._closed = False
        self.opened = 0  # HTTP connections (SSH channels) opened, spares included

    def _new_conn(self) -> Any:
        self.opened += 1
        return super()._new_conn()

    def _get_conn(self, timeout: float | None = None) -> Any:
        """An idle pooled connection, else a warm spare, else a new one (as docker-py's, without its fileno check)."""
        if self.pool is None:
            raise ClosedPoolError(self, "Pool is closed.")
        try:
            conn = self.pool.get(block=self.block, timeout=timeout)
        except AttributeError:  # closed meanwhile
            raise ClosedPoolError(self, "Pool is closed.") from None
        except queue.Empty:
            if self.block:
                raise EmptyPoolError(self, "Pool reached maximum size and no more connections are allowed.") from None
            conn = None
        if conn is None:
            with self._warm_lock:
                conn = self._warm.pop() if self._warm else None
        if conn is None:
            conn = self._new_conn()
        self._refill_soon()
        return conn

    def _refill_soon(self) -> None:
        if self._closed or self.spare <= 0 or len(self._warm) >= self.spare:
            return
        if self._refilling.acquire(blocking=False):
            threading.Thread(target=self._refill, name="ssh-warm", daemon=True).start()

    def _refill(self) -> None:
        try:
            while not self._closed and len(self._warm) < self.spare:
                conn = self._new_conn()
                conn.connect()
                with self._warm_lock:
                    if self._closed:
                        conn.close()
                        return
                    self._warm.append(conn)
        except Exception as e:  # noqa: BLE001 - a spare is an optimisation; the request path opens its own
            log(logger, "ssh.warm_failed", logging.WARNING, error=f"{type(e).__name__}: {e}")
        finally:
            self._refilling.release()

    def close(self) -> None:
        with self._warm_lock:
            self._closed = True
            warm, self._warm = self._warm, []
        for conn in warm:
            conn.close()
        super().close()


class SSHAdapter(SSHHTTPAdapter):
    """docker-py's paramiko adapter with an explicit key and known hosts file, one warm pool, and reconnects."""

    def __init__(
        self,
        base_url: str,
        identity: str | None,
        known_hosts: str | None,
        timeout: int = 60,
        max_pool_size: int = 10,
        spare: int = 2,
    ) -> None:
        self._identity = identity
        self._known_hosts = known_hosts
        self.spare = spare
        self.connects = 0  # SSH handshakes made (1 unless the remote dropped the connection)
        super().__init__(base_url, timeout, pool_connections=1, max_pool_size=max_pool_size, shell_out=False)

    def _create_paramiko_client(self, base_url: str) -> None:
        parsed = urllib.parse.urlparse(base_url)
        client = paramiko.SSHClient()
        if self._known_hosts:
            client.load_host_keys(self._known_hosts)
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self.ssh_client = client
        self.ssh_params = {
            "hostname": parsed.hostname,
            "port": parsed.port or 22,
            "username": parsed.username,
            "key_filename": self._identity,
            # With an explicit key, that key only; otherwise the usual ~/.ssh keys and agent.  Never a password.
            "look_for_keys": self._identity is None,
            "allow_agent": self._identity is None,
            "timeout": CONNECT_TIMEOUT_S,
            "banner_timeout": CONNECT_TIMEOUT_S,
            "auth_timeout": CONNECT_TIMEOUT_S,
        }

    def _connect(self) -> None:
        self.ssh_client.connect(**self.ssh_params)
        self.connects += 1
        transport = self.ssh_client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
            # HTTP requests are small writes answered by small reads: without this, Nagle's
            # algorithm meets the peer's delayed ACK and every call waits tens of milliseconds.
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        with self.pools.lock:
            transport = self.ssh_client.get_transport()
            if transport is None or not transport.is_active():
                # docker-py only reconnects a client that was closed, not one whose transport
                # died; the pool holds channels of the dead transport, so it goes too.
                log(logger, "ssh.reconnect", logging.WARNING, host=self.ssh_params["hostname"])
                self.pools.clear()
                self.ssh_client.close()
                self._connect()
            # docker-py keys its pools by the whole request URL, so a container's start, wait and
            # remove would each open a channel (and a `docker system dial-stdio` on the remote)
            # of their own.  Every request goes to the same engine: one pool serves them all.
            pool = self.pools.get(POOL_KEY)
            if pool is None:
                pool = WarmPool(
                    ssh_client=self.ssh_client,
                    timeout=self.timeout,
                    maxsize=self.max_pool_size,
                    host=self.ssh_host,
                    spare=self.spare,
                )
                self.pools[POOL_KEY] = pool
        return pool


def docker_api(
    url: str,
    *,
    timeout: int = 60,
    max_pool_size: int = 10,
    ssh_identity: str | None = None,
    ssh_known_hosts: str | None = None,
) -> docker.APIClient:
    """An API client for ``url`` (``unix://``, ``tcp://`` or ``ssh://``); any failure is a ``DockerException``."""
    if not url.startswith("ssh://"):
        return docker.APIClient(base_url=url, version="auto", timeout=timeout, max_pool_size=max_pool_size)
    try:
        adapter = SSHAdapter(url, ssh_identity, ssh_known_hosts, timeout=timeout, max_pool_size=max_pool_size)
    except (paramiko.SSHException, OSError) as e:
        raise DockerException(f"ssh to {url}: {type(e).__name__}: {e}") from e
    # APIClient builds docker-py's own SSH adapter for an ssh:// URL; build it for a local
    # socket with a fixed version (no I/O), then put ours where its SSH branch would.
    client = docker.APIClient(
        base_url="unix:///var/run/docker.sock", version=DEFAULT_DOCKER_API_VERSION, timeout=timeout
    )
    client._custom_adapter.close()
    client.adapters.pop("http+docker://", None)
    client.mount("http+docker://ssh", adapter)
    client._custom_adapter = adapter
    client.base_url = "http+docker://ssh"
    try:
        client._version = client._retrieve_server_version()
    except (paramiko.SSHException, OSError) as e:
        raise DockerException(f"ssh to {url}: {type(e).__name__}: {e}") from e
    return client
