"""The queue loop: receive, claim, run, record, delete.

The DynamoDB row is the truth and the SQS message only a wake-up call.  A
message is deleted only after the result is written; while its container runs
its visibility is extended, so no other dispatcher sees it.  Every state change
is a conditional write naming the state it leaves, so a duplicate or late
message can never run a sandbox twice or move it backwards.

How failures are met (nothing is dropped, nothing left ``running``):

* A transient DynamoDB or S3 failure (endpoint unreachable, throttling, 5xx) is
  retried in place with backoff for ``retry_budget_s``; the message stays
  hidden meanwhile.  Past the budget the message is let go and comes back.
* A message that cannot even be claimed (a row that does not parse, say) comes
  back after a backoff that doubles per receive; after ``aws.MAX_RECEIVES``
  receives SQS moves it to the dead-letter queue, where the reconciler marks
  its sandbox ``error``.
* A platform failure while a sandbox runs gives it back (``queued`` again, the
  message soon visible) until it has been tried ``max_attempts`` times, then
  marks it ``error`` with the reason.  A failure caused by the Docker engine
  being unreachable, a cold stop or a lost lease does not count as a try: the
  sandbox did nothing wrong.  While the engine is unreachable the dispatcher
  takes no work and lets its heartbeat go stale, so the API and the reconciler
  send work elsewhere.
* Lease: when the heartbeat cannot be written for most of the heartbeat TTL,
  the reconciler is about to hand this server's sandboxes to another one, so
  the dispatcher kills its containers first: a program never runs on two
  servers at once.
* A sandbox that a client cancels is checked for every ``watch_s`` and its
  container killed; the result write names ``running`` and so never
  overwrites ``cancelled``.
* A draining (or disabled) server's dispatcher finishes what it runs and takes
  nothing new; the reconciler moves what waits on its queue.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import requests
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError
from pynamodb.expressions.update import Action

from chalicelib import aws
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.settings import Settings
from dispatcher.runner import PlatformError, Runner, RunResult, RunSpec
from dispatcher.settings import DispatcherSettings

logger = logging.getLogger("opendevelop.dispatcher")

T = TypeVar("T")

# Output larger than this (stdout + stderr + logs, encoded) goes to S3 instead of the row,
# keeping rows far from DynamoDB's 400 KB item limit.
ROW_OUTPUT_BUDGET = 240 * 1024
MAX_BACKOFF_S = 30
RECEIVE_VISIBILITY_S = 20
# DynamoDB/SQS error codes that are worth retrying (everything else is the request's own fault).
RETRYABLE_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class Abort(Exception):
    """A run stopped for the platform's own reasons (cold stop, engine gone, lease lost): not the sandbox's try."""


@dataclass
class Job:
    """A sandbox in this dispatcher's hands, from before its claim until its message is settled."""

    sandbox_id: str
    message_id: str
    receipt: str
    cancelled: bool = False
    aborted: str = ""  # why the platform killed the container, when it did


def transient(e: BaseException) -> bool:
    """Whether retrying the same call may succeed: transport trouble, throttling, a 5xx."""
    if isinstance(e, Unavailable):
        cause = e.__cause__
        return cause is None or transient(cause)
    if isinstance(e, DoesNotExist):
        return False
    if isinstance(e, PynamoDBException):
        code = e.cause_response_code
        return code is None or code in RETRYABLE_CODES
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in RETRYABLE_CODES or status >= 500
    return isinstance(e, BotoCoreError | ConnectionError | TimeoutError)


