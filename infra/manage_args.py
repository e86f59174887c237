"""The flags of manage.py's commands (manage.py holds the commands; this, what each one takes)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from chalicelib import admin
from chalicelib.validation import LIMIT_FIELDS

QUOTA_HELP = {
    "concurrency": "sandboxes queued or running at once (0: no limit)",
    "rate": "sandboxes created per minute (0: no limit)",
    "daily_seconds": "run seconds per UTC day; each sandbox reserves its timeout until it ends (0: no limit)",
}


def add_arguments(p: dict[str, argparse.ArgumentParser], root: Path) -> None:
    """Each command's own flags, on its subparser (``p[name]``); ``root`` is the checkout."""
    p["server-create"].add_argument("--name", required=True, help="the server's name")
    p["server-create"].add_argument(
        "--url", required=True, help="Docker API URL: unix:///var/run/docker.sock, tcp://h:p, ssh://user@h[:p]"
    )
    p["server-create"].add_argument("--buckets", default="", help="scratch folder on the server (informational)")
    p["server-create"].add_argument(
        "--slots", type=int, default=os.cpu_count() or 2, help="sandboxes run at once (default: this machine's cores)"
    )
    p["server-create"].add_argument("--runtime", default="runc", choices=admin.RUNTIMES)
    p["server-create"].add_argument("--network", action="store_true", help="allow sandboxes network access")
    p["server-create"].add_argument("--replace", action="store_true", help="overwrite a server of that name")
    for name in ("server-drain", "server-activate", "server-delete"):
        p[name].add_argument("--name", required=True)
    for name in ("server-bootstrap", "server-shutdown"):
        p[name].add_argument("--name", required=True, help="the server's name")
        p[name].add_argument("--ssh", required=True, metavar="USER@HOST[:PORT]", help="the host (key login)")
        p[name].add_argument("--identity", help="private key file (default: ~/.ssh's keys and the agent)")
        p[name].add_argument(
            "--known-hosts", help="known_hosts file holding the host's key (default ~/.ssh/known_hosts)"
        )
        p[name].add_argument("--prefix", default="/opt/opendevelop", help="install folder on the host")
    p["server-bootstrap"].add_argument("--slots", type=int, help="sandboxes run at once (default: the host's cores)")
    p["server-bootstrap"].add_argument("--runtime", default="runc", choices=admin.RUNTIMES)
    p["server-bootstrap"].add_argument("--network", action="store_true", help="allow sandboxes network access")
    p["server-bootstrap"].add_argument(
        "--env-file", help="NAME=value lines for the dispatcher's environment (e.g. its AWS access key)"
    )
    p["server-bootstrap"].add_argument(
        "--no-base-image", action="store_true", help="do not build the images (base and the catalogue) on the host"
    )
    p["server-bootstrap"].add_argument(
        "--wait", type=float, default=60, help="seconds to wait for the dispatcher's heartbeat (0: do not wait)"
    )
    p["server-bootstrap"].add_argument("--source", default=str(root), help=argparse.SUPPRESS)
    p["release-bundle"].add_argument("--out", default="opendevelop-release.tar.gz", help="the file to write")
    p["release-bundle"].add_argument("--source", default=str(root), help=argparse.SUPPRESS)
    p["user-create"].add_argument("--username", required=True)
    p["user-create"].add_argument("--email", required=True)
    p["user-create"].add_argument("--passwd", "--password", dest="passwd", required=True)
    p["user-create"].add_argument("--organization", action="store_true", help="an organization account")
    p["user-delete"].add_argument("--username", required=True)
    p["app-create"].add_argument("--app_name", "--app-name", "--name", dest="app_name", required=True)
    p["app-create"].add_argument("--username", required=True, help="the user that owns the app")
    p["app-create"].add_argument("--app_id", "--app-id", dest="app_id", help=argparse.SUPPRESS)
    p["app-create"].add_argument("--secret", help=argparse.SUPPRESS)
    p["app-list"].add_argument("--username")
    for name in ("app-create", "app-set-limits"):
        for limit in LIMIT_FIELDS:
            p[name].add_argument(f"--{limit}", f"--{limit.replace('_', '-')}", dest=limit, help=f"ceiling for {limit}")
    p["app-create"].add_argument("--network", action="store_true", help="sandboxes may ask for network access")
    p["app-set-limits"].add_argument("--network", action=argparse.BooleanOptionalAction, default=None)
    for quota, what in QUOTA_HELP.items():
        p["app-set-limits"].add_argument(f"--{quota}", f"--{quota.replace('_', '-')}", dest=quota, type=int, help=what)
    for name in ("app-set-limits", "app-usage", "app-rotate-secret", "app-rotate-webhook-secret", "app-delete"):
        p[name].add_argument("--app_id", "--app-id", dest="app_id", required=True)
    p["image-create"].add_argument("--name", required=True)
    p["image-create"].add_argument("--description", default="")
    p["image-create"].add_argument("--url", default="", help="the registry (docker index) URL")
    p["image-create"].add_argument(
        "--docker-image",
        "--docker_image",
        dest="docker_image",
        required=True,
        help="the Docker image reference, e.g. opendevelop/base:latest",
    )
    p["image-create"].add_argument("--disabled", action="store_true", help="register it disabled")
    p["image-create"].add_argument("--replace", action="store_true", help="overwrite an image of that name")
    p["image-build"].add_argument("--name", required=True, help="a recipe under infra/images/, or a new image")
    p["image-build"].add_argument(
        "--packages", help='a new image: Debian packages on top of --from, e.g. "jq bc" (writes its recipe)'
    )
    p["image-build"].add_argument("--from", dest="parent", default="base", help="what a new image is built on (base)")
    p["image-build"].add_argument("--description", help="a new image's description")
    p["image-build"].add_argument("--force", action="store_true", help="rebuild even if this recipe is built")
    p["image-build"].add_argument("--replace", action="store_true", help="overwrite a different recipe of that name")
    p["image-build"].add_argument("--no-smoke", action="store_true", help="do not run the recipe's smoke programs")
    p["image-build"].add_argument("--no-register", action="store_true", help="build only")
    for name in ("image-create", "image-build"):
        p[name].add_argument("--language", help="the language it runs, e.g. Go")
        p[name].add_argument("--version", help="the language's version (image-build measures it)")
        p[name].add_argument("--run", help="a command line for one file, e.g. 'go run {file}' ({file}, {stem})")
        p[name].add_argument("--extensions", help="the file extensions it claims, e.g. .cpp,.cc")
        p[name].add_argument(
            "--run-for", action="append", metavar="EXT=TEMPLATE", help="a run template for one of its extensions"
        )
    p["image-delete"].add_argument("--name", required=True)
