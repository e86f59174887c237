"""One sandbox: claim -> run -> record, then its message settled.

The claim is a conditional write (``queued`` on this server -> ``running``)
that returns the run's token; the token stays in the ``Job``, and the result,
a give-back or a failure are written only while the row still holds it
(``lifecycle.running_as``), so a cancelled or handed-over run can never write
over its successor.  The container is removed only after the result is
written: removing it is not on the path to the client seeing it.

The output never passes through memory whole: the engine writes it into the
run's spool folder as it comes, and ``result.attributes`` uploads from there each stream
the row's 64 KiB of text does not hold exactly (see ``chalicelib.output``).
A transient DynamoDB or S3 failure is retried in place (see ``retry``); a
failure of the run is classified and settled (see ``outcome``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pynamodb.exceptions import DoesNotExist, PynamoDBException
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from chalicelib import aws, lifecycle
from chalicelib.errors import Unavailable
from chalicelib.logs import log, log_exception
from chalicelib.models import App, DockerServer, Sandbox
from chalicelib.settings import Settings
from dispatcher import watchdog
from dispatcher.engine import Engine, NotStarted, PlatformError, RunResult, RunSpec
from dispatcher.inbox import Inbox
from dispatcher.live import Live, forget
from dispatcher.metrics import Metrics, outcome_of
from dispatcher.outcome import Abort, EngineStopped, Failure, Settled, classify, settle
from dispatcher.parts import Sender
from dispatcher.result import attributes, sizes
from dispatcher.retry import Retry, transient
from dispatcher.settings import DispatcherSettings
from dispatcher.spool import Spool
from dispatcher.state import Flags, Job

logger = logging.getLogger("opendevelop.dispatcher")

ORPHANED = "the dispatcher lost track of the sandbox while it ran"


@dataclass(frozen=True)
class Claim:
    sandbox: Sandbox
    token: str  # the run's fence
    orphan: bool = False  # running here, but no slot of this dispatcher holds it (a failed settle left it)


def spec_of(sandbox: Sandbox) -> RunSpec:
    """The run a stored row asks for; a row that does not make one is final (``PlatformError``)."""
    limits = sandbox.limits or {}
    try:
        return RunSpec(
            sandbox_id=sandbox.sandbox_id,
            docker_image=sandbox.docker_image,
            cmd=[str(line) for line in sandbox.cmd],
            timeout_s=float(limits.get("timeout", 10)),
            memory_mb=int(limits.get("memory_mb", 256)),
            cpus=float(limits.get("cpus", 1)),
            pids=int(limits.get("pids", 128)),
            disk_mb=int(limits.get("disk_mb", 64)),
            output_bytes=int(limits.get("output_kb", 64)) * 1024,
            artifacts_bytes=int(limits.get("artifacts_kb", 1024)) * 1024,
            files_bytes=int(sandbox.files_bytes or 0),
            env=dict(sandbox.env or {}),
            network=bool(sandbox.network),
            token=str(sandbox.token or ""),
        )
    except (TypeError, ValueError, AttributeError) as e:
        raise PlatformError(f"the sandbox's stored request is malformed: {e}", transient=False) from e


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        config: DispatcherSettings,
        server: str,
        holder: str,
        engine: Engine,
        inbox: Inbox,
        flags: Flags,
        retry: Retry,
        spool: Spool,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.spool = spool
        self.settings = settings
        self.config = config
        self.server = server
        self.holder = holder
        self.engine = engine
        self.inbox = inbox
        self.flags = flags
        self.retry = retry
        self.runs = 0

    def handle(self, job: Job, receives: int) -> None:
        """The job from its claim until its message is deleted or left to come back."""
        if self.flags.fenced.is_set():
            self.inbox.retry_soon(job, 0)  # the lease is lost: claim nothing until a heartbeat gets through
            return
        try:
            claim = self.retry("claiming", lambda: self.claim(job.sandbox_id), sandbox_id=job.sandbox_id)
        except Exception as e:  # noqa: BLE001 - the row cannot be read or written: the message comes back later
            log(
                logger,
                "sandbox.claim_failed",
                logging.ERROR,
                sandbox_id=job.sandbox_id,
                server=self.server,
                receives=receives,
                error=f"{type(e).__name__}: {e}"[:500],
            )
            if transient(e):
                # An outage, not the sandbox's fault: a fresh message (receive count 0) after a backoff,
                # so an outage of any length never adds up to a dead letter.
                self.inbox.fresh_wakeup(job, delay_s=self.inbox.backoff_s(receives))
            else:
                self.inbox.retry_soon(job, receives)  # a row this code cannot read: on to the dead letters
            return
        if claim is None:
            self.inbox.delete(job.receipt)
            return
        if claim.orphan:
            self._settle_orphan(claim.sandbox, job)
            return
        job.token = claim.token
        self.metrics.claimed(claim.sandbox.created_at)
        try:
            self.run(claim.sandbox, job)
        except Exception as e:  # noqa: BLE001 - every failure is classified and settled
            self._failed(claim.sandbox, job, e, receives)
            return
        self.inbox.delete(job.receipt)

    def claim(self, sandbox_id: str) -> Claim | None:
        """queued -> running on this server, or an orphan to settle; None when there is nothing to do.

        The row is read before it is written: a row this dispatcher cannot read (a
        newer or broken writer made it) must fail every delivery untouched, so it
        ends in the dead-letter queue rather than ``running`` here."""
        try:
            sandbox = Sandbox.get(sandbox_id, consistent_read=True)
        except DoesNotExist:
            log(logger, "sandbox.missing", logging.WARNING, sandbox_id=sandbox_id, server=self.server)
            return None
        if sandbox.status == "running" and sandbox.server == self.server:
            return Claim(sandbox, sandbox.token or "", orphan=True)  # the caller made sure no slot holds it
        if sandbox.status == "queued" and sandbox.server == self.server and sandbox.network and sandbox.attempts:
            # Started once already (and given back): its effects may have happened, so it is not run again.
            reason = "interrupted after it started; a sandbox with network access is never run twice"
            if lifecycle.fail(sandbox_id, lifecycle.queued_on(self.server), reason):
                log(logger, "sandbox.error", logging.WARNING, sandbox_id=sandbox_id, reason=reason)
            return None
        if sandbox.status != "queued" or sandbox.server != self.server:
            log(
                logger,
                "sandbox.duplicate_message",
                sandbox_id=sandbox_id,
                status=sandbox.status,
                server=self.server,
                owner=sandbox.server,
            )
            return None
        if sandbox.network:
            refusal = self.network_refusal(sandbox)
            if refusal:
                if lifecycle.fail(sandbox_id, lifecycle.queued_on(self.server), refusal):
                    log(logger, "sandbox.error", logging.WARNING, sandbox_id=sandbox_id, reason=refusal)
                return None
        # Conditional on this server: a sandbox the reconciler moved to another server is that one's now.
        token = lifecycle.claim(sandbox, self.server, self.holder)
        if token is None:
            return None
        log(
            logger,
            "sandbox.claimed",
            sandbox_id=sandbox_id,
            server=self.server,
            app_id=sandbox.app_id,
            attempt=int(sandbox.attempts),
        )
        return Claim(sandbox, token)

    def network_refusal(self, sandbox: Sandbox) -> str:
        """Why a sandbox with network may not run here now ("" when it may).

        Checked at create, and again here, read afresh: an operator may have
        taken network away from this server or from the app since (the
        sandbox then ends ``error`` saying so, rather than run with it).
        """
        try:
            server = DockerServer.get(self.server, consistent_read=True, attributes_to_get=["name", "network"])
        except DoesNotExist:
            return f"network access refused: server {self.server!r} is no longer registered"
        if not server.network:
            return f"network access refused: server {self.server!r} no longer allows network access"
        try:
            app = App.get(sandbox.app_id, consistent_read=True, attributes_to_get=["app_id", "network"])
        except DoesNotExist:
            return "network access refused: the sandbox's app no longer exists"
        if not app.network:
            return f"network access refused: app {sandbox.app_id!r} may no longer give its sandboxes network access"
        return ""

    def run(self, sandbox: Sandbox, job: Job) -> None:
        """Run the claimed sandbox and record its result; raises what the run failed with."""
        spec = spec_of(sandbox)
        payload = self._payload(sandbox)
        if self.flags.cold.is_set():
            raise Abort("the dispatcher was stopped before the sandbox started", started=False)
        if self.flags.fenced.is_set() or job.aborted:
            raise Abort(job.aborted or "the lease was lost before the sandbox started", started=False)
        folder = self.spool.start(sandbox.sandbox_id, job.token)
        live = Live(self.settings, sandbox.sandbox_id, folder)
        live.start()
        sender = Sender(self.settings, sandbox.sandbox_id, job.token, folder)
        sender.start()

        def gate() -> str:  # read just before the program starts
            reason = self._gate(sandbox.sandbox_id, job)
            live.begin()
            return reason

        try:
            result = self.engine.run(replace(spec, output_dir=folder, gate=gate), payload)
        except BaseException as e:
            live.stop()
            sender.stop()
            sender.abandon()
            self.spool.discard(sandbox.sandbox_id, job.token)
            if live.chunks:  # a failed try's output: a re-run starts afresh
                forget(self.settings, sandbox.sandbox_id, live.written(tried_before=(sandbox.attempts or 0) > 1))
            if isinstance(e, NotStarted):
                if job.cancelled:
                    log(logger, "sandbox.cancelled_before_start", sandbox_id=sandbox.sandbox_id, server=self.server)
                    return  # the row says cancelled; nothing of the program ran
                raise Abort(job.aborted or str(e), started=False) from e
            raise
        live.stop()
        sender.stop()  # before the spool folder is renamed: a part being sent is read from it
        try:
            if job.aborted and result.return_code in (137, 143) and not result.timed_out and not result.oom_killed:
                # Killed by the fence (or a stop) mid-run: not a result.  A run that ended on its own,
                # or at its time limit, before the kill is a whole result, recorded like any other
                # (conditional on its token: refused if its run was handed over meanwhile).
                raise Abort(job.aborted)
            if job.cancelled:
                self.metrics.ended("cancelled", result.duration_s)
                log(logger, "sandbox.cancel_killed", sandbox_id=sandbox.sandbox_id, server=self.server)
                return  # the row already says cancelled; the write below would be refused anyway
            if result.stopped_by:
                if self.engine.healthy():
                    # The engine answers: an operator (or another program) stopped it. That is final.
                    raise PlatformError(f"stopped outside the platform ({result.stopped_by})", transient=False)
                raise EngineStopped(f"the container was stopped by its engine ({result.stopped_by})")
            # Finished: the result is kept on this host before anything else, and never thrown away
            # for a re-run; it is recorded however long AWS takes to answer.
            self.spool.keep(sandbox.sandbox_id, job.token, result)
            self.record(sandbox, job.token, result, forever=True, sent=sender)
            self.spool.drop(sandbox.sandbox_id, job.token)
            if live.chunks:  # the recorded output replaces them
                forget(self.settings, sandbox.sandbox_id, live.written(tried_before=(sandbox.attempts or 0) > 1))
        finally:
            sender.abandon()  # what a recorded run did not need, or an unrecorded run's parts
            self.spool.discard(sandbox.sandbox_id, job.token)  # an unrecorded run's partial output, if any
            if result.container_id:
                self.engine.release(result.container_id)
            watchdog.forget_started(self.spool.root, sandbox.sandbox_id)

    def _gate(self, sandbox_id: str, job: Job) -> str:
        """Just before the program starts: "" when the row still holds this run, else why not.

        A cancel answered between the claim and here is seen here, so the
        program never starts; one answered later finds a started container,
        which the watch loop kills within ``watch_s``.  When the row cannot be
        read, the run starts: the watch loop and the fence still hold it.
        """
        if job.cancelled or job.aborted:
            return job.aborted or "cancelled"
        if self.flags.fenced.is_set():
            return "the lease was lost before the sandbox started"
        try:
            row = Sandbox.get(sandbox_id, consistent_read=True, attributes_to_get=["sandbox_id", "status", "token"])
        except DoesNotExist:
            job.aborted = "the sandbox's row is gone"
            return job.aborted
        except Exception as e:  # noqa: BLE001 - see above
            log(logger, "gate.unread", logging.WARNING, sandbox_id=sandbox_id, error=str(e)[:300])
            return ""
        if row.status == "running" and row.token == job.token:
            return ""
        if row.status == "cancelled":
            job.cancelled = True
            return "cancelled before its program started"
        job.aborted = "the run was handed over before its program started"
        return job.aborted

    def _payload(self, sandbox: Sandbox) -> bytes:
        """The tar (+ stdin) the API stored: in the row when small, in S3 when not."""
        if not sandbox.files_key:
            return bytes(sandbox.files_inline or b"")
        key = sandbox.files_key
        try:
            return self.retry(
                "reading files", lambda: aws.get_object(self.settings, key), sandbox_id=sandbox.sandbox_id
            )
        except Unavailable as e:
            missing = e.__cause__ is not None and aws.is_missing(e.__cause__)
            raise PlatformError(f"reading the sandbox's files: {e}", transient=not missing) from e

    def record(
        self, sandbox: Sandbox, token: str, result: RunResult, forever: bool = False, sent: Sender | None = None
    ) -> bool:
        """running (this run) -> terminated with the result; False when the run was settled elsewhere.

        ``forever``: the result is spooled, so a transient failure (S3 or DynamoDB) is retried until
        it goes through or the dispatcher stops (the next one records it from the spool).  ``sent``:
        the parts of the output sent while the program ran (``parts``), which its uploads go on from.
        """
        sandbox_id = sandbox.sandbox_id
        if result.output_dir is None:
            self.spool.keep(sandbox_id, token, result)  # an engine that kept the output in memory
        while True:
            try:
                actions = self._result(sandbox_id, token, result, sent)
                # The result is real: keep trying to write it through a DynamoDB outage.
                won = self.retry(
                    "recording the result",
                    lambda actions=actions: lifecycle.record(sandbox_id, token, actions),  # type: ignore[misc]
                    sandbox_id=sandbox_id,
                )
                break
            except (PynamoDBException, PlatformError, Unavailable) as e:
                if not forever or not transient(e) or self.flags.cold.is_set():
                    raise PlatformError(f"recording the result: {e}") from e
                log(logger, "record.waiting", logging.WARNING, sandbox_id=sandbox_id, error=str(e)[:300])
                self.flags.cold.wait(self.inbox.backoff_s(3))
        if not won:
            # Cancelled, or settled by the reconciler while we could not heartbeat.
            log(logger, "sandbox.settled_elsewhere", logging.WARNING, sandbox_id=sandbox.sandbox_id)
            return False
        self.runs += 1
        self.metrics.ended(outcome_of(result), result.duration_s)
        log(
            logger,
            "sandbox.terminated",
            sandbox_id=sandbox.sandbox_id,
            server=self.server,
            app_id=sandbox.app_id,
            return_code=result.return_code,
            timed_out=result.timed_out,
            oom_killed=result.oom_killed,
            **sizes(result),
            duration_ms=int(result.duration_s * 1000),
        )
        return True

    def _result(self, sandbox_id: str, token: str, result: RunResult, sent: Sender | None = None) -> list[Action]:
        """The row's result attributes; what the row does not hold is uploaded first (see ``result``)."""
        return attributes(sandbox_id, token, result, functools.partial(self._upload, sandbox_id, sent))

    def _upload(self, sandbox_id: str, sent: Sender | None, key: str, path: Path) -> None:
        begun = sent.for_key(key) if sent else None
        try:
            self.retry("storing output", lambda: aws.put_file(self.settings, key, path, begun), sandbox_id=sandbox_id)
        except Unavailable as e:
            raise PlatformError(f"storing the output: {e}") from e  # transient: retried by ``record``

    # After a failure

    def _failed(self, sandbox: Sandbox, job: Job, e: Exception, receives: int) -> None:
        failure = classify(e, self.engine.healthy, network=bool(sandbox.network))
        if not failure.expected:
            log_exception(logger, "dispatcher.unexpected_error", e, sandbox_id=sandbox.sandbox_id, server=self.server)
        if failure.engine or failure.broken:
            self.metrics.engine_errors.inc()
        if failure.engine:
            self.flags.engine_up.clear()  # take no work until the engine answers
        if failure.broken:
            self.flags.broken = failure.reason  # reported by the heartbeat: new work goes elsewhere
            log(logger, "engine.broken", logging.ERROR, server=self.server, reason=failure.reason[:300])
        settled = self._settle(sandbox, lifecycle.running_as(job.token), failure)
        if settled is Settled.ERROR:
            self.metrics.ended("error")
        elif settled is Settled.QUEUED:
            self.metrics.ended("given_back")
        if settled in (Settled.ERROR, Settled.GONE):
            self.inbox.delete(job.receipt)
        elif settled is Settled.QUEUED and failure.counted:
            self.inbox.retry_soon(job, int(sandbox.attempts or 0))  # it shows again after a backoff
        elif settled is Settled.QUEUED:
            # Not the sandbox's fault: a fresh wake-up, so these receives never add up to a dead letter.
            self.inbox.fresh_wakeup(job, delay_s=0 if self.flags.engine_up.is_set() else 1)
        else:
            self.inbox.retry_soon(job, receives)  # the row could not be written: recovery settles it later

    def _settle_orphan(self, sandbox: Sandbox, job: Job) -> None:
        # The row as just read (consistently): by its token, or by its server when it predates tokens.
        settled = self._settle(sandbox, lifecycle.leaving_run(sandbox), Failure(ORPHANED))
        if settled is Settled.QUEUED:
            self.inbox.retry_soon(job, 0)  # the same message wakes it again
        elif settled in (Settled.ERROR, Settled.GONE):
            self.inbox.delete(job.receipt)

    def _settle(self, sandbox: Sandbox, leaving: Condition, failure: Failure) -> Settled:
        return settle(sandbox, leaving, failure, self.config.max_attempts, self.retry, self.server)
