"""Start-up recovery: settle what a dead dispatcher of this server left, never re-running a finished program.

In order:

1. Results kept in the spool (``dispatcher.spool``): the program finished, and
   its dispatcher stopped before the record was written.  Recorded now, with
   the token of the run that produced them (refused, and dropped, when the run
   was handed over meanwhile).
2. Containers of this server the engine still has.  One still running is
   killed and removed first, so its run is known to be over; then its sandbox
   is given back to run again.  One that exited with 137/143 was stopped (an
   engine restart, a kill): given back likewise.  One that exited by itself
   finished, but its output is gone (the log driver is ``none``) and it was not
   kept: it ends ``error`` saying so, and is never run again.
3. Rows still ``running`` here by an earlier instance, with no container
   left: their run is over, so they are given back.

A sandbox with network access is never given back once it may have started;
it ends ``error``.  Each row is settled by the run it was read in
(``lifecycle.leaving_run``, on a fresh consistent read), so a run another
dispatcher has claimed since is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pynamodb.exceptions import DoesNotExist

from chalicelib import lifecycle
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox
from dispatcher import watchdog
from dispatcher.engine import Engine, Leftover, RunResult
from dispatcher.inbox import Inbox
from dispatcher.outcome import NETWORK_ONCE, Failure, Settled, settle
from dispatcher.retry import Retry
from dispatcher.settings import DispatcherSettings
from dispatcher.spool import Spool

logger = logging.getLogger("opendevelop.dispatcher")

REASON = "the dispatcher stopped while the sandbox ran"
LOST = "the program finished, but its dispatcher stopped before keeping the result; it is not run again"
STOPPED = (137, 143)

Record = Callable[[Sandbox, str, RunResult], bool]


def recover(
    config: DispatcherSettings,
    server: DockerServer,
    engine: Engine,
    inbox: Inbox,
    retry: Retry,
    spool: Spool,
    record: Record,
    instance: str,
) -> None:
    recorded = _record_kept(spool, record)
    for container in engine.leftovers():
        engine.release(container.container_id)  # killed and removed: whatever it ran is over now
        if container.sandbox_id and container.sandbox_id not in recorded:
            started = watchdog.started(spool.root, container.sandbox_id)
            _settle(container.sandbox_id, _failure(container, started), config, server, inbox, retry)
    try:
        running = Sandbox.by_status.query("running", filter_condition=Sandbox.server == server.name)
        orphans = [s.sandbox_id for s in running if s.holder != instance]
    except Exception as e:  # noqa: BLE001 - the reconciler settles them when we cannot
        log(logger, "recover.query_failed", logging.WARNING, server=server.name, error=str(e))
        orphans = []
    for sandbox_id in orphans:
        if sandbox_id not in recorded:
            _settle(sandbox_id, Failure(REASON), config, server, inbox, retry)
    for marker in (spool.root / "started").glob("*"):
        marker.unlink(missing_ok=True)  # every run of this server is settled now


def _record_kept(spool: Spool, record: Record) -> set[str]:
    spool.clean()
    done = set()
    for kept in spool.kept():
        try:
            record(Sandbox(kept.sandbox_id), kept.token, kept.result)
        except Exception as e:  # noqa: BLE001 - kept for the next start; the row stays running meanwhile
            log(logger, "recover.record_failed", logging.WARNING, sandbox_id=kept.sandbox_id, error=str(e)[:300])
            continue
        spool.drop(kept.sandbox_id, kept.token)
        done.add(kept.sandbox_id)
        log(logger, "recover.recorded", sandbox_id=kept.sandbox_id)
    return done


def _failure(container: Leftover, started: bool) -> Failure:
    """Still running (killed just now), stopped by a signal, or never given all its input: its
    program did not finish, so it may run again.  Exited by itself once started: it finished."""
    if container.running or container.exit_code is None or container.exit_code in STOPPED or not started:
        return Failure(REASON)
    return Failure(LOST, final=True)


def _settle(
    sandbox_id: str, failure: Failure, config: DispatcherSettings, server: DockerServer, inbox: Inbox, retry: Retry
) -> None:
    try:
        sandbox = Sandbox.get(sandbox_id, consistent_read=True)
    except DoesNotExist:
        return
    except Exception as e:  # noqa: BLE001 - the reconciler settles it when we cannot
        log(logger, "recover.failed", logging.WARNING, sandbox_id=sandbox_id, error=str(e)[:300])
        return
    if sandbox.status != "running" or sandbox.server != server.name:
        return
    if sandbox.network and not failure.final:
        failure = Failure(f"{NETWORK_ONCE} ({failure.reason})", final=True)
    leaving = lifecycle.leaving_run(sandbox)
    if settle(sandbox, leaving, failure, config.max_attempts, retry, server.name) is not Settled.QUEUED:
        return
    try:
        # A dead dispatcher's last long poll may still be open and would swallow the message: it
        # shows once that poll has surely ended.
        inbox.wake(sandbox_id, delay_s=config.poll_wait_s + 1)
    except Unavailable:
        pass  # the original message comes back after its visibility timeout, or the reconciler re-sends
    log(logger, "recover.requeued", sandbox_id=sandbox_id, server=server.name)