class Dispatcher:
    def __init__(self, settings: Settings, config: DispatcherSettings, server: DockerServer, runner: Runner) -> None:
        self.settings = settings
        self.config = config
        self.server = server
        self.runner = runner
        self.slots = int(config.slots or server.slots or os.cpu_count() or 2)
        self.free = threading.Semaphore(self.slots)
        self.sqs = aws.sqs(settings)
        self.stopping = threading.Event()  # warm stop: take no new work
        self.done = threading.Event()  # every slot has finished: the last heartbeat may go
        self.cold = threading.Event()  # cold stop: kill what runs, hand it back
        self.engine_up = threading.Event()
        self.engine_up.set()
        self._lock = threading.Lock()
        self._beat_lock = threading.Lock()
        self.inflight: dict[str, Job] = {}
        self.runs = 0
        self.last_db_ok = time.monotonic()  # the last time the heartbeat reached DynamoDB
        # Past this without a heartbeat written, the reconciler may give our sandboxes to another server.
        ttl = settings.heartbeat_ttl_s
        self.lease_s = ttl - max(2 * config.heartbeat_s, ttl / 4)

    # Lifecycle

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.stopping.is_set():
                log(logger, "dispatcher.cold_stop", server=self.server.name, running=len(self.inflight))
                self.cold.set()
                # Docker calls do not belong in a signal handler: kill from a thread.
                threading.Thread(target=self._kill_all, args=("the dispatcher was stopped",), daemon=True).start()
            else:
                log(logger, "dispatcher.warm_stop", server=self.server.name, running=len(self.inflight))
                self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve(self) -> None:
        self.recover()
        if self.runner.pool is not None:
            self.runner.pool.start()
        for target, name in (
            (self._heartbeat_loop, "heartbeat"),
            (self._visibility_loop, "visibility"),
            (self._watch_loop, "watch"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()
        log(logger, "dispatcher.ready", server=self.server.name, slots=self.slots, queue=self.server.queue_url)
        with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="slot") as pool:
            while not self.stopping.is_set():
                if self.server.state != "active":
                    self.stopping.wait(1)  # draining or disabled: finish what runs, take nothing new
                    continue
                if not self.engine_up.is_set():
                    self._wait_for_engine()
                    continue
                taken = self._take_slots()
                if not taken:
                    continue
                try:
                    messages = self._receive(taken)
                except Unavailable as e:
                    log(logger, "queue.unavailable", logging.WARNING, server=self.server.name, error=str(e))
                    messages = []
                    self.stopping.wait(2)
                if messages and (self.stopping.is_set() or self.server.state != "active"):
                    # A stop or a drain came during the long poll: what it brought goes straight back.
                    self._hand_back_messages(messages)
                    messages = []
                for _ in range(taken - len(messages)):
                    self.free.release()
                for message in messages:
                    pool.submit(self._handle_in_slot, message)
        if self.runner.pool is not None:
            self.runner.pool.close()
        self.done.set()
        self._beat()
        log(logger, "dispatcher.stopped", server=self.server.name, runs=self.runs)

    def _take_slots(self) -> int:
        if not self.free.acquire(timeout=1):
            return 0
        taken = 1
        while taken < 10 and self.free.acquire(blocking=False):
            taken += 1
        return taken

    def _receive(self, count: int) -> list[dict[str, Any]]:
        with aws.translated("receiving from the queue"):
            response = self.sqs.receive_message(
                QueueUrl=self.server.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.config.poll_wait_s,
                # Short at first: a long poll still open for a dispatcher that was killed can take
                # a message nobody will handle; it shows again this soon.  A slot that takes the
                # message extends it at once.
                VisibilityTimeout=min(self.config.visibility_s, RECEIVE_VISIBILITY_S),
                AttributeNames=["ApproximateReceiveCount"],
            )
        return list(response.get("Messages", []))

    def _delete(self, receipt: str) -> None:
        try:
            self._retry(
                "deleting the message",
                lambda: self.sqs.delete_message(QueueUrl=self.server.queue_url, ReceiptHandle=receipt),
                budget_s=min(30, self.config.retry_budget_s),
            )
        except (BotoCoreError, ClientError) as e:
            # Harmless: the message comes back, finds the sandbox settled, and is dropped then.
            log(logger, "queue.delete_failed", logging.WARNING, server=self.server.name, error=str(e))

    def _set_visibility(self, receipt: str, seconds: int, event: str) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.server.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except (BotoCoreError, ClientError) as e:
            log(logger, event, logging.WARNING, server=self.server.name, error=str(e))

    def _retry(self, what: str, call: Callable[[], T], budget_s: float | None = None, sandbox_id: str = "") -> T:
        """``call()``, retried with jittered exponential backoff while it fails transiently and time remains."""
        budget = self.config.retry_budget_s if budget_s is None else budget_s
        if self.cold.is_set():
            budget = min(budget, 5)  # a cold stop is asked to end now
        deadline = time.monotonic() + budget
        delay = 0.2
        tries = 0
        while True:
            try:
                return call()
            except Exception as e:
                tries += 1
                if not transient(e) or time.monotonic() + delay > deadline:
                    raise
                log(
                    logger,
                    "retry",
                    logging.WARNING,
                    what=what,
                    sandbox_id=sandbox_id or None,
                    server=self.server.name,
                    tries=tries,
                    error=str(e)[:300],
                )
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    # One message

    def _handle_in_slot(self, message: dict[str, Any]) -> None:
        try:
            self.handle(message)
        except Exception:
            logger.exception("dispatcher.handle_failed")
        finally:
            self.free.release()

    def handle(self, message: dict[str, Any]) -> None:
        try:
            sandbox_id = str(json.loads(message["Body"])["sandbox_id"])
        except (ValueError, KeyError, TypeError):
            log(logger, "queue.bad_message", logging.WARNING, server=self.server.name)
            self._delete(message["ReceiptHandle"])
            return
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        with self._lock:
            held = self.inflight.get(sandbox_id)
            if held is None:
                job = self.inflight[sandbox_id] = Job(sandbox_id, message["MessageId"], message["ReceiptHandle"])
        # No extension here: the visibility loop extends every message in hand well within
        # RECEIVE_VISIBILITY_S of its receipt, off the path to the container starting.
        if held is not None:
            if held.message_id == message["MessageId"]:
                # Our own message came back (an extension was late): keep it, hidden again.
                held.receipt = message["ReceiptHandle"]
                self._set_visibility(held.receipt, self.config.visibility_s, "queue.extend_failed")
            else:
                log(logger, "sandbox.duplicate_message", sandbox_id=sandbox_id, status="in hand")
                self._delete(message["ReceiptHandle"])
            return
        try:
            self._handle_job(job, receives)
        finally:
            self._release(job)

    def _release(self, job: Job) -> None:
        """The job is no longer in hand.  Done before its message can show again (a fresh
        wake-up, a backoff of 0 s): otherwise the new delivery could find it still in hand
        and be taken for a duplicate."""
        with self._lock:
            if self.inflight.get(job.sandbox_id) is job:
                del self.inflight[job.sandbox_id]

    def _handle_job(self, job: Job, receives: int) -> None:
        try:
            sandbox, orphan = self._retry("claiming", lambda: self._claim(job.sandbox_id), sandbox_id=job.sandbox_id)
        except Exception as e:  # noqa: BLE001 - the row cannot be read or written: the message comes back later
            log(
                logger,
                "sandbox.claim_failed",
                logging.ERROR,
                sandbox_id=job.sandbox_id,
                server=self.server.name,
                receives=receives,
                error=f"{type(e).__name__}: {e}"[:500],
            )
            self._retry_soon(job, receives)
            return
        if sandbox is None:
            self._delete(job.receipt)
            return
        if orphan:  # ours and running, but no slot of this dispatcher holds it
            self._settle_orphan(sandbox, job, "the dispatcher lost track of the sandbox while it ran")
            return
        try:
            self._run_claimed(sandbox, job)
            self._delete(job.receipt)
        except Exception as e:
            engine = _engine_fault(e)
            if isinstance(e, Abort):
                count, final_hint, reason = False, False, str(e)
            elif isinstance(e, PlatformError):
                count, final_hint, reason = True, not e.transient, str(e)
            elif engine:
                count, final_hint, reason = True, False, f"{type(e).__name__}: {e}"
            else:
                logger.exception("dispatcher.unexpected_error")
                count, final_hint, reason = True, False, f"{type(e).__name__}: {e}"
            if count and (engine or not self._engine_answers()):
                # Not the sandbox's fault: take no work until the engine answers, and do not count the try.
                self.engine_up.clear()
                count, final_hint, reason = False, False, f"the Docker engine became unreachable: {reason}"
            settled = self._give_back_or_fail(sandbox, reason, transient=not final_hint, count=count)
            if settled == "error" or settled == "gone":
                self._delete(job.receipt)
            elif settled == "queued" and count:
                self._retry_soon(job, int(sandbox.attempts or 0))  # handed back: it shows again after a backoff
            elif settled == "queued":
                # Not the sandbox's fault: a fresh wake-up, so these receives never add up to a dead letter.
                self._fresh_wakeup(job, delay_s=0 if self.engine_up.is_set() else 1)
            else:
                self._retry_soon(job, receives)  # the row could not be written: recovery settles it later

    def _claim(self, sandbox_id: str) -> tuple[Sandbox | None, bool]:
        """queued -> running: ``(row, False)``; ``(row, True)`` for a row running here that no slot
        holds (a failed settle left it); ``(None, False)`` when there is nothing to do.

        The row is read before it is written: a row this dispatcher cannot read (a
        newer or broken writer made it) must fail every delivery untouched, so it
        ends in the dead-letter queue rather than ``running`` here."""
        try:
            sandbox = Sandbox.get(sandbox_id, consistent_read=True)
        except DoesNotExist:
            log(logger, "sandbox.missing", logging.WARNING, sandbox_id=sandbox_id, server=self.server.name)
            return None, False
        if sandbox.status == "running" and sandbox.server == self.server.name:
            return sandbox, True  # handle() made sure no slot of ours holds it
        if sandbox.status != "queued" or sandbox.server != self.server.name:
            log(
                logger,
                "sandbox.duplicate_message",
                sandbox_id=sandbox_id,
                status=sandbox.status,
                server=self.server.name,
                owner=sandbox.server,
            )
            return None, False
        try:
            # The server condition: a sandbox the reconciler moved to another server is that one's now.
            sandbox.update(
                actions=[
                    Sandbox.status.set("running"),
                    Sandbox.started_at.set(utcnow()),
                    Sandbox.attempts.add(1),
                ],
                condition=(Sandbox.status == "queued") & (Sandbox.server == self.server.name),
            )
        except UpdateError as e:
            if _conditional_failed(e):
                return None, False
            raise
        log(
            logger,
            "sandbox.claimed",
            sandbox_id=sandbox_id,
            server=self.server.name,
            app_id=sandbox.app_id,
            attempt=int(sandbox.attempts),
        )
        return sandbox, False

    def _spec(self, sandbox: Sandbox) -> RunSpec:
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
                files_bytes=int(sandbox.files_bytes or 0),
                env=dict(sandbox.env or {}),
                network=bool(sandbox.network),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise PlatformError(f"the sandbox's stored request is malformed: {e}", transient=False) from e

    def _run_claimed(self, sandbox: Sandbox, job: Job) -> None:
        spec = self._spec(sandbox)
        payload = bytes(sandbox.files_inline or b"")
        if sandbox.files_key:
            key = sandbox.files_key
            try:
                payload = self._retry(
                    "reading files", lambda: aws.get_object(self.settings, key), sandbox_id=job.sandbox_id
                )
            except Unavailable as e:
                missing = e.__cause__ is not None and aws.is_missing(e.__cause__)
                raise PlatformError(f"reading the sandbox's files: {e}", transient=not missing) from e
        if self.cold.is_set():
            raise Abort("the dispatcher was stopped before the sandbox started")
        started = time.time()
        # The container is removed after the result is written: removing it is not on the client's path.
        result = self.runner.run(spec, payload, remove=False)
        try:
            if job.aborted:
                raise Abort(job.aborted)
            if job.cancelled:
                log(logger, "sandbox.cancel_killed", sandbox_id=sandbox.sandbox_id, server=self.server.name)
                return  # the row already says cancelled; the write below would be refused anyway
            if result.return_code in (137, 143) and not result.timed_out and not result.oom_killed:
                stopper = self._stopped_from_outside(result.container_id, started)
                if stopper:
                    self.engine_up.clear()
                    raise Abort(f"the container was stopped from outside the dispatcher ({stopper})")
            self._record(sandbox, result)
        finally:
            if result.container_id:
                self.runner.remove(result.container_id)

    def _stopped_from_outside(self, container_id: str, since: float) -> str:
        """Why the engine (shutting down, say) or an operator signalled the container; empty when nobody did.

        The dispatcher itself only ever sends SIGKILL (timeout, cancel, stop), and
        a program that kills itself leaves no ``kill`` event: a SIGTERM exit with
        a ``kill``/``stop`` event is the platform's doing, never a result.
        """
        try:
            events = self.runner.api.events(
                since=since - 1,
                until=time.time(),
                filters={"container": container_id, "event": ["kill", "stop"]},
                decode=True,
            )
            for event in events:
                signal_ = (event.get("Actor") or {}).get("Attributes", {}).get("signal", "")
                if event.get("Action") == "stop" or signal_ not in ("9", "SIGKILL"):
                    return f"{event.get('Action')} signal {signal_ or '?'}"
        except Exception as e:  # noqa: BLE001 - an engine that cannot say is an engine in trouble
            return f"the engine could not be asked: {type(e).__name__}"
        return ""

    def _record(self, sandbox: Sandbox, result: RunResult) -> None:
        stdout, stderr, logs = _text(result.stdout), _text(result.stderr), _text(result.logs)
        output_key = None
        if len(stdout.encode()) + len(stderr.encode()) + len(logs.encode()) > ROW_OUTPUT_BUDGET:
            output_key = f"sandboxes/{sandbox.sandbox_id}/output.json"
            body = json.dumps({"stdout": stdout, "stderr": stderr, "logs": logs}).encode()
            key = output_key
            try:
                self._retry(
                    "storing output", lambda: aws.put_object(self.settings, key, body), sandbox_id=sandbox.sandbox_id
                )
            except Unavailable as e:
                raise PlatformError(f"storing the output: {e}") from e
            stdout = stderr = logs = ""
        actions: list[Action] = [
            Sandbox.return_code.set(result.return_code),
            Sandbox.timed_out.set(result.timed_out),
            Sandbox.oom_killed.set(result.oom_killed),
            Sandbox.output_truncated.set(result.output_truncated),
            Sandbox.finished_at.set(utcnow()),
            Sandbox.files_inline.remove(),  # done with: keeps finished rows (and list pages) small
            Sandbox.logs.set(logs) if not output_key else Sandbox.logs.remove(),
            Sandbox.output_key.set(output_key) if output_key else Sandbox.output_key.remove(),
        ]
        for attribute, value in ((Sandbox.stdout, stdout), (Sandbox.stderr, stderr)):
            actions.append(attribute.set(value) if value else attribute.remove())
        # The status goes last: DynamoDB applies an update atomically, but moto's server applies
        # it clause by clause, and a reader must never see `terminated` before the result.
        actions.append(Sandbox.status.set("terminated"))
        try:
            # The result is real: keep trying to write it through a DynamoDB outage.
            self._retry(
                "recording the result",
                lambda: sandbox.update(
                    actions=actions,
                    condition=(Sandbox.status == "running") & (Sandbox.server == self.server.name),
                ),
                sandbox_id=sandbox.sandbox_id,
            )
        except UpdateError as e:
            if _conditional_failed(e):
                # Cancelled, or settled by the reconciler while we could not heartbeat.
                log(logger, "sandbox.settled_elsewhere", logging.WARNING, sandbox_id=sandbox.sandbox_id)
                return
            raise PlatformError(f"recording the result: {e}") from e
        except PynamoDBException as e:
            raise PlatformError(f"recording the result: {e}") from e
        self.runs += 1
        log(
            logger,
            "sandbox.terminated",
            sandbox_id=sandbox.sandbox_id,
            server=self.server.name,
            app_id=sandbox.app_id,
            return_code=result.return_code,
            timed_out=result.timed_out,
            oom_killed=result.oom_killed,
            stdout_bytes=len(result.stdout),
            stderr_bytes=len(result.stderr),
            duration_ms=int(result.duration_s * 1000),
        )

    def _give_back_or_fail(self, sandbox: Sandbox, reason: str, transient: bool, count: bool = True) -> str:
        """After a failure: ``queued`` again or ``error``; returns that, ``gone`` or ``unsettled``.

        ``count`` False: the try was cut short by the platform (cold stop, engine
        gone, lease lost) and does not count against the sandbox's attempts.
        """
        attempts = int(sandbox.attempts or 0)  # the claim counted this try already
        final = not transient or (count and attempts >= self.config.max_attempts)
        mine = (Sandbox.status == "running") & (Sandbox.server == self.server.name)
        actions: list[Action]
        if final:
            actions = [Sandbox.status.set("error"), Sandbox.error.set(reason[:1000]), Sandbox.finished_at.set(utcnow())]
        else:
            actions = [Sandbox.status.set("queued"), Sandbox.started_at.remove()]
            if not count:
                actions.append(Sandbox.attempts.add(-1))
        try:
            self._retry(
                "settling after a failure",
                lambda: sandbox.update(actions=actions, condition=mine),
                sandbox_id=sandbox.sandbox_id,
            )
        except UpdateError as e:
            if _conditional_failed(e):
                log(logger, "sandbox.settled_elsewhere", logging.WARNING, sandbox_id=sandbox.sandbox_id)
                return "gone"
            log(logger, "sandbox.settle_failed", logging.ERROR, sandbox_id=sandbox.sandbox_id, error=str(e))
            return "unsettled"
        except PynamoDBException as e:
            log(logger, "sandbox.settle_failed", logging.ERROR, sandbox_id=sandbox.sandbox_id, error=str(e))
            return "unsettled"  # the message comes back, or the reconciler settles the row
        log(
            logger,
            "sandbox.error" if final else "sandbox.requeued",
            logging.WARNING,
            sandbox_id=sandbox.sandbox_id,
            server=self.server.name,
            reason=reason[:500],
            attempts=attempts,
            counted=count,
        )
        return "error" if final else "queued"

    def _settle_orphan(self, sandbox: Sandbox, job: Job, reason: str) -> None:
        settled = self._give_back_or_fail(sandbox, reason, transient=True)
        if settled == "queued":
            self._retry_soon(job, 0)  # the same message wakes it again
        elif settled in ("error", "gone"):
            self._delete(job.receipt)

    def _fresh_wakeup(self, job: Job, delay_s: int) -> None:
        """Replace the job's message by a new one (receive count 0); sent first, so there is never none."""
        self._release(job)
        try:
            aws.send_wakeup(self.settings, self.server.queue_url, job.sandbox_id, delay_s=delay_s)
        except Unavailable as e:
            log(logger, "queue.wakeup_failed", logging.WARNING, sandbox_id=job.sandbox_id, error=str(e)[:300])
            self._retry_soon(job, 0)  # the old one will do
            return
        self._delete(job.receipt)

    def _hand_back_messages(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self._set_visibility(message["ReceiptHandle"], 0, "queue.hand_back_failed")

    def _retry_soon(self, job: Job, failures: int) -> None:
        """Let a message come back after a backoff that doubles per failure, not the full visibility timeout."""
        self._release(job)
        if failures <= 0 or self.cold.is_set():
            delay = 0
        else:
            delay = min(math.ceil(self.config.backoff_s * 2 ** (failures - 1)), MAX_BACKOFF_S)
        self._set_visibility(job.receipt, delay, "queue.backoff_failed")

    # Background duties

    def _visibility_loop(self) -> None:
        """Keep the messages of sandboxes in hand hidden.  SQS only: a DynamoDB outage cannot delay it."""
        interval = max(1.0, min(self.config.visibility_s / 3, RECEIVE_VISIBILITY_S / 2))
        while not self.cold.wait(interval):
            with self._lock:
                receipts = [job.receipt for job in self.inflight.values()]
            for receipt in receipts:
                self._set_visibility(receipt, self.config.visibility_s, "queue.extend_failed")

    def _watch_loop(self) -> None:
        while not self.cold.wait(self.config.watch_s):
            self._watch_once()

    def _watch_once(self) -> None:
        """Kill the containers of cancelled sandboxes; give up running ones when the lease is lost."""
        if time.monotonic() - self.last_db_ok > self.lease_s:
            self._kill_all("the server lost contact with the database; the sandbox was given back")
            return
        with self._lock:
            ids = [sid for sid, job in self.inflight.items() if not job.cancelled]
        if not ids:
            return
        try:
            rows = list(Sandbox.batch_get(ids, consistent_read=True, attributes_to_get=["sandbox_id", "status"]))
        except Exception as e:  # noqa: BLE001 - checked again on the next tick
            log(logger, "watch.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])
            return
        for row in rows:
            if row.status != "cancelled":
                continue
            with self._lock:
                job = self.inflight.get(row.sandbox_id)
            if job is not None and not job.cancelled:
                job.cancelled = True
                log(logger, "sandbox.cancelled", sandbox_id=row.sandbox_id, server=self.server.name)
                self.runner.kill(self.runner.container_name(row.sandbox_id))

    def _kill_all(self, reason: str) -> None:
        """Kill the containers of every sandbox in hand; their handlers give them back (not counted)."""
        with self._lock:
            jobs = [job for job in self.inflight.values() if not job.aborted and not job.cancelled]
            for job in jobs:
                job.aborted = reason
        for job in jobs:
            log(logger, "sandbox.aborted", logging.WARNING, sandbox_id=job.sandbox_id, reason=reason)
            self.runner.kill(self.runner.container_name(job.sandbox_id))

    def _heartbeat_loop(self) -> None:
        """Beat until every slot is done, warm stop included: the reconciler must not take running work away."""
        images_every = 12
        beats = 0
        while not self.done.is_set():
            housekeeping = beats % images_every == 0
            self._beat(images=housekeeping)
            if housekeeping and beats:
                self._sweep()
            beats += 1
            self.done.wait(self.config.heartbeat_s)

    def _engine_answers(self) -> bool:
        try:
            self.runner.api.ping()
            return True
        except Exception:  # noqa: BLE001 - any failure means the same here
            return False

    def _wait_for_engine(self) -> None:
        """The engine is unreachable: take no work until it answers again."""
        delay = 0.5
        log(logger, "engine.unreachable", logging.WARNING, server=self.server.name)
        if self.runner.pool is not None:
            self.runner.pool.pause()  # its spares died with the engine, or cannot be trusted
        while not self.stopping.is_set():
            if self._engine_answers():
                log(logger, "engine.back", server=self.server.name)
                if self.runner.pool is not None:
                    self.runner.pool.resume()
                self.engine_up.set()
                return
            self.stopping.wait(delay)
            delay = min(delay * 2, 5.0)

    def _beat(self, images: bool = False) -> None:
        # One at a time: the last beat of a stop (which clears the heartbeat) must not be overtaken.
        with self._beat_lock:
            self._beat_once(images)

    def _beat_once(self, images: bool) -> None:
        engine = self._engine_answers() if not self.done.is_set() else True
        if not engine:
            self.engine_up.clear()
        with self._lock:
            ids = sorted(self.inflight)
        actions: list[Action] = [
            DockerServer.running.set(len(ids)),
            DockerServer.slots.set(self.slots),
            DockerServer.inflight.set(cast(Any, ids)),
        ]
        if self.done.is_set():
            # A stopped dispatcher clears its heartbeat so the API stops choosing it at once.
            actions.append(DockerServer.last_heartbeat.remove())
        elif engine:
            # Without an engine the heartbeat goes stale: work goes to servers that can run it.
            actions.append(DockerServer.last_heartbeat.set(utcnow()))
        try:
            if images and engine:
                actions.append(DockerServer.images.set(cast(Any, self.runner.local_images())))
            self.server.update(actions=actions, condition=DockerServer.name.exists())
            self.last_db_ok = time.monotonic()
        except UpdateError as e:
            if _conditional_failed(e):
                log(logger, "server.deleted", logging.ERROR, server=self.server.name)
                self.stopping.set()  # our row is gone (server-delete): stop taking work
                return
            log(logger, "heartbeat.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])
        except Exception as e:  # noqa: BLE001 - a missed beat is retried on the next one
            log(logger, "heartbeat.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])

    def _sweep(self) -> None:
        """Remove containers of this server whose sandbox is no longer in hand (left by an engine restart, say)."""
        try:
            containers = self.runner.leftovers()
        except Exception as e:  # noqa: BLE001 - tried again later
            log(logger, "sweep.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])
            return
        with self._lock:
            held = set(self.inflight)
        live = self.runner.live_ids()
        for container in containers:
            sandbox_id = self.runner.sandbox_of(container)
            if sandbox_id in held or (not sandbox_id and container["Id"] in live):
                continue  # a run in hand, or a spare of the pool (or one being taken)
            log(logger, "sweep.removed", sandbox_id=sandbox_id or None, server=self.server.name)
            self.runner.remove(container["Id"])

    def recover(self) -> None:
        """Settle what a dead dispatcher of this server left: its containers and claimed rows.

        The engine keeps no output of a container (its log driver is ``none``),
        so even one that finished cannot be recorded: each of these sandboxes is
        given back to run again (or marked ``error`` past ``max_attempts``).
        """
        for container in self.runner.leftovers():
            sandbox_id = self.runner.sandbox_of(container)
            self.runner.remove(container["Id"])
            if sandbox_id:
                self._requeue_orphan(sandbox_id, "the dispatcher stopped while the sandbox ran")
        try:
            orphans = [
                s.sandbox_id
                for s in Sandbox.by_status.query("running", filter_condition=Sandbox.server == self.server.name)
            ]
        except Exception as e:  # noqa: BLE001 - the reconciler settles them when we cannot
            log(logger, "recover.query_failed", logging.WARNING, server=self.server.name, error=str(e))
            orphans = []
        for sandbox_id in orphans:
            self._requeue_orphan(sandbox_id, "the dispatcher stopped while the sandbox ran")

    def _requeue_orphan(self, sandbox_id: str, reason: str) -> None:
        try:
            sandbox = Sandbox.get(sandbox_id, consistent_read=True)
        except DoesNotExist:
            return
        except Exception as e:  # noqa: BLE001 - the reconciler settles it when we cannot
            log(logger, "recover.failed", logging.WARNING, sandbox_id=sandbox_id, error=str(e)[:300])
            return
        if sandbox.status != "running" or sandbox.server != self.server.name:
            return
        if self._give_back_or_fail(sandbox, reason, transient=True) != "queued":
            return
        try:
            # The dead dispatcher's last long poll may still be open and would swallow the message:
            # it shows only once that poll has surely ended (the dead one died at most one beat after
            # its last heartbeat).
            last = self.server.last_heartbeat
            ends = self.config.heartbeat_s + self.config.poll_wait_s + 1
            delay = ends - (utcnow() - last).total_seconds() if last else ends
            aws.send_wakeup(self.settings, self.server.queue_url, sandbox_id, delay_s=math.ceil(max(0.0, delay)))
        except Unavailable:
            pass  # the original message comes back after its visibility timeout, or the reconciler re-sends
        log(logger, "recover.requeued", sandbox_id=sandbox_id, server=self.server.name)


def _engine_fault(e: BaseException | None) -> bool:
    """Whether the Docker engine could not be reached (docker-py talks HTTP through ``requests``).

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


def _conditional_failed(e: Exception) -> bool:
    cause = getattr(e, "cause_response_code", None)
    return cause == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in str(e)
