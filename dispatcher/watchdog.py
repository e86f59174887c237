"""Deadlines that hold without the dispatcher: ``python -m dispatcher.watchdog --spool DIR --docker-url URL``.

The dispatcher kills a container at its timeout itself, but a dispatcher can
be stopped (SIGSTOP), dead, or stuck on an AWS outage.  So every run also
leaves a *deadline file* on the host, ``<spool>/deadlines/<container id>``,
and this small process -- one per spool folder, started by the dispatcher and
outliving it -- kills any container whose deadline has passed.  It needs
neither AWS nor the dispatcher.

Time is the host kernel's: a deadline is the file's modification time (set by
the kernel when the dispatcher writes it, whatever clock the dispatcher
believes in) plus the seconds written in it, and it is compared with this
process's own clock.  A killed (or vanished) container's file is removed.
When the engine itself does not answer (a stalled ``dockerd``), a local
container is killed through its init process's host pid, which the file also
carries: killing a pid namespace's init ends every process in it.

One watchdog runs per spool folder (it holds ``watchdog.lock``); it leaves by
itself once no deadline is pending and no dispatcher has touched
``dispatcher.alive`` for ``IDLE_EXIT_S``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chalicelib.logs import log

logger = logging.getLogger("opendevelop.watchdog")

GRACE_S = 1.5  # after the dispatcher's own kill would have come
TICK_S = 0.5
IDLE_EXIT_S = 60.0
LOCK = "watchdog.lock"
ALIVE = "dispatcher.alive"


@dataclass(frozen=True)
class Deadline:
    container_id: str
    sandbox_id: str
    due: float  # host clock (time.time())
    pid: int  # the container's init process on the host, 0 when unknown (a remote engine)
    pid_start: str  # its start time in /proc, so a reused pid is never killed
    token: str = ""  # the run's fence: a deadline kill is recorded as the run's result with it


def write(spool: Path, container_id: str, sandbox_id: str, seconds: float, pid: int = 0, token: str = "") -> Path:
    """Leave the deadline of a run that starts now: ``seconds`` (its timeout) plus the grace."""
    folder = spool / "deadlines"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / container_id
    body = {
        "sandbox_id": sandbox_id,
        "seconds": seconds + GRACE_S,
        "pid": pid,
        "pid_start": _start_of(pid),
        "token": token,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)  # the rename keeps the mtime the kernel gave the write, on the kernel's clock
    return path


def clear(spool: Path, container_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (spool / "deadlines" / container_id).unlink()


def pending(spool: Path) -> Iterator[Deadline]:
    folder = spool / "deadlines"
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.suffix == ".tmp":
            continue
        try:
            body = json.loads(path.read_text())
            due = path.stat().st_mtime + float(body["seconds"])
            yield Deadline(
                path.name,
                str(body.get("sandbox_id", "")),
                due,
                int(body.get("pid", 0)),
                body.get("pid_start", ""),
                str(body.get("token", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or removed meanwhile: seen on the next tick


def mark_started(spool: Path, sandbox_id: str) -> None:
    """The program of ``sandbox_id`` may have started (all its prologue needs was written): after a
    crash, recovery must then not take its container's exit for a start that never happened."""
    folder = spool / "started"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / sandbox_id).touch()


def started(spool: Path, sandbox_id: str) -> bool:
    return (spool / "started" / sandbox_id).exists()


