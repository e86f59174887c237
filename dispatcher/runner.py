"""The Docker engine, behind ``dispatcher.engine.Engine``: the only part of the dispatcher that knows Docker.

A run gets a fresh container configured by ``container.configure`` (or a
spare of the same configuration, see ``pool``), attaches to it, feeds it its
input and reads its output (see ``attach``), and kills it at the timeout.  The
engine keeps no output (its log driver is ``none``).

Here too is what only Docker can say, turned into the dispatcher's terms:

* whether the engine answers (``healthy``, a ping);
* what an exit code means: 137 with ``OOMKilled`` is the memory limit, and a
  137/143 exit that the dispatcher did not cause (a ``kill``/``stop`` event
  whose signal is not its own SIGKILL) is the engine or an operator stopping
  the container, reported as ``RunResult.stopped_by``;
* transport and API errors, raised again as ``EngineUnavailable`` (the engine
  could not be reached) or ``PlatformError``, ``from`` the original.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import docker
import requests
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
from dispatcher.engine import EngineBroken, EngineUnavailable, Leftover, PlatformError, RunResult, RunSpec
from dispatcher.pool import Pool

__all__ = ["LABEL_POOL", "LABEL_SANDBOX", "LABEL_SERVER", "Runner", "RunResult", "RunSpec"]

logger = logging.getLogger("opendevelop.dispatcher")

# Exit codes of a container ended by a signal: SIGKILL (the timeout, a cancel, the OOM killer,
# or someone outside), SIGTERM (only ever someone outside: the dispatcher sends SIGKILL).
SIGNALLED = (137, 143)
MIN_FREE_MB = 64  # an engine whose data root has less free takes no new work (a container needs room)


def _engine_gone(e: BaseException | None) -> bool:
    """Whether the engine could not be reached (docker-py talks HTTP through ``requests``).

    A pooled connection can still answer a ping while a stopping engine has
    already closed its socket, so the failure itself is the better witness.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, requests.exceptions.ConnectionError):
            return True
        e = e.__cause__ or e.__context__
    return False


def translated(e: Exception) -> Exception:
    """The dispatcher's own error for an engine's: raise the answer ``from e``."""
    if _engine_gone(e):
        return EngineUnavailable(f"{type(e).__name__}: {e}")
    if isinstance(e, PlatformError):
        return e
    if isinstance(e, DockerException):
        return PlatformError(f"docker: {e}")
    if isinstance(e, requests.exceptions.RequestException):
        return PlatformError(f"{type(e).__name__}: {e}")
    return e  # not the engine's: the dispatcher reports it as unexpected


