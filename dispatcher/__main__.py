"""``python -m dispatcher --server NAME``: serve one Docker server's queue until stopped.

SIGTERM or Ctrl-C once: a warm stop (take no new work, finish what runs).
Twice: a cold stop (kill the running containers and hand their sandboxes back).
"""

from __future__ import annotations

import argparse
import sys

import docker
from pynamodb.exceptions import DoesNotExist

from chalicelib import logs, models
from chalicelib.models import DockerServer
from chalicelib.settings import Settings, SettingsError
from dispatcher import pool, remote
from dispatcher.runner import Runner
from dispatcher.settings import DispatcherSettings
from dispatcher.worker import Dispatcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dispatcher", description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="the Docker server's name (env OPENDEVELOP_SERVER)")
    parser.add_argument("--slots", type=int, help="sandboxes run at once (default: the server's slots)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        settings = Settings.from_env(require_hmac_key=False)  # it never checks app secrets
        config = DispatcherSettings.from_env(server=args.server, slots=args.slots)
    except SettingsError as e:
        print(f"dispatcher: configuration: {e}", file=sys.stderr)
        return 2
    models.configure(settings)
    try:
        server = DockerServer.get(config.server)
    except DoesNotExist:
        print(f"dispatcher: no server {config.server!r}; register it with ./manage.py server-create", file=sys.stderr)
        return 2
    url = config.docker_url or server.url
    slots = int(config.slots or server.slots)
    try:
        client = remote.docker_api(
            url,
            timeout=60,
            max_pool_size=slots * 2 + 4,
            ssh_identity=config.ssh_identity,
            ssh_known_hosts=config.ssh_known_hosts,
        )
    except docker.errors.DockerException as e:
        print(f"dispatcher: cannot reach the Docker engine at {url}: {e}", file=sys.stderr)
        return 1
    runner = Runner(
        client,
        server.name,
        runtime=server.runtime,
        user=config.user,
        tmp_mb=config.tmp_mb,
        nofile=config.nofile,
        pool_size=pool.default_size(slots) if config.pool_size is None else config.pool_size,
    )
    dispatcher = Dispatcher(settings, config, server, runner)
    dispatcher.install_signal_handlers()
    dispatcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
