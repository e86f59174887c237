"""The queue loop: receive, claim, run, record, delete.

The DynamoDB row is the truth and the SQS message only a wake-up call.  A
message is deleted only after the result is written; while its container runs
its visibility is extended, so no other dispatcher sees it.  Every state change
is a conditional write naming the state it leaves, so a duplicate or late
message can never run a sandbox twice or move it backwards.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError
from pynamodb.expressions.update import Action

from chalicelib import aws
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.settings import Settings
from dispatcher.runner import LABEL_SANDBOX, PlatformError, Runner, RunResult, RunSpec
from dispatcher.settings import DispatcherSettings

logger = logging.getLogger("opendevelop.dispatcher")

# Output larger than this (stdout + stderr + logs, encoded) goes to S3 instead of the row,
# keeping rows far from DynamoDB's 400 KB item limit.
ROW_OUTPUT_BUDGET = 240 * 1024


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


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
        self.cold = threading.Event()  # cold stop: kill what runs, hand it back
        self._lock = threading.Lock()
        self.inflight: dict[str, dict[str, Any]] = {}  # sandbox_id -> {receipt, container}
        self.runs = 0

    # Lifecycle

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.stopping.is_set():
                log(logger, "dispatcher.cold_stop", server=self.server.name)
                self.cold.set()
                self._hand_back_all()
            else:
                log(logger, "dispatcher.warm_stop", server=self.server.name, running=len(self.inflight))
                self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve(self) -> None:
        self.recover()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._visibility_loop, name="visibility", daemon=True).start()
        log(logger, "dispatcher.ready", server=self.server.name, slots=self.slots, queue=self.server.queue_url)
        with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="slot") as pool:
            while not self.stopping.is_set():
                taken = self._take_slots()
                if not taken:
                    continue
                try:
                    messages = self._receive(taken)
                except Unavailable as e:
                    log(logger, "queue.unavailable", logging.WARNING, server=self.server.name, error=str(e))
                    messages = []
                    self.stopping.wait(2)
                if self.stopping.is_set() and messages:
                    # A stop came during the long poll: what it brought goes straight back.
                    self._hand_back_messages(messages)
                    messages = []
                for _ in range(taken - len(messages)):
                    self.free.release()
                for message in messages:
                    pool.submit(self._handle_in_slot, message)
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
                VisibilityTimeout=self.config.visibility_s,
                AttributeNames=["ApproximateReceiveCount"],
            )
        return list(response.get("Messages", []))

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.server.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (BotoCoreError, ClientError) as e:
            # Harmless: the message comes back, finds the sandbox settled, and is dropped then.
            log(logger, "queue.delete_failed", logging.WARNING, server=self.server.name, error=str(e))

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
            self._delete(message)
            return
        sandbox = self._claim(sandbox_id)
        if sandbox is None:
            self._delete(message)
            return
        with self._lock:
            self.inflight[sandbox_id] = {"receipt": message["ReceiptHandle"]}
        try:
            self._run_claimed(sandbox)
            self._delete(message)
        except Exception as e:
            transient = e.transient if isinstance(e, PlatformError) else True
            if not isinstance(e, PlatformError):
                logger.exception("dispatcher.unexpected_error")
            if self._give_back_or_fail(sandbox, str(e) or type(e).__name__, transient):
                self._delete(message)
            else:
                self._retry_soon(message, int(sandbox.attempts or 0) + 1)
        finally:
            with self._lock:
                self.inflight.pop(sandbox_id, None)

    def _claim(self, sandbox_id: str) -> Sandbox | None:
        """queued -> running, or None when the sandbox is gone or someone else has it."""
        try:
            sandbox = Sandbox.get(sandbox_id, consistent_read=True)
        except DoesNotExist:
            log(logger, "sandbox.missing", logging.WARNING, sandbox_id=sandbox_id, server=self.server.name)
            return None
        if sandbox.status != "queued":
            log(logger, "sandbox.duplicate_message", sandbox_id=sandbox_id, status=sandbox.status)
            return None
        try:
            sandbox.update(
                actions=[
                    Sandbox.status.set("running"),
                    Sandbox.server.set(self.server.name),
                    Sandbox.started_at.set(utcnow()),
                    Sandbox.attempts.add(1),
                ],
                condition=Sandbox.status == "queued",
            )
        except UpdateError as e:
            if _conditional_failed(e):
                return None
            raise
        log(logger, "sandbox.claimed", sandbox_id=sandbox_id, server=self.server.name, app_id=sandbox.app_id)
        return sandbox

    def _spec(self, sandbox: Sandbox) -> RunSpec:
        limits = sandbox.limits or {}
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

    def _run_claimed(self, sandbox: Sandbox) -> None:
        payload = b""
        if sandbox.files_key:
            try:
                payload = aws.get_object(self.settings, sandbox.files_key)
            except Unavailable as e:
                raise PlatformError(f"reading the sandbox's files: {e}") from e
        result = self.runner.run(self._spec(sandbox), payload)
        if self.cold.is_set():
            raise PlatformError("the dispatcher stopped while the sandbox ran")
        self._record(sandbox, result)

    def _record(self, sandbox: Sandbox, result: RunResult) -> None:
        stdout, stderr, logs = _text(result.stdout), _text(result.stderr), _text(result.logs)
        output_key = None
        if len(stdout.encode()) + len(stderr.encode()) + len(logs.encode()) > ROW_OUTPUT_BUDGET:
            output_key = f"sandboxes/{sandbox.sandbox_id}/output.json"
            body = json.dumps({"stdout": stdout, "stderr": stderr, "logs": logs}).encode()
            try:
                aws.put_object(self.settings, output_key, body)
            except Unavailable as e:
                raise PlatformError(f"storing the output: {e}") from e
            stdout = stderr = logs = ""
        actions: list[Action] = [
            Sandbox.status.set("terminated"),
            Sandbox.return_code.set(result.return_code),
            Sandbox.timed_out.set(result.timed_out),
            Sandbox.oom_killed.set(result.oom_killed),
            Sandbox.output_truncated.set(result.output_truncated),
            Sandbox.finished_at.set(utcnow()),
            Sandbox.logs.set(logs) if not output_key else Sandbox.logs.remove(),
            Sandbox.output_key.set(output_key) if output_key else Sandbox.output_key.remove(),
        ]
        for attribute, value in ((Sandbox.stdout, stdout), (Sandbox.stderr, stderr)):
            actions.append(attribute.set(value) if value else attribute.remove())
        try:
            sandbox.update(
                actions=actions,
                condition=(Sandbox.status == "running") & (Sandbox.server == self.server.name),
            )
        except UpdateError as e:
            if _conditional_failed(e):
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

    def _give_back_or_fail(self, sandbox: Sandbox, reason: str, transient: bool) -> bool:
        """After a platform failure: re-queue (message kept) or mark ``error``.  True: delete the message."""
        attempts = int(sandbox.attempts or 0) + 1
        final = not transient or attempts >= self.config.max_attempts
        try:
            if final:
                sandbox.update(
                    actions=[Sandbox.status.set("error"), Sandbox.error.set(reason), Sandbox.finished_at.set(utcnow())],
                    condition=(Sandbox.status == "running") & (Sandbox.server == self.server.name),
                )
            else:
                sandbox.update(
                    actions=[Sandbox.status.set("queued"), Sandbox.started_at.remove()],
                    condition=(Sandbox.status == "running") & (Sandbox.server == self.server.name),
                )
        except PynamoDBException as e:
            log(logger, "sandbox.settle_failed", logging.ERROR, sandbox_id=sandbox.sandbox_id, error=str(e))
            return False  # the message comes back; recovery settles the row then
        log(
            logger,
            "sandbox.error" if final else "sandbox.requeued",
            logging.WARNING,
            sandbox_id=sandbox.sandbox_id,
            server=self.server.name,
            reason=reason,
            attempts=attempts,
        )
        return final

    def _hand_back_messages(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.server.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            except (BotoCoreError, ClientError) as e:
                log(logger, "queue.hand_back_failed", logging.WARNING, server=self.server.name, error=str(e))

    def _retry_soon(self, message: dict[str, Any], attempts: int) -> None:
        """Let a handed-back message come back after a short backoff instead of the full visibility timeout."""
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.server.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=min(2**attempts, 30),
            )
        except (BotoCoreError, ClientError) as e:
            log(logger, "queue.backoff_failed", logging.WARNING, server=self.server.name, error=str(e))

    # Background duties

    def _visibility_loop(self) -> None:
        interval = max(5.0, self.config.visibility_s / 3)
        while not self.cold.is_set():
            time.sleep(interval)
            with self._lock:
                receipts = [v["receipt"] for v in self.inflight.values()]
            for receipt in receipts:
                try:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.server.queue_url,
                        ReceiptHandle=receipt,
                        VisibilityTimeout=self.config.visibility_s,
                    )
                except (BotoCoreError, ClientError) as e:
                    log(logger, "queue.extend_failed", logging.WARNING, server=self.server.name, error=str(e))

    def _heartbeat_loop(self) -> None:
        images_every = 12
        beats = 0
        while not self.stopping.is_set():
            self._beat(images=beats % images_every == 0)
            beats += 1
            self.stopping.wait(self.config.heartbeat_s)

    def _beat(self, images: bool = False) -> None:
        actions: list[Action] = [
            # A stopped dispatcher clears its heartbeat so the API stops choosing it at once.
            DockerServer.last_heartbeat.remove()
            if self.stopping.is_set()
            else DockerServer.last_heartbeat.set(utcnow()),
            DockerServer.running.set(len(self.inflight)),
            DockerServer.slots.set(self.slots),
        ]
        try:
            if images:
                actions.append(DockerServer.images.set(cast(Any, self.runner.local_images())))
            self.server.update(actions=actions)
        except Exception as e:  # noqa: BLE001 - a missed beat is retried on the next one
            log(logger, "heartbeat.failed", logging.WARNING, server=self.server.name, error=str(e))

    def _hand_back_all(self) -> None:
        """Cold stop: kill the running containers; their sandboxes go back to the queue."""
        with self._lock:
            ids = list(self.inflight)
        for sandbox_id in ids:
            self.runner.kill(self.runner.container_name(sandbox_id))

    def recover(self) -> None:
        """Settle what a dead dispatcher of this server left: its containers and claimed rows."""
        for container in self.runner.leftovers():
            sandbox_id = (container.get("Labels") or {}).get(LABEL_SANDBOX, "")
            self.runner.remove(container["Id"])
            if sandbox_id:
                self._requeue_orphan(sandbox_id, "the dispatcher stopped while the sandbox ran")
        try:
            orphans = [
                s.sandbox_id for s in Sandbox.scan((Sandbox.status == "running") & (Sandbox.server == self.server.name))
            ]
        except PynamoDBException as e:
            log(logger, "recover.scan_failed", logging.WARNING, server=self.server.name, error=str(e))
            orphans = []
        for sandbox_id in orphans:
            self._requeue_orphan(sandbox_id, "the dispatcher stopped while the sandbox ran")

    def _requeue_orphan(self, sandbox_id: str, reason: str) -> None:
        try:
            sandbox = Sandbox.get(sandbox_id, consistent_read=True)
        except DoesNotExist:
            return
        if sandbox.status != "running" or sandbox.server != self.server.name:
            return
        if self._give_back_or_fail(sandbox, reason, transient=True):
            return
        try:
            aws.send_wakeup(self.settings, self.server.queue_url, sandbox_id)
        except Unavailable:
            pass  # the original message still comes back after its visibility timeout
        log(logger, "recover.requeued", sandbox_id=sandbox_id, server=self.server.name)


def _conditional_failed(e: Exception) -> bool:
    cause = getattr(e, "cause_response_code", None)
    return cause == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in str(e)