def _exit_code(container: dict[str, Any]) -> int | None:
    """The exit code a listed container's status line gives ("Exited (137) 5 seconds ago")."""
    match = re.match(r"^Exited \((-?\d+)\)", str(container.get("Status") or ""))
    return int(match.group(1)) if match else None


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
        self.pool = Pool(self.start_spare, self.remove, pool_size, server=server)
        self._last_shape: Shape | None = None
        self._ours: set[str] = set()  # containers (ids or names) this runner killed itself
        self.broken = ""  # the last failure to make a container, "" once one is made again
        self._root: str | None = None  # the engine's data root, when it is on this host

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
        """Make (and remove) a container of the last shape run: "" when that works, else why not.

        Without a failure seen (``broken``, set by any failed create: a run's, or the pool's
        refill) it answers at once, so the heartbeat may ask every time."""
        full = self._disk_full()
        if full:
            self.broken = full
            return full
        if not self.broken or self._last_shape is None:
            return self.broken
        try:
            cid = self._create(self._last_shape, f"od-probe-{secrets.token_hex(6)}", {LABEL_POOL: "probe"})
        except Exception as e:  # noqa: BLE001 - the answer is the point
            return f"{type(e).__name__}: {e}"[:300]
        self.remove(cid)
        return ""

    def _disk_full(self) -> str:
        """For an engine on this host: its data root's free space, read directly (one statvfs)."""
        try:
            if self._root is None:
                self._root = str(self.api.info().get("DockerRootDir") or "")
            if not self._root or not os.path.isdir(self._root):
                return ""  # a remote engine: its create failures say it
            stat = os.statvfs(self._root)
        except Exception:  # noqa: BLE001 - no answer is no verdict; the next create will tell
            return ""
        free_mb = stat.f_bavail * stat.f_frsize // (1024 * 1024)
        return f"the engine's disk is full ({free_mb} MB free in {self._root})" if free_mb < MIN_FREE_MB else ""

    def healthy(self) -> bool:
        try:
            self.api.ping()
            return True
        except Exception:  # noqa: BLE001 - any failure means the same here
            return False

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
                self.broken = f"creating a container: {e.explanation or e}"[:300]
                raise EngineBroken(f"creating the container: {e.explanation or e}") from e
            # A container of that name survives from an earlier attempt: it is stale by definition.
            self.remove(name)
            try:
                cid = str(self.api.create_container(**kwargs)["Id"])
            except DockerException as e2:
                raise PlatformError(f"creating the container: {e2}") from e2
        with self._lock:
            self.live.add(cid)
        self.broken = ""
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
                result.stopped_by = self._stopped_from_outside(cid, since)
            return result
        except Exception as e:
            if cid:
                self.remove(cid)
            error = translated(e)
            if error is e:
                raise
            raise error from e

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
            if not running:
                self.api.start(cid)
            started = time.monotonic()
            killer = threading.Timer(spec.timeout_s, self._kill_on_timeout, (cid, timed_out))
            killer.daemon = True
            killer.start()
            if self.spool is not None:
                # Off the program's path: the deadline holds even if this process stops.
                deadline = threading.Thread(target=self._leave_deadline, args=(cid, spec), daemon=True)
                deadline.start()
            data = stdin_for(spec, payload, nonce)
            # Everything but the program's own stdin: once written, the program may have started.
            program_at = len(data) - (len(payload) - spec.files_bytes)
            on_program = functools.partial(self._program_started, spec.sandbox_id)
            writer = threading.Thread(target=send_input, args=(raw, data, program_at, on_program), daemon=True)
            writer.start()
            try:
                demux(raw, capture)
            except TimeoutError:
                timed_out.set()
                self._kill(cid)
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

    def _stopped_from_outside(self, cid: str, since: float) -> str:
        """Why the engine (shutting down, say) or an operator signalled the container; "" when nobody did.

        The dispatcher itself only ever sends SIGKILL (timeout, cancel, stop), and
        a program that kills itself leaves no ``kill`` event: a signalled exit with
        a ``kill``/``stop`` event of another signal is the platform's doing, never a result.
        """
        try:
            events = self.api.events(
                since=since - 1,
                until=time.time(),
                filters={"container": cid, "event": ["kill", "stop"]},
                decode=True,
            )
            with self._lock:
                ours = cid in self._ours or any(name in self._ours for name in self._names_of(cid))
            for event in events:
                signal_ = (event.get("Actor") or {}).get("Attributes", {}).get("signal", "")
                if not ours:
                    return f"{event.get('Action')} signal {signal_ or '?'}"
        except Exception as e:  # noqa: BLE001 - an engine that cannot say is an engine in trouble
            return f"the engine could not be asked: {type(e).__name__}"
        return ""

    def _program_started(self, sandbox_id: str) -> None:
        """All the prologue needs is written: the program may run from now on (one log line a run)."""
        if self.spool is not None:
            watchdog.mark_started(self.spool, sandbox_id)
        log(logger, "sandbox.started", sandbox_id=sandbox_id, server=self.server)

    def _leave_deadline(self, cid: str, spec: RunSpec) -> None:
        assert self.spool is not None
        pid = 0
        try:
            pid = int(self.api.inspect_container(cid)["State"].get("Pid") or 0)
        except Exception:  # noqa: BLE001 - without a pid the watchdog kills through the engine
            pid = 0
        if pid and not Path(f"/proc/{pid}").exists():
            pid = 0  # a remote engine's pid means nothing on this host
        watchdog.write(self.spool, cid, spec.sandbox_id, spec.timeout_s, pid, token=spec.token)

    def _names_of(self, cid: str) -> list[str]:
        try:
            return [str(self.api.inspect_container(cid)["Name"]).lstrip("/")]
        except Exception:  # noqa: BLE001 - gone already: its id is all there is
            return []

    def _kill_on_timeout(self, cid: str, flag: threading.Event) -> None:
        flag.set()
        self._kill(cid)

    def kill(self, sandbox_id: str) -> None:
        self._kill(run_name(sandbox_id))

    def _kill(self, container: str) -> None:
        with self._lock:
            self._ours.add(container)  # a kill of ours (timeout, cancel, fence): never "from outside"
        try:
            self.api.kill(container)
        except (NotFound, APIError):
            pass  # already gone or already stopped

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
        found = [Leftover(str(c["Id"]), sandbox_of(c), c.get("State") == "running", _exit_code(c)) for c in listed]
        return [c for c in found if c.sandbox_id or c.container_id not in live]
