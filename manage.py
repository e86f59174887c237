#!/usr/bin/env python3
"""OpenDevelop's admin command line, as in the original project.

    ./manage.py server-create --name=local --url=unix:///var/run/docker.sock --buckets=/var/tmp/opendevelop
    ./manage.py user-create --username=sourcelair --email=opendevelop@sourcelair.com --passwd=123 --organization
    ./manage.py app-create --app_name=myapp --username=sourcelair
    ./manage.py image-create --name=base --description="Debian + Python 3" --url="" \
        --docker-image=opendevelop/base:latest

It finds the project's virtualenv (.venv) by itself and, with no environment
set, talks to the local stack that ``make dev`` runs.  ``./manage.py -h`` and
``./manage.py COMMAND -h`` describe everything; ``--json`` prints JSON.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and os.environ.get("OPENDEVELOP_NO_VENV") != "1":
    if VENV_PYTHON.exists():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit(f"manage.py: no virtualenv at {ROOT / '.venv'}; run `make venv` (or `make dev`) first")

sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from chalicelib import admin, models  # noqa: E402
from chalicelib.errors import OpenDevelopError  # noqa: E402
from chalicelib.models import App, DockerServer, Image, User  # noqa: E402
from chalicelib.quotas import QUOTAS  # noqa: E402
from chalicelib.settings import Settings, SettingsError  # noqa: E402
from chalicelib.validation import LIMIT_FIELDS  # noqa: E402
from infra.manage_args import add_arguments  # noqa: E402

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, Settings], Any], str]] = {}


def command(name: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        COMMANDS[name] = (fn, help)
        return fn

    return register


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


@command("init", "create the stage's tables and bucket where missing")
def init(args: argparse.Namespace, settings: Settings) -> None:
    created = admin.init(settings)
    out(
        args,
        {"created_tables": created, "bucket": settings.bucket},
        f"tables ready ({len(created)} created), bucket {settings.bucket} ready",
    )


@command("server-create", "register a Docker server and create its queue")
def server_create(args: argparse.Namespace, settings: Settings) -> None:
    server = admin.server_create(
        settings, args.name, args.url, args.buckets, args.slots, args.runtime, args.network, replace=args.replace
    )
    out(args, admin.describe(server), f"server {server.name} registered ({server.url}), queue {server.queue_url}")


@command("server-list", "list Docker servers")
def server_list(args: argparse.Namespace, settings: Settings) -> None:
    rows = [admin.describe(s) for s in DockerServer.scan()]
    out(args, rows, table(rows, ["name", "url", "state", "runtime", "slots", "running", "last_heartbeat"]))


@command("server-drain", "stop sending new work to a server (in-flight work finishes)")
def server_drain(args: argparse.Namespace, settings: Settings) -> None:
    server = admin.server_set_state(args.name, "draining")
    out(args, admin.describe(server), f"server {server.name} is draining")


@command("server-activate", "let a drained or disabled server take work again")
def server_activate(args: argparse.Namespace, settings: Settings) -> None:
    server = admin.server_set_state(args.name, "active")
    out(args, admin.describe(server), f"server {server.name} is active")


@command("server-delete", "remove a Docker server and its queues")
def server_delete(args: argparse.Namespace, settings: Settings) -> None:
    admin.server_delete(settings, args.name)
    out(args, {"deleted": args.name}, f"server {args.name} deleted")


@command("status", "the operator's view: servers, their queues and load; queued, running and stuck work per app")
def status(args: argparse.Namespace, settings: Settings) -> None:
    from chalicelib import status as view

    data = view.gather(settings)
    out(args, data, view.as_text(data))


@command("server-bootstrap", "set up a Debian host over SSH as a Docker server and register it (idempotent)")
def server_bootstrap(args: argparse.Namespace, settings: Settings) -> None:
    from infra import hosts

    report = hosts.bootstrap(
        settings,
        args.name,
        hosts.SSHTarget.parse(args.ssh),
        identity=args.identity,
        known_hosts=args.known_hosts,
        prefix=args.prefix,
        slots=args.slots,
        runtime=args.runtime,
        network=args.network,
        env_file=args.env_file,
        base_image=not args.no_base_image,
        wait_s=args.wait,
        source=Path(args.source),
    )
    out(args, report.as_json(), report.as_text())


@command("server-shutdown", "stop a bootstrapped host's dispatcher (running sandboxes finish first)")
def server_shutdown(args: argparse.Namespace, settings: Settings) -> None:
    from infra import hosts

    target = hosts.SSHTarget.parse(args.ssh)
    done = hosts.shutdown(args.name, target, args.identity, args.known_hosts, args.prefix)
    out(args, {"server": args.name, "target": str(target), "result": done}, f"server {args.name} on {target}: {done}")


@command("release-bundle", "write the release bundle Auto Scaling hosts install at boot (upload it to S3)")
def release_bundle(args: argparse.Namespace, settings: Settings) -> None:
    from infra.hosts import bundle

    data = bundle.release_tar(Path(args.source))
    Path(args.out).write_bytes(data)
    sha = bundle.sha256(data)
    out(args, {"out": args.out, "bytes": len(data), "sha256": sha}, f"{args.out}: {len(data)} bytes, sha256 {sha}")


@command("user-create", "create a user")
def user_create(args: argparse.Namespace, settings: Settings) -> None:
    user = admin.user_create(args.username, args.email, args.passwd, args.organization)
    out(args, admin.describe(user), f"user {user.username} created")


@command("user-list", "list users")
def user_list(args: argparse.Namespace, settings: Settings) -> None:
    rows = [admin.describe(u) for u in User.scan()]
    out(args, rows, table(rows, ["username", "email", "organization", "created_at"]))


@command("user-delete", "delete a user (who owns no apps)")
def user_delete(args: argparse.Namespace, settings: Settings) -> None:
    admin.user_delete(args.username)
    out(args, {"deleted": args.username}, f"user {args.username} deleted")


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in LIMIT_FIELDS if getattr(args, name, None) is not None}


@command("app-create", "create an app; prints its id and secret (the secret only this once)")
def app_create(args: argparse.Namespace, settings: Settings) -> None:
    app, secret = admin.app_create(
        args.app_name,
        args.username,
        app_id=args.app_id,
        secret=args.secret,
        settings=settings,
        limits=_limits(args),
        network=args.network,
    )
    data = {**admin.describe(app), "secret": secret, "webhook_secret": app.webhook_secret}
    out(
        args,
        data,
        f"app {app.name} created\napp id: {app.app_id}\nsecret: {secret}\n"
        "(the secret is shown only now; ./manage.py app-rotate-secret makes a new one)\n"
        f"webhook secret: {app.webhook_secret}\n"
        "(verifies the app's webhooks; ./manage.py app-rotate-webhook-secret makes a new one)",
    )


@command("app-list", "list apps (of one user with --username)")
def app_list(args: argparse.Namespace, settings: Settings) -> None:
    rows_iter = App.by_owner.query(args.username) if args.username else App.scan()
    rows = [admin.describe(a) for a in rows_iter]
    out(args, rows, table(rows, ["app_id", "name", "owner", "limits", "created_at"]))


@command("app-set-limits", "set an app's ceilings (a request may not ask for more)")
def app_set_limits(args: argparse.Namespace, settings: Settings) -> None:
    app_quotas = {name: getattr(args, name) for name in QUOTAS if getattr(args, name, None) is not None}
    app = admin.app_set_limits(args.app_id, _limits(args), settings, network=args.network, app_quotas=app_quotas)
    out(
        args,
        admin.describe(app),
        f"app {app.app_id} limits: {json.dumps(app.limits)} quotas: {json.dumps(app.quotas or {})}",
    )


@command("app-usage", "an app's sandboxes running and queued, today's use, and its quotas")
def app_usage(args: argparse.Namespace, settings: Settings) -> None:
    usage = admin.app_usage(args.app_id, settings)
    limits = usage["limits"]
    out(
        args,
        usage,
        f"running: {usage['running']}  queued: {usage['queued']}\n"
        f"today: {usage['today']['sandboxes']} sandboxes, {usage['today']['run_seconds']} run seconds\n"
        f"limits: concurrency {limits['concurrency']}, rate {limits['rate']}/min, "
        f"daily_seconds {limits['daily_seconds']} (0: no limit)",
    )


@command("app-rotate-secret", "give an app a new secret (the old one stops working)")
def app_rotate_secret(args: argparse.Namespace, settings: Settings) -> None:
    app, secret = admin.app_rotate_secret(args.app_id, settings)
    out(args, {"app_id": app.app_id, "secret": secret}, f"app id: {app.app_id}\nsecret: {secret}")


@command("app-rotate-webhook-secret", "give an app a new webhook secret (whsec_...; the old one stops signing)")
def app_rotate_webhook_secret(args: argparse.Namespace, settings: Settings) -> None:
    app, secret = admin.app_rotate_webhook_secret(args.app_id)
    out(args, {"app_id": app.app_id, "webhook_secret": secret}, f"app id: {app.app_id}\nwebhook secret: {secret}")


@command("app-delete", "delete an app")
def app_delete(args: argparse.Namespace, settings: Settings) -> None:
    admin.app_delete(args.app_id)
    out(args, {"deleted": args.app_id}, f"app {args.app_id} deleted")


def _image_meta(args: argparse.Namespace) -> dict[str, Any]:
    """What --language, --version, --run, --extensions and --run-for say of an image (only those given)."""
    meta: dict[str, Any] = {k: getattr(args, k) for k in ("language", "version", "run", "extensions")}
    if args.run_for:
        by_ext = {}
        for item in args.run_for:
            ext, sep, template = item.partition("=")
            if not sep or not ext.strip():
                raise OpenDevelopError(f"--run-for {item!r}: expected EXT=TEMPLATE, e.g. '.c=gcc -o main {{file}}'")
            by_ext[ext.strip()] = template
        meta["run_by_extension"] = by_ext
    return {k: v for k, v in meta.items() if v is not None}


@command("image-create", "register an image sandboxes can use")
def image_create(args: argparse.Namespace, settings: Settings) -> None:
    image = admin.image_create(
        args.name,
        args.docker_image,
        args.description,
        args.url,
        enabled=not args.disabled,
        replace=args.replace,
        **_image_meta(args),
    )
    out(args, admin.describe(image), f"image {image.name} registered ({image.docker_image})")


@command("image-list", "list images")
def image_list(args: argparse.Namespace, settings: Settings) -> None:
    rows = [admin.describe(i) for i in Image.scan()]
    for row in rows if not args.json else []:
        row["extensions"] = " ".join(row.get("extensions") or [])
    out(args, rows, table(rows, ["name", "docker_image", "enabled", "language", "version", "extensions", "run"]))


@command("image-build", "build a catalogue image (or a new one from Debian packages) here, check it, register it")
def image_build(args: argparse.Namespace, settings: Settings) -> None:
    from infra.images import catalogue

    report = catalogue.image_build(
        settings,
        args.name,
        packages=args.packages,
        parent=args.parent,
        description=args.description,
        meta=_image_meta(args),
        replace=args.replace,
        force=args.force,
        register=not args.no_register,
        smoke=not args.no_smoke,
    )
    out(args, report, catalogue.report_text(report))


@command("image-delete", "delete an image")
def image_delete(args: argparse.Namespace, settings: Settings) -> None:
    admin.image_delete(args.name)
    out(args, {"deleted": args.name}, f"image {args.name} deleted")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="manage.py", description="OpenDevelop administration.")
    subs = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p: dict[str, argparse.ArgumentParser] = {}
    for name, (_, help_text) in COMMANDS.items():
        p[name] = subs.add_parser(name, help=help_text, description=help_text)
        p[name].add_argument("--json", action="store_true", help="print JSON")
    add_arguments(p, ROOT)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"manage.py: configuration: {e}", file=sys.stderr)
        return 2
    models.configure(settings)
    fn, _ = COMMANDS[args.command]
    try:
        fn(args, settings)
    except OpenDevelopError as e:
        print(f"manage.py {args.command}: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a transport error must read as one line, not a traceback
        name = type(e).__name__
        if "Connect" in name or "Endpoint" in name or "Timeout" in name:
            print(
                f"manage.py {args.command}: cannot reach the AWS endpoint "
                f"({settings.aws_endpoint_url or 'AWS'}); is the local stack running (make dev)?",
                file=sys.stderr,
            )
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
