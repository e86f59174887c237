"""The dispatcher's background duties, each a loop on its own thread beside the slots.

* Heartbeat: the server row's ``last_heartbeat``, ``running``, ``slots`` and
  ``inflight`` (and now and then its images), until every slot is done, warm
  stop included: the reconciler must not take running work away.  Without an
  engine the heartbeat goes stale, so the API and the reconciler send work
  elsewhere; a stopped dispatcher clears it.
* Visibility: the messages of sandboxes in hand stay hidden.  SQS only: a
  DynamoDB outage cannot delay it.
* Watch: every ``watch_s`` the rows of the sandboxes in hand are read; a run
  whose row no longer holds its token (cancelled, or handed over by the
  reconciler) has its container killed at once: ownership, not only a cancel.
* Fence: on its own thread, with no network call on the way, every 0.1 s.
  Once ``lease_s`` has passed since the last acknowledged heartbeat was *sent*
  (by this process's monotonic clock), every container in hand is killed: the
  reconciler, judging by its own clock, cannot move this server's work before
  ``ttl`` after it saw that heartbeat, and ``fence_plan`` has checked at start
  that the lease plus the kill's worst case fit inside it.  The heartbeat is
  conditional on this dispatcher still being the server's ``instance``: one
  that finds another instance in its place stops and fences at once.
* Sweep: containers of this server whose sandbox is no longer in hand (an
  engine restart left them, say) are removed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action

from chalicelib import lifecycle
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.settings import Settings
from dispatcher.engine import Engine
from dispatcher.inbox import RECEIVE_VISIBILITY_S, Inbox
from dispatcher.settings import FENCE_TICK_S, DispatcherSettings, fence_plan
from dispatcher.state import Flags, InHand

logger = logging.getLogger("opendevelop.dispatcher")

IMAGES_EVERY = 12  # beats: the image list (and the sweep) are not needed every few seconds


class Duties:
    def __init__(
        self,
        settings: Settings,
        config: DispatcherSettings,
        server: DockerServer,
        slots: int,
        engine: Engine,
        inbox: Inbox,
        hands: InHand,
        flags: Flags,
        instance: str,
    ) -> None:
        self.config = config
        self.instance = instance
        self.server = server
        self.slots = slots
        self.engine = engine
        self.inbox = inbox
        self.hands = hands
        self.flags = flags
        self._beat_lock = threading.Lock()
        self.plan = fence_plan(settings, config)
        self.lease_s = self.plan.lease_s
        # When the last heartbeat that DynamoDB acknowledged was sent (monotonic): the fence's origin.
        self.last_ok_sent = time.monotonic()
        self.fenced = flags.fenced  # set while the lease is lost: no claims, everything in hand killed

    def start(self) -> None:
        for target, name in (
            (self.heartbeat_loop, "heartbeat"),
            (self.visibility_loop, "visibility"),
            (self.watch_loop, "watch"),
            (self.fence_loop, "fence"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    # Heartbeat (and now and then the sweep)

    def heartbeat_loop(self) -> None:
        beats = 0
        while not self.flags.done.is_set():
            housekeeping = beats % IMAGES_EVERY == 0
            self.beat(images=housekeeping)
            if housekeeping and beats:
                self.sweep()
            beats += 1
            self.flags.done.wait(self.config.heartbeat_s)

    def beat(self, images: bool = False) -> None:
        # One at a time: the last beat of a stop (which clears the heartbeat) must not be overtaken.
        with self._beat_lock:
            self._beat_once(images)

    def _beat_once(self, images: bool) -> None:
        done = self.flags.done.is_set()
        engine = self.engine.healthy() if not done else True
        if engine and not done:
            why = self.engine.probe()  # cheap unless a create failed lately
            if why and not self.flags.broken:
                log(logger, "engine.broken", logging.ERROR, server=self.server.name, reason=why[:300])
            if not why and self.flags.broken:
                log(logger, "engine.mended", server=self.server.name)
            self.flags.broken = why
        if not engine:
            self.flags.engine_up.clear()
        ids = self.hands.ids()
        actions: list[Action] = [
            DockerServer.running.set(len(ids)),
            DockerServer.slots.set(self.slots),
            DockerServer.inflight.set(cast(Any, ids)),
        ]
        if done:
            # A stopped dispatcher clears its heartbeat and its name so the API stops choosing it at
            # once and a new dispatcher may start for the server without waiting.
            actions += [DockerServer.last_heartbeat.remove(), DockerServer.instance.remove()]
        else:
            # The beat moves while this process lives and reaches DynamoDB, engine or not: the
            # reconciler judges liveness by it (``chalicelib.liveness``), and work running here must
            # not be moved while it may still run.  ``engine_ok`` keeps new work away instead.
            actions += [
                DockerServer.last_heartbeat.set(utcnow()),
                DockerServer.beat.add(1),
                DockerServer.instance.set(self.instance),
                DockerServer.fence_s.set(self.plan.fence_s),
                DockerServer.engine_ok.set(engine and not self.flags.broken),
                DockerServer.engine_error.set(self.flags.broken or ("the engine does not answer" if not engine else ""))
                if (self.flags.broken or not engine)
                else DockerServer.engine_error.remove(),
            ]
        mine = DockerServer.name.exists() & (
            DockerServer.instance.does_not_exist() | (DockerServer.instance == self.instance)
        )
        sent = time.monotonic()
        try:
            if images and engine:
                actions.append(DockerServer.images.set(cast(Any, self.engine.images())))
            # The write refreshes the row: a drain (``state``) reaches the main loop this way.
            self.server.update(actions=actions, condition=mine)
            self.last_ok_sent = sent
            if self.fenced.is_set() and not done:
                self.fenced.clear()
                log(logger, "fence.lifted", server=self.server.name)
        except UpdateError as e:
            if lifecycle.lost(e):
                # Our row is gone (server-delete) or another dispatcher serves the server now.
                log(logger, "server.lost", logging.ERROR, server=self.server.name, instance=self.instance)
                self.flags.stopping.set()
                self.fence("the server was deleted or taken over by another dispatcher")
                return
            log(logger, "heartbeat.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])
        except Exception as e:  # noqa: BLE001 - a missed beat is retried on the next one
            log(logger, "heartbeat.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])

    def sweep(self) -> None:
        """Remove containers of this server whose sandbox is no longer in hand (left by an engine restart, say)."""
        try:
            leftovers = self.engine.leftovers()
        except Exception as e:  # noqa: BLE001 - tried again later
            log(logger, "sweep.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])
            return
        held = set(self.hands.ids())
        for container in leftovers:
            if container.sandbox_id in held:
                continue  # a run in hand
            log(logger, "sweep.removed", sandbox_id=container.sandbox_id or None, server=self.server.name)
            self.engine.release(container.container_id)

    # Visibility

    def visibility_loop(self) -> None:
        interval = max(1.0, min(self.config.visibility_s / 3, RECEIVE_VISIBILITY_S / 2))
        while not self.flags.cold.wait(interval):
            for job in self.hands.jobs():
                self.inbox.hide(job.receipt)

    # Watch: ownership (cancels, hand-overs)

    def watch_loop(self) -> None:
        while not self.flags.cold.wait(self.config.watch_s):
            self.watch_once()

    def watch_once(self) -> None:
        """Kill the container of every run whose row no longer holds its token."""
        jobs = {job.sandbox_id: job for job in self.hands.jobs() if job.token and not job.cancelled and not job.aborted}
        if not jobs:
            return
        try:
            rows = {
                row.sandbox_id: row
                for row in Sandbox.batch_get(
                    list(jobs), consistent_read=True, attributes_to_get=["sandbox_id", "status", "token"]
                )
            }
        except Exception as e:  # noqa: BLE001 - checked again on the next tick; the fence covers an outage
            log(logger, "watch.failed", logging.WARNING, server=self.server.name, error=str(e)[:300])
            return
        for sandbox_id, job in jobs.items():
            row = rows.get(sandbox_id)
            if row is not None and row.status == "running" and row.token == job.token:
                continue
            if row is not None and row.status == "cancelled":
                job.cancelled = True
                log(logger, "sandbox.cancelled", sandbox_id=sandbox_id, server=self.server.name)
            else:
                job.aborted = "the run was handed over: its row no longer holds this run's token"
                log(logger, "sandbox.fenced_off", logging.WARNING, sandbox_id=sandbox_id, server=self.server.name)
            self.engine.kill(sandbox_id)

    # The fence: no network call on this thread's way to the kill

    def fence_loop(self) -> None:
        while not self.flags.done.wait(FENCE_TICK_S):
            if self.flags.done.is_set():
                return
            if time.monotonic() - self.last_ok_sent > self.lease_s and not self.fenced.is_set():
                self.fence(f"no heartbeat reached the database for {self.lease_s:g} s (the lease)")

    def fence(self, reason: str) -> None:
        """Kill everything in hand, each kill on its own thread so one slow kill delays no other."""
        self.fenced.set()
        log(logger, "fence.fired", logging.WARNING, server=self.server.name, reason=reason, running=len(self.hands))
        self.kill_all(reason, wait_s=self.plan.kill_s)

    def kill_all(self, reason: str, wait_s: float = 0.0) -> None:
        """Kill the containers of every sandbox in hand; their handlers give them back (not counted)."""
        threads = []
        for job in self.hands.abort_all(reason):
            log(logger, "sandbox.aborted", logging.WARNING, sandbox_id=job.sandbox_id, reason=reason)
            thread = threading.Thread(target=self.engine.kill, args=(job.sandbox_id,), daemon=True)
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + wait_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