def forget_started(spool: Path, sandbox_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (spool / "started" / sandbox_id).unlink()


def touch_alive(spool: Path) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    (spool / ALIVE).touch()


def _start_of(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); empty when there is no such process."""
    if pid <= 0:
        return ""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _lock(spool: Path, name_holder: bool = True) -> IO[str] | None:
    """Hold the spool's watchdog lock (naming this process in it); None when another watchdog holds it."""
    spool.mkdir(parents=True, exist_ok=True)
    handle = open(spool / LOCK, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    if name_holder:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    return handle


def running(spool: Path) -> bool:
    """Whether a watchdog holds this spool's lock now."""
    handle = _lock(spool, name_holder=False)
    if handle is None:
        return True
    handle.close()  # closing releases the lock
    return False


def ensure(spool: Path, docker_url: str) -> None:
    """Start a watchdog for ``spool`` unless one runs; it outlives the caller (its own session)."""
    if running(spool):
        return
    subprocess.Popen(
        [sys.executable, "-m", "dispatcher.watchdog", "--spool", str(spool), "--docker-url", docker_url],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the dispatcher's group does not reach it
        cwd=str(Path(__file__).resolve().parent.parent),
    )


def keep_running(spool: Path, docker_url: str, every_s: float) -> threading.Thread:
    """While this dispatcher lives: say so (``dispatcher.alive``) and start a watchdog whenever none runs."""

    def loop() -> None:
        while True:
            try:
                touch_alive(spool)
                ensure(spool, docker_url)
            except OSError as e:
                log(logger, "watchdog.start_failed", logging.ERROR, spool=str(spool), error=str(e)[:200])
            time.sleep(every_s)

    thread = threading.Thread(target=loop, name="watchdog-keeper", daemon=True)
    thread.start()
    return thread


class Watchdog:
    def __init__(
        self,
        spool: Path,
        kill: Callable[[str], bool],
        now: Callable[[], float] = time.time,
        record: Callable[[Deadline], None] | None = None,
    ) -> None:
        """``kill(container_id)`` kills through the engine and answers whether the container is gone or stopped;
        ``record(deadline)`` writes the run's time-limit result (raises while AWS does not answer)."""
        self.spool = spool
        self.kill = kill
        self.now = now
        self.record = record
        self.unrecorded: list[Deadline] = []  # killed at their deadline, result not written yet

    def tick(self) -> list[str]:
        """Kill what is past its deadline, and record its time-limit result; return the sandbox ids killed."""
        self._record_pending()
        killed = []
        for deadline in pending(self.spool):
            if self.now() < deadline.due:
                continue
            stopped = False
            if deadline.pid and deadline.pid_start and _start_of(deadline.pid) == deadline.pid_start:
                # A local container: its init's host pid works even when the engine is stalled.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(deadline.pid, signal.SIGKILL)
                stopped = True
            else:
                try:
                    stopped = self.kill(deadline.container_id)
                except Exception as e:  # noqa: BLE001 - tried again on the next tick
                    log(
                        logger,
                        "watchdog.kill_failed",
                        logging.WARNING,
                        container=deadline.container_id,
                        error=str(e)[:200],
                    )
            if stopped:
                clear(self.spool, deadline.container_id)
                killed.append(deadline.sandbox_id)
                if self.record is not None and deadline.token:
                    self.unrecorded.append(deadline)
                log(
                    logger,
                    "watchdog.killed",
                    logging.WARNING,
                    sandbox_id=deadline.sandbox_id,
                    late_s=round(self.now() - deadline.due, 2),
                )
        return killed

    def _record_pending(self) -> None:
        """The dispatcher did not end these runs (stopped, dead, cut off): their result is the time limit's,
        written here (conditional on the run's token) so nobody runs them again after they ended."""
        assert self.record is not None or not self.unrecorded
        for deadline in list(self.unrecorded):
            try:
                self.record(deadline)  # type: ignore[misc]
            except Exception as e:  # noqa: BLE001 - AWS does not answer: tried again on the next tick
                log(
                    logger,
                    "watchdog.record_failed",
                    logging.WARNING,
                    sandbox_id=deadline.sandbox_id,
                    error=str(e)[:200],
                )
                continue
            self.unrecorded.remove(deadline)

    def idle(self) -> bool:
        if self.unrecorded or any(True for _ in pending(self.spool)):
            return False
        try:
            return self.now() - (self.spool / ALIVE).stat().st_mtime > IDLE_EXIT_S
        except FileNotFoundError:
            return True


def docker_killer(docker_url: str) -> Callable[[str], bool]:
    from docker.errors import APIError, NotFound

    from dispatcher import docker_ssh

    client = docker_ssh.docker_api(docker_url, timeout=3)

    def kill(container_id: str) -> bool:
        try:
            client.kill(container_id)
        except NotFound:
            return True
        except APIError as e:
            if e.status_code != 409:  # 409: not running, which is what we want
                raise
        return True

    return kill


def _recorder(spool: Path) -> Callable[[Deadline], None] | None:
    """Writes a deadline kill as the run's result, with this process's AWS settings (the dispatcher's
    environment); None when there are none: the kill alone still holds the deadline."""
    from chalicelib import lifecycle, models, output
    from chalicelib.models import Sandbox
    from chalicelib.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(require_hmac_key=False)
    except SettingsError:
        return None
    models.configure(settings)

    def record(deadline: Deadline) -> None:
        result = [
            Sandbox.return_code.set(137),
            Sandbox.timed_out.set(True),
            Sandbox.oom_killed.set(False),
            Sandbox.files_inline.remove(),
        ]
        # What the dispatcher had read of its output before it stopped (its spool), as inline text.
        part = spool / "results" / f".{deadline.sandbox_id}.{deadline.token}.part"
        cut = False
        for stream in output.STREAMS:
            try:
                with open(part / stream, "rb") as f:
                    head = f.read(output.PREVIEW_BYTES + 1)
            except OSError:
                head = b""
            text, whole = output.preview(head[: output.PREVIEW_BYTES])
            cut = cut or len(head) > output.PREVIEW_BYTES or not whole
            attribute = getattr(Sandbox, stream)
            result.append(attribute.set(text) if text else attribute.remove())
        result.append(Sandbox.inline_truncated.set(cut))
        won = lifecycle.record(deadline.sandbox_id, deadline.token, result)
        log(logger, "watchdog.recorded" if won else "watchdog.settled_elsewhere", sandbox_id=deadline.sandbox_id)

    return record


def main(argv: list[str] | None = None) -> int:
    from chalicelib import logs

    parser = argparse.ArgumentParser(prog="python -m dispatcher.watchdog", description=__doc__.splitlines()[0])
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--docker-url", required=True)
    args = parser.parse_args(argv)
    logs.setup()
    handle = _lock(args.spool)
    if handle is None:
        return 0  # another watchdog serves this spool
    watchdog = Watchdog(args.spool, docker_killer(args.docker_url), record=_recorder(args.spool))
    log(logger, "watchdog.ready", spool=str(args.spool))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while not watchdog.idle():
        watchdog.tick()
        time.sleep(TICK_S)
    log(logger, "watchdog.idle_exit", spool=str(args.spool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
