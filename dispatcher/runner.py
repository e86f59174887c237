"""Running one sandbox in a fresh, locked-down container.

The container gets no network, a read-only root, a size-capped tmpfs as its
working folder (``/sandbox``) and another as ``/tmp``, a non-root user, no
capabilities, ``no-new-privileges``, an init process, and memory (swap equal
to it), CPU, pids and open-files limits.  Everything a run needs arrives on the
container's stdin, without any host path: a header line, the command (with the
sandbox's environment as ``export`` lines), the tar the API stored, then the
program's own stdin.  A tiny shell prologue reads exactly the header's byte
counts, unpacks the tar into ``/sandbox`` and ``exec``-s the command, which
inherits the rest as its stdin.  That works the same for a local engine and an
``ssh://`` one, and the dispatcher never touches a path sandboxed code could
change.  Because nothing of a run is in the container's configuration, a
container can be made and started before its run is known (see ``pool``).

Output is read from the attach stream as it comes, kept up to the cap per
stream and counted beyond it, so a flood costs the dispatcher a fixed buffer,
and the engine's log driver is ``none`` so nothing lands on the host's disk.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Ulimit

from chalicelib.logs import log
from dispatcher.pool import Pool, Shape

logger = logging.getLogger("opendevelop.dispatcher")

LABEL_SANDBOX = "opendevelop.sandbox"
LABEL_SERVER = "opendevelop.server"
WORKDIR = "/sandbox"
LABEL_POOL = "opendevelop.pool"
# stdin: "<tar bytes> <command bytes>\n", the command, the tar, then the program's own stdin.
# `read` takes the header line byte by byte and `head -c` reads exactly what it is asked, so
# whatever follows is the program's own.
PROLOGUE = (
    'read -r n m || exit 125; c=$(head -c "$m") || exit 125; '
    'if [ "$n" -gt 0 ]; then head -c "$n" | tar -x -m -f - -C ' + WORKDIR + " || exit 125; fi; "
    "cd " + WORKDIR + ' && exec /bin/sh -c "$c"'
)
_RUN_NAME = re.compile(r"^/?od-([0-9a-zA-Z]+)$")  # od-<sandbox id>; spares are od-spare-<hex>
READ_CHUNK = 64 * 1024


class PlatformError(Exception):
    """The platform (not the user's program) failed; ``transient`` says whether a retry may help."""

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RunSpec:
    sandbox_id: str
    docker_image: str
    cmd: list[str]
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int
    output_bytes: int
    files_bytes: int = 0
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False


@dataclass
class RunResult:
    return_code: int
    stdout: bytes
    stderr: bytes
    logs: bytes
    timed_out: bool
    oom_killed: bool
    output_truncated: bool
    duration_s: float
    container_id: str = ""


class _Capture:
    """Keeps up to ``cap`` bytes per stream; ``logs`` interleaves exactly the kept parts."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = {1: bytearray(), 2: bytearray()}
        self.logs = bytearray()
        self.truncated = False

    def add(self, stream: int, data: bytes) -> None:
        buf = self.kept.get(stream)
        if buf is None:
            return
        room = self.cap - len(buf)
        if room <= 0:
            self.truncated = True
            return
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        buf += data
        self.logs += data


def _demux(raw: Any, capture: _Capture) -> None:
    """Read Docker's multiplexed attach stream to its end, frame by frame, in bounded memory."""
    header = b""
    stream, remaining = 0, 0
    while True:
        chunk = raw.recv(READ_CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            if remaining == 0:
                need = 8 - len(header)
                header += view[:need].tobytes()
                view = view[need:]
                if len(header) < 8:
                    break
                stream, remaining = struct.unpack(">BxxxL", header)
                header = b""
                continue
            take = view[:remaining]
            capture.add(stream, take.tobytes())
            remaining -= len(take)
            view = view[len(take) :]


def stdin_for(spec: RunSpec, payload: bytes) -> bytes:
    """What the prologue reads: the header, the command (environment first), then the tar and stdin."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in spec.env.items())
    script = (exports + " && ".join(spec.cmd)).encode()
    return f"{spec.files_bytes} {len(script)}\n".encode() + script + payload


def _send_input(raw: Any, payload: bytes) -> None:
    """Write the tar and stdin, then close our writing side so the program sees EOF."""
    try:
        if payload:
            raw.sendall(payload)
    except OSError:
        pass  # the program exited without reading everything: that is its business
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Runner:
    """Runs sandboxes on one Docker engine.  Thread-safe: one call to ``run`` per slot."""

    def __init__(
        self,
        client: docker.APIClient,
        server: str,
        runtime: str = "runc",
        user: str = "1000:1000",
        tmp_mb: int = 64,
        nofile: int = 256,
        pool_size: int = 0,
    ) -> None:
        self.api = client
        self.server = server
        self.runtime = runtime
        self.user = user
        self.tmp_mb = tmp_mb
        self.nofile = nofile
        self._images: set[str] = set()
        self._lock = threading.Lock()
        self.live: set[str] = set()  # ids of the containers made here and not removed yet
        self.pool: Pool | None = Pool(self, pool_size) if pool_size > 0 else None

    # Images

    def has_image(self, ref: str) -> bool:
        """Cached: once an image is seen it is not inspected again on the hot path."""
        with self._lock:
            if ref in self._images:
                return True
        try:
            self.api.inspect_image(ref)
        except ImageNotFound:
            return False
        except DockerException as e:
            raise PlatformError(f"inspecting image {ref}: {e}") from e
        with self._lock:
            self._images.add(ref)
        return True

    def local_images(self) -> list[str]:
        tags: list[str] = []
        for image in self.api.images():
            tags.extend(t for t in image.get("RepoTags") or [] if t != "<none>:<none>")
        return sorted(tags)

    # Containers

    def container_name(self, sandbox_id: str) -> str:
        return f"od-{sandbox_id}"

    def _host_pids(self, pids: int) -> int:
        """The engine's pids limit.

        Under runc it counts the program's processes.  Under gVisor it counts the
        sandbox kernel's host threads (about 70 idle, and up to ~18 per process under a fork bomb), and
        hitting it kills the whole sandbox, so there it is only a backstop and
        ``nproc`` (which gVisor enforces per sandbox) is the real limit.
        """
        return 256 + 32 * pids if self.runtime == "runsc" else pids

    def _ulimits(self, pids: int) -> list[Ulimit]:
        limits = [Ulimit(name="nofile", soft=self.nofile, hard=self.nofile)]
        if self.runtime == "runsc":
            # Under runc nproc would count every container's uid-1000 processes together.
            limits.append(Ulimit(name="nproc", soft=pids, hard=pids))
        return limits

    def _create(self, shape: Shape, name: str, labels: dict[str, str]) -> str:
        if not self.has_image(shape.docker_image):
            raise PlatformError(f"image {shape.docker_image} is not present on server {self.server}", transient=False)
        host_config = self.api.create_host_config(
            network_mode="bridge" if shape.network else "none",
            read_only=True,
            tmpfs={
                WORKDIR: f"rw,exec,nosuid,nodev,size={shape.disk_mb}m,mode=1777",
                "/tmp": f"rw,exec,nosuid,nodev,size={self.tmp_mb}m,mode=1777",
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            mem_limit=f"{shape.memory_mb}m",
            memswap_limit=f"{shape.memory_mb}m",
            mem_swappiness=0,
            nano_cpus=int(shape.cpus * 1e9),
            pids_limit=self._host_pids(shape.pids),
            ulimits=self._ulimits(shape.pids),
            shm_size="16m",
            ipc_mode="private",
            oom_score_adj=1000,  # under host memory pressure, sandboxes die first
            log_config=LogConfig(type="none"),  # output is read live; nothing is kept on the host's disk
            runtime=self.runtime,
        )
        kwargs: dict[str, Any] = dict(
            image=shape.docker_image,
            command=["/bin/sh", "-c", PROLOGUE],
            user=self.user,
            environment={"HOME": WORKDIR, "LANG": "C.UTF-8"},  # the sandbox's own come with its command
            stdin_open=True,  # docker-py sets StdinOnce with it: closing our side closes the program's stdin
            tty=False,
            hostname="sandbox",
            labels={LABEL_SERVER: self.server, **labels},
            name=name,
            host_config=host_config,
        )
        try:
            cid = str(self.api.create_container(**kwargs)["Id"])
        except APIError as e:
            if e.status_code != 409:
                raise PlatformError(f"creating the container: {e.explanation or e}") from e
            # A container of that name survives from an earlier attempt: it is stale by definition.
            self.remove(name)
            try:
                cid = str(self.api.create_container(**kwargs)["Id"])
            except DockerException as e2:
                raise PlatformError(f"creating the container: {e2}") from e2
        with self._lock:
            self.live.add(cid)
        return cid

    def create(self, spec: RunSpec) -> str:
        """A container for this run, not started."""
        return self._create(Shape.of(spec), self.container_name(spec.sandbox_id), {LABEL_SANDBOX: spec.sandbox_id})

    def start_spare(self, shape: Shape) -> str:
        """A started container of ``shape``, waiting for a run on its stdin (see ``pool``)."""
        cid = self._create(shape, f"od-spare-{secrets.token_hex(6)}", {LABEL_POOL: "1"})
        try:
            self.api.start(cid)
        except DockerException:
            self.remove(cid)
            raise
        return cid

    def _take_spare(self, spec: RunSpec) -> str | None:
        """A running spare for this run, named for it; None when there is none (or it is not usable)."""
        if self.pool is None:
            return None
        cid = self.pool.take(spec)
        if cid is None:
            return None
        try:
            if not self.api.inspect_container(cid)["State"].get("Running"):
                raise NotFound("the spare is not running")
            name = self.container_name(spec.sandbox_id)
            try:
                self.api.rename(cid, name)
            except APIError as e:
                if e.status_code != 409:
                    raise
                self.remove(name)  # stale, from an earlier attempt
                self.api.rename(cid, name)
            return cid
        except Exception as e:  # noqa: BLE001 - a new container is made instead (and meets the same fault, if any)
            log(logger, "pool.spare_unusable", logging.WARNING, container=cid, error=str(e)[:300])
            self.remove(cid)
            return None

    def run(self, spec: RunSpec, payload: bytes, remove: bool = True) -> RunResult:
        """Run to the end (or the timeout), in a spare when the pool has one, else in a new container.

        The container is removed before returning unless ``remove`` is false, in
        which case the caller must call ``remove(result.container_id)`` -- the
        dispatcher does so only after recording the result, so removal is not on
        the path to the client seeing it.  On any failure it is removed here.
        """
        cid = None
        ok = False
        try:
            cid = self._take_spare(spec)
            running = cid is not None
            if cid is None:
                cid = self.create(spec)
            result = self._run(cid, spec, payload, running)
            ok = True
            return result
        except DockerException as e:
            raise PlatformError(f"docker: {e}") from e
        finally:
            if cid and (remove or not ok):
                self.remove(cid)

    def _run(self, cid: str, spec: RunSpec, payload: bytes, running: bool = False) -> RunResult:
        sock = self.api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        capture = _Capture(spec.output_bytes)
        timed_out = threading.Event()
        started = time.monotonic()
        try:
            raw.settimeout(spec.timeout_s + 60)  # a backstop only: the kill below ends the stream
            if not running:
                self.api.start(cid)
            started = time.monotonic()
            killer = threading.Timer(spec.timeout_s, self._kill_on_timeout, (cid, timed_out))
            killer.daemon = True
            killer.start()
            writer = threading.Thread(target=_send_input, args=(raw, stdin_for(spec, payload)), daemon=True)
            writer.start()
            try:
                _demux(raw, capture)
            except TimeoutError:
                timed_out.set()
                self.kill(cid)
            finally:
                killer.cancel()
        finally:
            try:
                sock.close()
            except OSError:
                pass
        status = self.api.wait(cid, timeout=30)
        duration = time.monotonic() - started
        code = int(status.get("StatusCode", -1))
        oom = False
        if code == 137 and not timed_out.is_set():
            oom = bool(self.api.inspect_container(cid)["State"].get("OOMKilled"))
        return RunResult(
            return_code=code,
            stdout=bytes(capture.kept[1]),
            stderr=bytes(capture.kept[2]),
            logs=bytes(capture.logs),
            timed_out=timed_out.is_set(),
            oom_killed=oom,
            output_truncated=capture.truncated,
            duration_s=duration,
            container_id=cid,
        )

    def _kill_on_timeout(self, cid: str, flag: threading.Event) -> None:
        flag.set()
        self.kill(cid)

    def kill(self, cid: str) -> None:
        try:
            self.api.kill(cid)
        except (NotFound, APIError):
            pass  # already gone or already stopped

    def remove(self, cid: str) -> None:
        """Remove a container; never raises.  One that cannot be removed now (the engine is away)
        is forgotten here and removed by the dispatcher's next sweep (or its next start)."""
        try:
            self.api.remove_container(cid, force=True, v=True)
        except NotFound:
            pass
        except Exception as e:  # noqa: BLE001 - DockerException, or requests' own when the engine is gone
            log(logger, "container.remove_failed", logging.WARNING, container=cid, error=str(e)[:300])
        finally:
            with self._lock:
                self.live.discard(cid)

    def live_ids(self) -> set[str]:
        with self._lock:
            return set(self.live)

    def sandbox_of(self, container: dict[str, Any]) -> str:
        """The sandbox a listed container ran (its label, or the name a spare took); "" for a spare."""
        label = (container.get("Labels") or {}).get(LABEL_SANDBOX, "")
        if label:
            return str(label)
        for name in container.get("Names") or []:
            match = _RUN_NAME.match(name)
            if match:
                return match.group(1)
        return ""

    def leftovers(self) -> list[dict[str, Any]]:
        """Containers of this server that a previous dispatcher left behind."""
        return list(self.api.containers(all=True, filters={"label": f"{LABEL_SERVER}={self.server}"}))
