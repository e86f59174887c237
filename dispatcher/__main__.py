"""``python -m dispatcher --server NAME``: serve one Docker server's queue until stopped.

SIGTERM or Ctrl-C once: a warm stop (take no new work, finish what runs).
Twice: a cold stop (kill the running containers and hand their sandboxes back).

``--register`` (or ``--register-only``, which then exits): the host registers
itself first, as an Auto Scaling group's host does at boot (its user-data, see
infra/aws/resources.yaml): a server of that name (the instance id there) on
this host's engine, its queues created, unless it exists already.  A server
being retired (state ``stopping``, see ``chalicelib.scale_in``) is never served
again: the dispatcher exits with status 4 (its unit does not restart on it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import docker
from pynamodb.exceptions import DoesNotExist

from chalicelib import admin, logs, models
from chalicelib.errors import AlreadyExists, OpenDevelopError
from chalicelib.models import DockerServer
from chalicelib.settings import Settings, SettingsError
from dispatcher import docker_ssh, pool, watchdog
from dispatcher.metrics import Metrics
from dispatcher.runner import Runner
from dispatcher.settings import DispatcherSettings, fence_plan
from dispatcher.worker import Dispatcher, take_server

RETIRED = 4  # the exit status of a dispatcher whose server is being retired


def register(settings: Settings, config: DispatcherSettings, runtime: str) -> bool:
    """This host as the server ``config.server`` (its row and queues), unless registered; True if made now."""
    try:
        DockerServer.get(config.server, consistent_read=True)
        return False
    except DoesNotExist:
        pass
    url = config.docker_url or "unix:///var/run/docker.sock"
    slots = int(config.slots or os.cpu_count() or 2)
    try:
        admin.server_create(settings, config.server, url, slots=slots, runtime=runtime)
    except AlreadyExists:
        return False  # registered by a racing start: the same host
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dispatcher", description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="the Docker server's name (env OPENDEVELOP_SERVER)")
    parser.add_argument("--slots", type=int, help="sandboxes run at once (default: the server's slots)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--register", action="store_true", help="register this host as the server first (if it is not registered)"
    )
    parser.add_argument("--register-only", action="store_true", help="register this host as the server, then exit")
    parser.add_argument("--runtime", default="runc", choices=admin.RUNTIMES, help="with --register: the runtime")
    parser.add_argument(
        "--check-config", action="store_true", help="print the fence's timing (lease, kill, TTL, margin) and exit"
    )
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        settings = Settings.from_env(require_hmac_key=False)  # it never checks app secrets
        config = DispatcherSettings.from_env(
            server=args.server or ("-" if args.check_config else None), slots=args.slots
        )
        plan = fence_plan(settings, config)  # refuses settings whose lease leaves no margin
    except SettingsError as e:
        print(f"dispatcher: configuration: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"dispatcher: configuration is consistent: {plan.describe()}")
        return 0
    models.configure(settings)
    if args.register or args.register_only:
        try:
            created = register(settings, config, args.runtime)
        except OpenDevelopError as e:
            print(f"dispatcher: registering {config.server!r}: {e.message}", file=sys.stderr)
            return 2
        print(f"dispatcher: server {config.server!r} {'registered' if created else 'was registered already'}")
        if args.register_only:
            return 0
    try:
        server = DockerServer.get(config.server)
    except DoesNotExist:
        print(f"dispatcher: no server {config.server!r}; register it with ./manage.py server-create", file=sys.stderr)
        return 2
    if server.state == "stopping":
        print(f"dispatcher: server {server.name!r} is being retired (state stopping); not serving it", file=sys.stderr)
        return RETIRED
    url = config.docker_url or server.url
    slots = int(config.slots or server.slots)
    try:
        client = docker_ssh.docker_api(
            url,
            timeout=60,
            max_pool_size=slots * 2 + 4,
            ssh_identity=config.ssh_identity,
            ssh_known_hosts=config.ssh_known_hosts,
        )
    except docker.errors.DockerException as e:
        print(f"dispatcher: cannot reach the Docker engine at {url}: {e}", file=sys.stderr)
        return 1
    holder = take_server(server, config.instance, watch_s=2 * config.heartbeat_s + 1)
    if holder:
        print(
            f"dispatcher: server {server.name!r} is served by a live dispatcher ({holder}: host, pid, id); "
            "stop it first (its heartbeat moves)",
            file=sys.stderr,
        )
        return 3
    spool = Path(config.spool_dir)
    watchdog.keep_running(spool, url, every_s=config.heartbeat_s)
    runner = Runner(
        client,
        server.name,
        spool=spool,
        runtime=server.runtime,
        user=config.user,
        tmp_mb=config.tmp_mb,
        nofile=config.nofile,
        pool_size=pool.default_size(slots) if config.pool_size is None else config.pool_size,
    )
    metrics = Metrics()
    runner.pool.on_take = metrics.pool_take
    dispatcher = Dispatcher(settings, config, server, runner, metrics=metrics)
    if metrics.serve(config.metrics_port):
        print(f"dispatcher: metrics on http://127.0.0.1:{metrics.port}/metrics", file=sys.stderr)
    dispatcher.install_signal_handlers()
    dispatcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
