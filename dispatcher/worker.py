"""The dispatcher's main loop: free slots take messages from the inbox, each handled on its own thread.

The DynamoDB row is the truth and the SQS message only a wake-up call.  The
parts, one job each:

* ``inbox``: the SQS queue (receive, delete, keep hidden, hand back, backoff);
* ``pipeline``: one sandbox, claim -> run -> record (``outcome`` when it fails);
* ``duties``: heartbeat, visibility, cancels and the lease, the sweep;
* ``recovery``: what a dead dispatcher of this server left;
* ``retry``: transient AWS failures, retried in place;
* the engine (``engine.Engine``, Docker's in ``runner``), behind a narrow protocol.

Stopping (rq's way): the first SIGTERM is a warm stop (take nothing new, finish
what runs, keep beating until then), the second a cold stop (kill what runs and
hand it back, not counted); a row whose state is ``stopping`` (its host is being
retired, ``chalicelib.scale_in``) asks for the same warm stop.  A draining (or disabled) server's dispatcher
finishes what it runs and takes nothing new; the reconciler moves what waits
on its queue.  While the engine is unreachable the dispatcher takes no work.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pynamodb.exceptions import UpdateError

from chalicelib import lifecycle
from chalicelib.errors import Unavailable
from chalicelib.logs import log, log_exception
from chalicelib.models import DockerServer
from chalicelib.settings import Settings
from dispatcher.duties import Duties
from dispatcher.engine import Engine
from dispatcher.inbox import Inbox
from dispatcher.metrics import Metrics
from dispatcher.pipeline import Pipeline
from dispatcher.recovery import recover
from dispatcher.retry import Clock, Retry
from dispatcher.settings import DispatcherSettings
from dispatcher.spool import Spool
from dispatcher.state import Flags, InHand

logger = logging.getLogger("opendevelop.dispatcher")

MAX_RECEIVE = 10  # SQS's own limit per receive


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        config: DispatcherSettings,
        server: DockerServer,
        engine: Engine,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.config = config
        self.server = server
        self.engine = engine
        self.slots = int(config.slots or server.slots or os.cpu_count() or 2)
        self.free = threading.Semaphore(self.slots)
        self.hands = InHand()
        self.flags = Flags()
        self.retry = Retry(config.retry_budget_s, server.name, self.flags.cold, clock)
        self.inbox = Inbox(settings, config, server.name, server.queue_url, self.hands, self.flags, self.retry)
        holder = config.instance or secrets.token_hex(4)
        self.holder = holder
        self.spool = (
            Spool(Path(config.spool_dir)) if config.spool_dir else Spool(Path(tempfile.mkdtemp(prefix="od-spool-")))
        )
        self.pipeline = Pipeline(
            settings, config, server.name, holder, engine, self.inbox, self.flags, self.retry, self.spool, self.metrics
        )
        self.metrics.slots.set(self.slots)
        self.duties = Duties(settings, config, server, self.slots, engine, self.inbox, self.hands, self.flags, holder)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.flags.stopping.is_set():
                log(logger, "dispatcher.cold_stop", server=self.server.name, running=len(self.hands))
                self.flags.cold.set()
                # Engine calls do not belong in a signal handler: kill from a thread.
                threading.Thread(target=self.duties.kill_all, args=("the dispatcher was stopped",), daemon=True).start()
            else:
                log(logger, "dispatcher.warm_stop", server=self.server.name, running=len(self.hands))
                self.flags.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def recover(self) -> None:
        recover(
            self.config, self.server, self.engine, self.inbox, self.retry, self.spool, self.pipeline.record, self.holder
        )

    def serve(self) -> None:
        self.recover()
        self.engine.start()
        self.duties.start()
        log(logger, "dispatcher.ready", server=self.server.name, slots=self.slots, queue=self.server.queue_url)
        with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="slot") as pool:
            while not self.flags.stopping.is_set():
                if self.server.state == "stopping":
                    # Its host is being retired (chalicelib.scale_in) and nothing runs here: a warm stop.
                    log(logger, "dispatcher.warm_stop", server=self.server.name, running=len(self.hands), asked=True)
                    self.flags.stopping.set()
                    continue
                if self.server.state != "active":
                    self.flags.stopping.wait(1)  # draining or disabled: finish what runs, take nothing new
                    continue
                if not self.flags.engine_up.is_set():
                    self._wait_for_engine()
                    continue
                if self.flags.broken:
                    self.flags.stopping.wait(1)  # the heartbeat probes the engine and clears this
                    continue
                taken = self._take_slots()
                if not taken:
                    continue
                try:
                    messages = self.inbox.receive(taken)
                except Unavailable as e:
                    log(logger, "queue.unavailable", logging.WARNING, server=self.server.name, error=str(e))
                    messages = []
                    self.flags.stopping.wait(2)
                if messages and (self.flags.stopping.is_set() or self.server.state != "active"):
                    # A stop or a drain came during the long poll: what it brought goes straight back.
                    self.inbox.hand_back(messages)
                    messages = []
                for _ in range(taken - len(messages)):
                    self.free.release()
                for message in messages:
                    pool.submit(self._handle_in_slot, message)
        self.engine.close()
        self.flags.done.set()
        self.duties.beat()
        log(logger, "dispatcher.stopped", server=self.server.name, runs=self.pipeline.runs)

    def _take_slots(self) -> int:
        if not self.free.acquire(timeout=1):
            return 0
        taken = 1
        while taken < MAX_RECEIVE and self.free.acquire(blocking=False):
            taken += 1
        return taken

    def _wait_for_engine(self) -> None:
        """The engine is unreachable: take no work until it answers again."""
        delay = 0.5
        log(logger, "engine.unreachable", logging.WARNING, server=self.server.name)
        self.engine.pause()  # its spares died with the engine, or cannot be trusted
        while not self.flags.stopping.is_set():
            if self.engine.healthy():
                log(logger, "engine.back", server=self.server.name)
                self.engine.resume()
                self.flags.engine_up.set()
                return
            self.flags.stopping.wait(delay)
            delay = min(delay * 2, 5.0)

    def _handle_in_slot(self, message: dict[str, Any]) -> None:
        self.metrics.slots_busy.inc()
        try:
            self.handle(message)
        except Exception as e:  # noqa: BLE001 - the slot is freed whatever happened; the fault is logged in full once
            log_exception(logger, "dispatcher.handle_failed", e, server=self.server.name)
        finally:
            self.metrics.slots_busy.dec()
            self.free.release()

    def handle(self, message: dict[str, Any]) -> None:
        """One message: a new job for the pipeline, our own message back again, or a duplicate."""
        try:
            sandbox_id = str(json.loads(message["Body"])["sandbox_id"])
        except (ValueError, KeyError, TypeError):
            log(logger, "queue.bad_message", logging.WARNING, server=self.server.name)
            self.inbox.delete(message["ReceiptHandle"])
            return
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        job, new = self.hands.hold(sandbox_id, message["MessageId"], message["ReceiptHandle"])
        # No extension here: the visibility duty extends every message in hand well within
        # RECEIVE_VISIBILITY_S of its receipt, off the path to the container starting.
        if not new:
            if job.message_id == message["MessageId"]:
                # Our own message came back (an extension was late): keep it, hidden again.
                job.receipt = message["ReceiptHandle"]
                self.inbox.hide(job.receipt)
            else:
                log(logger, "sandbox.duplicate_message", sandbox_id=sandbox_id, status="in hand")
                self.inbox.delete(message["ReceiptHandle"])
            return
        try:
            self.pipeline.handle(job, receives)
        finally:
            # Before its message can show again (a fresh wake-up, a backoff of 0 s) the inbox
            # releases it already; this is for every other ending.
            self.hands.release(job)


def take_server(server: DockerServer, instance: str, watch_s: float) -> str:
    """Become the server's one dispatcher; "" when taken, else the live instance that serves it.

    A dispatcher that stopped cleanly cleared its name; one that did not is
    alive exactly when its beat moves, which is watched here for ``watch_s``
    (no clock of its host is compared with ours).  Taking over is conditional
    on the beat seen, so two dispatchers starting at once cannot both win.
    """
    server.refresh(consistent_read=True)
    other = server.instance
    if other and other != instance and server.last_heartbeat is not None:
        beat = server.beat
        time.sleep(watch_s)
        server.refresh(consistent_read=True)
        if server.beat != beat or server.instance != other:
            return str(server.instance or other)
    condition = DockerServer.beat == server.beat
    try:
        server.update(actions=[DockerServer.instance.set(instance)], condition=condition)
    except UpdateError as e:
        if lifecycle.lost(e):
            server.refresh(consistent_read=True)
            return str(server.instance or "another dispatcher")
        raise
    return ""
