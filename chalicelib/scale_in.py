"""Scale-in that loses nothing: retiring the Docker host an Auto Scaling group is about to terminate.

The group's lifecycle hook on termination holds the instance in
``Terminating:Wait``; EventBridge hands the hook's event to ``app.host_terminating``,
which calls ``begin``.  A host registered itself under its instance id
(``python -m dispatcher --register-only``), so the event names its server.

Retiring is a re-entrant step function, never one long wait: a Lambda has
minutes, a drain as long as the longest sandbox.  ``begin`` writes the hook
onto the server's row (``retiring``), so the row itself says what is left to
do; ``step`` looks at the row and the sandboxes and does the next thing only:

1. ``draining``: the server takes no new work (its dispatcher finishes what it
   runs, ``dispatcher.worker``); its queued sandboxes are moved to ready
   servers now; while any sandbox still runs there, the hook is heartbeaten
   (``RecordLifecycleActionHeartbeat``) and the step returns.
2. ``stopping``: nothing runs there; the row asks its dispatcher for a warm
   stop (state ``stopping``, read at its next heartbeat); it stops, clearing
   its heartbeat.  A dispatcher already dead (the host failed) is not waited for.
3. ``done``: the server's row and queues are deleted (``admin.server_delete``,
   which refuses while anything runs there; never within ``SETTLE_S`` of the
   hook) and the lifecycle action completed (``CONTINUE``): the group
   terminates the instance.

``advance`` steps every retiring server, again and again within a time budget;
the EventBridge handler calls it right away and a one-minute schedule
(``app.scale_in_steps``) calls it until each is done, so a drain of any length
spans as many Lambda invocations as it needs and the hook's heartbeat timeout
(5 min in the template) is never reached while a step runs each minute.  A
host that dies without warning is the reconciler's (``chalicelib.reconciler``),
as before; its hook is completed here once the reconciler has given its work back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError

from chalicelib import admin, aws, context, lifecycle, liveness
from chalicelib.context import SERVERS_TTL_S
from chalicelib.errors import Conflict, NotFound, Unavailable
from chalicelib.logs import log
from chalicelib.models import DockerServer, Sandbox, utcnow
from chalicelib.reconciler import able
from chalicelib.scheduling import pick_ready
from chalicelib.settings import Settings

logger = logging.getLogger("opendevelop.scale_in")

EVENT_TYPE = "EC2 Instance-terminate Lifecycle Action"
GROUP_SUFFIX = "-docker-hosts"  # the template's group: <TablePrefix>-docker-hosts
# A server is deleted no sooner than this after its retirement began: by then no API process still
# chooses it from a cached list of servers (``context.SERVERS_TTL_S``), so no new sandbox is sent
# to a queue about to go.
SETTLE_S = SERVERS_TTL_S + 3.0


def group_name(settings: Settings) -> str:
    return f"{settings.table_prefix}{GROUP_SUFFIX}"


@dataclass(frozen=True)
class Hook:
    """One lifecycle action: what CompleteLifecycleAction and its heartbeat name."""

    group: str
    hook: str
    token: str
    instance_id: str

    @classmethod
    def from_event(cls, detail: dict[str, Any]) -> Hook:
        return cls(
            group=str(detail.get("AutoScalingGroupName") or ""),
            hook=str(detail.get("LifecycleHookName") or ""),
            token=str(detail.get("LifecycleActionToken") or ""),
            instance_id=str(detail.get("EC2InstanceId") or ""),
        )

    def as_json(self) -> dict[str, str]:
        return {"group": self.group, "hook": self.hook, "token": self.token, "instance_id": self.instance_id}


class Autoscaling(Protocol):
    """The two calls a retirement makes of the Auto Scaling group (a fake records them in tests)."""

    def heartbeat(self, hook: Hook) -> None: ...

    def complete(self, hook: Hook, result: str) -> None: ...


class AwsAutoscaling:
    """The real group, through boto3.  A lifecycle action that no longer exists (it timed out, or was
    completed by an earlier step) is not an error: there is nothing left to tell the group."""

    def __init__(self, settings: Settings) -> None:
        self.client = context.for_settings(settings).clients.client("autoscaling", settings)

    def _call(self, what: str, fn: Callable[..., Any], hook: Hook, **extra: Any) -> None:
        try:
            fn(
                AutoScalingGroupName=hook.group,
                LifecycleHookName=hook.hook,
                LifecycleActionToken=hook.token,
                InstanceId=hook.instance_id,
                **extra,
            )
        except ClientError as e:
            if "No active Lifecycle Action found" in str(e):
                log(logger, "scale_in.hook_gone", logging.WARNING, server=hook.instance_id, call=what)
                return
            raise Unavailable(f"{what}: {e}") from e
        except BotoCoreError as e:
            raise Unavailable(f"{what}: {e}") from e

    def heartbeat(self, hook: Hook) -> None:
        self._call("RecordLifecycleActionHeartbeat", self.client.record_lifecycle_action_heartbeat, hook)

    def complete(self, hook: Hook, result: str) -> None:
        self._call("CompleteLifecycleAction", self.client.complete_lifecycle_action, hook, LifecycleActionResult=result)


@dataclass
class Step:
    """What one step saw and did."""

    server: str
    phase: str  # draining | stopping | done
    running: int = 0
    moved: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"server": self.server, "phase": self.phase, "running": self.running, "moved": self.moved}


def begin(settings: Settings, detail: dict[str, Any], autoscaling: Autoscaling) -> Step | None:
    """The hook's event: note it on the server's row and take the first step (None: not our group's)."""
    hook = Hook.from_event(detail)
    if hook.group != group_name(settings) or not hook.instance_id:
        log(logger, "scale_in.ignored", group=hook.group, server=hook.instance_id)
        return None
    log(logger, "scale_in.begin", server=hook.instance_id, group=hook.group, hook=hook.hook)
    try:
        server = DockerServer.get(hook.instance_id, consistent_read=True)
    except DoesNotExist:
        # Never registered (it failed while booting) or already retired: nothing to drain.
        autoscaling.complete(hook, "CONTINUE")
        log(logger, "scale_in.done", server=hook.instance_id, reason="no such server")
        return Step(hook.instance_id, "done")
    try:
        server.update(
            actions=[DockerServer.retiring.set(hook.as_json()), DockerServer.retiring_since.set(utcnow())],
            condition=DockerServer.name.exists(),
        )
    except UpdateError as e:
        if not lifecycle.lost(e):
            raise
        autoscaling.complete(hook, "CONTINUE")
        return Step(hook.instance_id, "done")
    return step(settings, server, autoscaling)


def step(settings: Settings, server: DockerServer, autoscaling: Autoscaling) -> Step:
    """The next thing to do for a retiring server (see the module's docstring); safe to repeat or race."""
    hook = Hook(**server.retiring)
    now_state = _set_state(server, "draining") if server.state not in ("draining", "stopping") else server.state
    moved = _move_queued(settings, server)
    running = _running_there(server)
    if running:
        autoscaling.heartbeat(hook)
        return Step(server.name, "draining", running=len(running), moved=moved)
    since = server.retiring_since
    settling = since is not None and (utcnow() - since).total_seconds() < SETTLE_S
    if liveness.is_alive(server) or settling:
        if now_state != "stopping":
            _set_state(server, "stopping")
            log(logger, "scale_in.warm_stop", server=server.name)
        autoscaling.heartbeat(hook)
        return Step(server.name, "stopping", moved=moved)
    try:
        admin.server_delete(settings, server.name)
    except NotFound:
        pass  # a racing step deleted it
    except Conflict:
        # A sandbox was claimed there between the reads above and the delete: drain on.
        autoscaling.heartbeat(hook)
        return Step(server.name, "draining", moved=moved)
    autoscaling.complete(hook, "CONTINUE")
    log(logger, "scale_in.done", server=server.name, moved=moved)
    return Step(server.name, "done", moved=moved)


def advance(
    settings: Settings,
    autoscaling: Autoscaling,
    budget_s: float = 0.0,
    pause_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Step every retiring server, again every ``pause_s`` while ``budget_s`` lasts (0: once each)."""
    ends = clock() + budget_s
    steps: list[dict[str, Any]] = []
    while True:
        pending = 0
        for server in DockerServer.scan(DockerServer.retiring.exists(), consistent_read=True):
            try:
                done = step(settings, server, autoscaling)
            except (PynamoDBException, Unavailable) as e:
                log(logger, "scale_in.step_failed", logging.WARNING, server=server.name, error=str(e)[:300])
                pending += 1
                continue
            steps.append(done.as_json())
            pending += done.phase != "done"
        if not pending or clock() + pause_s > ends:
            return steps
        sleep(pause_s)


def _set_state(server: DockerServer, state: str) -> str:
    server.update(actions=[DockerServer.state.set(state)], condition=DockerServer.name.exists())
    return state


def _running_there(server: DockerServer) -> set[str]:
    """What still runs on the server: its running rows, and what its dispatcher last said it holds."""
    server.refresh(consistent_read=True)
    rows = {s.sandbox_id for s in Sandbox.by_status.query("running", filter_condition=Sandbox.server == server.name)}
    return rows | {str(i) for i in server.inflight or []}


def _move_queued(settings: Settings, server: DockerServer) -> int:
    """Queued sandboxes of a retiring server go to ready ones now (the reconciler would, a pass later).

    A parked one (beyond its app's fair share, ``chalicelib.quotas``) moves too but gets no
    wake-up: it is sent one when it is woken, on the server it is on by then.
    """
    queued = list(Sandbox.by_status.query("queued", filter_condition=Sandbox.server == server.name))
    if not queued:
        return 0
    others = {s.name: s for s in DockerServer.scan() if s.name != server.name}
    moved = 0
    for row in queued:
        target = pick_ready(row.docker_image or "", settings.heartbeat_ttl_s, able(row, others))
        if target is None:
            continue  # it waits queued; the reconciler moves it once a server is ready
        if lifecycle.move(row.sandbox_id, server.name, target.name):
            moved += 1
            log(logger, "sandbox.rerouted", sandbox_id=row.sandbox_id, server=target.name, previous=server.name)
            if not row.parked_app:
                aws.send_wakeup(settings, target.queue_url, row.sandbox_id)
    return moved
