"""The Docker engine behind ``dispatcher.engine.Engine`` (with ``kills``, ``health``, ``docker_errors``).

A run gets a fresh container configured by ``container.configure`` (or a
spare of the same configuration, see ``pool``), attaches to it, feeds it its
input and reads its output (see ``attach``), and kills it at the timeout.  The
engine keeps no output (its log driver is ``none``).

What only Docker can say is turned into the dispatcher's terms beside it:
whether the engine answers and can make containers (``health``); the kills,
the watchdog's deadline and who else stopped a container (``kills``: a 137/143
exit the dispatcher did not cause is ``RunResult.stopped_by``); 137 with
``OOMKilled`` is the memory limit (here); transport and API errors
(``docker_errors``: ``EngineUnavailable`` or ``PlatformError``, ``from`` the
original).  The files a program leaves in ``out/`` come off its stdout
(``artifacts``).
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from chalicelib.logs import log
from dispatcher import artifacts, watchdog
from dispatcher.attach import Capture, demux, send_input, stdin_for
from dispatcher.container import (
    LABEL_POOL,
    LABEL_SANDBOX,
    LABEL_SERVER,
    Hardening,
    Shape,
    configure,
    docker_py,
    run_name,
    sandbox_of,
)
from dispatcher.docker_errors import SIGNALLED, exit_code, translated
from dispatcher.engine import EngineBroken, Leftover, NotStarted, PlatformError, RunResult, RunSpec
from dispatcher.health import Health
from dispatcher.kills import Kills
from dispatcher.pool import Pool

__all__ = ["LABEL_POOL", "LABEL_SANDBOX", "LABEL_SERVER", "Runner", "RunResult", "RunSpec"]

logger = logging.getLogger("opendevelop.dispatcher")


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
        spool: Path | None = None,
    ) -> None:
        self.spool = spool  # where the deadline files go, for the watchdog (``dispatcher.watchdog``)
        self.api = client
        self.server = server
        self.hardening = Hardening(runtime=runtime, user=user, tmp_mb=tmp_mb, nofile=nofile)
        self._images: set[str] = set()
        self._lock = threading.Lock()
        self.live: set[str] = set()  # ids of the containers made here and not removed yet
        # Sandboxes killed (cancelled, handed over) whose run may not have started its program yet.
        # ``kill`` adds under ``_start_lock``; a run checks under it just before the start, so a
        # kill is either seen before the start or lands on a started container: never lost.
        self._killed: set[str] = set()
        self._start_lock = threading.Lock()
        self.pool = Pool(self.start_spare, self.remove, pool_size, server=server)
        self._last_shape: Shape | None = None
        self.health = Health(client)
        self.kills = Kills(client, server, spool)

    # Engine: background work and health

    def start(self) -> None:
        self.pool.start()

    def close(self) -> None:
        self.pool.close()

    def pause(self) -> None:
        self.pool.pause()

    def resume(self) -> None:
        self.pool.resume()

    def probe(self) -> str:
        """Whether the engine can make a container now: "" when it can, else why not (see ``health``)."""
        return self.health.probe(self._last_shape, self._create, self.remove)

    def healthy(self) -> bool:
        return self.health.healthy()

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

    def images(self) -> list[str]:
        try:
            listed = self.api.images()
        except Exception as e:
            raise translated(e) from e
        tags: list[str] = []
        for image in listed:
            tags.extend(t for t in image.get("RepoTags") or [] if t != "<none>:<none>")
        return sorted(tags)

    # Containers

    def _create(self, shape: Shape, name: str, labels: dict[str, str]) -> str:
        if not self.has_image(shape.docker_image):
            raise PlatformError(f"image {shape.docker_image} is not present on server {self.server}", transient=False)
        create, host = docker_py(configure(shape, self.hardening))
        kwargs: dict[str, Any] = dict(
            create,
            labels={LABEL_SERVER: self.server, **labels},
            name=name,
            host_config=self.api.create_host_config(**host),
        )
        self._last_shape = shape
        try:
            cid = str(self.api.create_container(**kwargs)["Id"])
        except APIError as e:
            if e.status_code != 409:
                # The image is there and the engine answered: it cannot make containers (its disk is
                # full, its store broken).  Not the sandbox's fault; the server says so and waits.
                self.health.broken = f"creating a container: {e.explanation or e}"[:300]
                raise EngineBroken(f"creating the container: {e.explanation or e}") from e
            # A container of that name survives from an earlier attempt: it is stale by definition.
            self.remove(name)
            try:
                cid = str(self.api.create_container(**kwargs)["Id"])
            except DockerException as e2:
                raise PlatformError(f"creating the container: {e2}") from e2
        with self._lock:
            self.live.add(cid)
        self.health.broken = ""
        return cid

    def create(self, spec: RunSpec) -> str:
        """A container for this run, not started."""
        return self._create(spec.shape, run_name(spec.sandbox_id), {LABEL_SANDBOX: spec.sandbox_id})

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
        cid = self.pool.take(spec.shape)
        if cid is None:
            return None
        try:
            if not self.api.inspect_container(cid)["State"].get("Running"):
                raise NotFound("the spare is not running")
            name = run_name(spec.sandbox_id)
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

    def run(self, spec: RunSpec, payload: bytes) -> RunResult:
        """Run to the end (or the timeout), in a spare when the pool has one, else in a new container.

        The container is kept for ``release(result.container_id)`` -- the
        dispatcher calls it only after recording the result, so removal is not
        on the path to the client seeing it.  On any failure it is removed here.
        """
        cid = None
        since = time.time()
        try:
            cid = self._take_spare(spec)
            running = cid is not None
            if cid is None:
                cid = self.create(spec)
            result = self._run(cid, spec, payload, running)
            if result.return_code in SIGNALLED and not result.timed_out and not result.oom_killed:
                result.stopped_by = self.kills.stopped_from_outside(cid, since)
            return result
        except Exception as e:
            if cid:
                self.remove(cid)
            error = translated(e)
            if error is e:
                raise
            raise error from e
        finally:
            with self._start_lock:
                self._killed.discard(spec.sandbox_id)

    def _start(self, cid: str, spec: RunSpec, running: bool) -> None:
        """Start the program, unless its gate or a kill says no (``NotStarted``).

        A spare is already running, but its program starts only when its input
        arrives, which is after this.  The gate (a read of the row) runs before
        the lock; the kill check and the start run under it (see ``kill``).
        """
        reason = spec.gate() if spec.gate is not None else ""
        with self._start_lock:
            if not reason and spec.sandbox_id in self._killed:
                reason = "killed before its program started"
            if reason:
                raise NotStarted(reason)
            if not running:
                self.api.start(cid)

    def _run(self, cid: str, spec: RunSpec, payload: bytes, running: bool = False) -> RunResult:
        sock = self.api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        nonce = artifacts.new_nonce()
        collector = artifacts.Collector(spec.output_dir, spec.artifacts_bytes)
        splitter = artifacts.Splitter(nonce, collector)
        capture = Capture(spec.output_bytes, spec.output_dir, splitter)
        timed_out = threading.Event()
        deadline: threading.Thread | None = None
        started = time.monotonic()
        try:
            raw.settimeout(spec.timeout_s + 60)  # a backstop only: the kill below ends the stream
            self._start(cid, spec, running)
            started = time.monotonic()
            killer = threading.Timer(spec.timeout_s, self.kills.on_timeout, (cid, timed_out))
            killer.daemon = True
            killer.start()
            if self.spool is not None:
                # Off the program's path: the deadline holds even if this process stops.
                deadline = threading.Thread(target=self.kills.leave_deadline, args=(cid, spec), daemon=True)
                deadline.start()
            data = stdin_for(spec, payload, nonce)
            # Everything but the program's own stdin: once written, the program may have started.
            program_at = len(data) - (len(payload) - spec.files_bytes)
            on_program = functools.partial(self.kills.program_started, spec.sandbox_id)
            writer = threading.Thread(target=send_input, args=(raw, data, program_at, on_program), daemon=True)
            writer.start()
            try:
                demux(raw, capture)
            except TimeoutError:
                timed_out.set()
                self.kills.kill(cid)
            finally:
                killer.cancel()
        finally:
            capture.close()
            try:
                sock.close()
            except OSError:
                pass
        status = self.api.wait(cid, timeout=30)
        duration = time.monotonic() - started
        if deadline is not None:
            deadline.join(5)
            watchdog.clear(self.spool or Path(), cid)
        code = int(status.get("StatusCode", -1))
        if splitter.status is not None:
            # The program ended on its own (the prologue said so, with its status, before its files):
            # a kill after that (its deadline passed while its files were read) is not its result.
            code = splitter.status
            timed_out.clear()
        elif code in SIGNALLED and duration >= spec.timeout_s:
            # Killed at or past its time limit, whoever killed it (the watchdog, while this process
            # was stopped, say): the time limit's result, never a failure to run it again.
            timed_out.set()
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
            output_dir=spec.output_dir,
            artifacts_count=collector.count,
            artifacts_bytes=collector.bytes,
            artifacts_truncated=collector.truncated,
            artifacts_skipped=collector.skipped,
        )

    def kill(self, sandbox_id: str) -> None:
        with self._start_lock:
            self._killed.add(sandbox_id)
            self.kills.kill(run_name(sandbox_id))

    def release(self, container_id: str) -> None:
        self.remove(container_id)

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

    def leftovers(self) -> list[Leftover]:
        """Containers of this server other than this runner's spares (in the pool, or being taken)."""
        try:
            listed = self.api.containers(all=True, filters={"label": f"{LABEL_SERVER}={self.server}"})
        except Exception as e:
            raise translated(e) from e
        with self._lock:
            live = set(self.live)
        found = [Leftover(str(c["Id"]), sandbox_of(c), c.get("State") == "running", exit_code(c)) for c in listed]
        return [c for c in found if c.sandbox_id or c.container_id not in live]
