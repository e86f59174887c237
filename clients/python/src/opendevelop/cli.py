"""``opendevelop``: the command line.

    opendevelop run main.py data.csv --image base -- python main.py
    opendevelop images | ls | show ID | cancel ID

``run`` uploads the files, waits for the program (a status line on stderr
while it does, when stderr is a terminal), then prints the program's stdout
to stdout and its stderr to stderr, as they were, and exits with the
program's exit status.  When the program did not end on its own:

* 124: killed at its time limit (as ``timeout(1)`` exits);
* 137: killed for using more memory than its limit (128 + SIGKILL);
* 125: the sandbox did not run to its end for another reason (the platform
  failed, it was cancelled) or ``run`` could not start it (bad credentials,
  server unreachable, request refused);
* 130: interrupted with Ctrl-C (the sandbox is cancelled).

Each comes with a message on stderr saying which.  The other commands exit 0,
or 1 with a message.  Usage errors exit 2.

Connection settings: ``--url``/``--app-id``/``--secret``, else
``OPENDEVELOP_URL`` (default ``http://127.0.0.1:8000``),
``OPENDEVELOP_APP_ID``, ``OPENDEVELOP_SECRET``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from opendevelop import errors
from opendevelop.client import Client
from opendevelop.files import upload_name
from opendevelop.models import Sandbox

EXIT_TIMED_OUT = 124
EXIT_NOT_RUN = 125
EXIT_OOM = 137
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
LIMIT_FLAGS = ("memory_mb", "cpus", "pids", "disk_mb", "output_kb", "artifacts_kb")


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args:  # everything after the first `--` is the program's command line, untouched
        at = args.index("--")
        args, command = args[:at], args[at + 1 :]
    parser = _parser()
    options = parser.parse_args(args)
    if options.command is None:
        parser.print_help(sys.stderr)
        return 2
    failure = EXIT_NOT_RUN if options.command == "run" else EXIT_FAILED
    try:
        if options.command != "run" and command:
            raise UsageError(f"{options.command} takes no command after --")
        client = Client(
            getattr(options, "url", None),
            getattr(options, "app_id", None),
            getattr(options, "secret", None),
            timeout=getattr(options, "http_timeout", 30.0),
        )
        handler = {"run": _run, "images": _images, "ls": _ls, "show": _show, "cancel": _cancel, "usage": _usage}[
            options.command
        ]
        return int(handler(client, options, command))
    except UsageError as e:
        parser.error(str(e))
        return 2  # parser.error exits; this line is for the type checker
    except errors.UnauthorizedError as e:
        _say(
            f"the server refused the credentials ({e.message}); check OPENDEVELOP_APP_ID and "
            "OPENDEVELOP_SECRET (or --app-id and --secret)"
        )
    except errors.ConfigurationError as e:
        hints = {
            "app_id": "no app id: set OPENDEVELOP_APP_ID or pass --app-id (`make dev` prints the demo app's)",
            "secret": "no app secret: set OPENDEVELOP_SECRET or pass --secret",
        }
        _say(hints.get(e.setting, e.message))
    except errors.UnreachableError as e:
        _say(f"{e.message}; is it running, and is OPENDEVELOP_URL (or --url) right?")
    except errors.OpenDevelopError as e:
        _say(str(e))
    except (OSError, ValueError, TypeError) as e:  # a file that cannot be read, a bad --env
        _say(str(e))
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    return failure


def _parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    # SUPPRESS: given before or after the command, either works, and the later one wins.
    group.add_argument("--url", default=argparse.SUPPRESS, help="API URL (OPENDEVELOP_URL; http://127.0.0.1:8000)")
    group.add_argument("--app-id", default=argparse.SUPPRESS, help="app id (OPENDEVELOP_APP_ID)")
    group.add_argument("--secret", default=argparse.SUPPRESS, help="app secret (OPENDEVELOP_SECRET)")
    group.add_argument("--http-timeout", type=float, default=argparse.SUPPRESS, help="seconds for each request (30)")
    parser = argparse.ArgumentParser(
        prog="opendevelop",
        description="Run code in OpenDevelop's sandboxes.",
        epilog="run exits with the program's status; 124 timed out, 137 out of memory, 125 not run "
        "(platform error, cancelled, or refused), 130 interrupted.",
        parents=[connection],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[connection],
        help="upload files, run a command, print its output, exit with its status",
        usage="opendevelop run [FILE ...] [options] [-- COMMAND [ARG ...]]",
        description="Upload FILEs (files or folders), run COMMAND in the folder holding them, print its "
        "stdout and stderr and exit with its status. Without a COMMAND the first FILE is run: with the image "
        "that claims its extension (main.go: go) and that image's run template, as stderr says.",
    )
    run.add_argument("files", nargs="*", metavar="FILE", help="files or folders to upload")
    run.add_argument(
        "--image",
        help="image (see `opendevelop images`); default: with a command, base; without one, the image that "
        "claims the first FILE's extension",
    )
    run.add_argument("--timeout", type=float, help="the program's time limit, in seconds")
    for name in LIMIT_FLAGS:
        run.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, help=f"limit {name}")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable")
    run.add_argument("--stdin", metavar="FILE", help="give the program this file (- for this stdin) as its stdin")
    run.add_argument("--network", action="store_true", help="network access (if the app may have it)")
    run.add_argument("--callback", metavar="URL", help="POST the finished sandbox to URL (a signed webhook)")
    run.add_argument("--cmd", action="append", default=[], help="a shell command line (instead of -- COMMAND)")
    run.add_argument("--download", metavar="DIR", help="write the files the program left in out/ into DIR")
    run.add_argument("--json", action="store_true", help="print the finished sandbox as JSON instead")
    run.add_argument("-q", "--quiet", action="store_true", help="no status line while waiting")

    images = commands.add_parser("images", parents=[connection], help="the images a sandbox may use")
    images.add_argument("-l", "--long", action="store_true", help="with language, version, extensions, run template")
    images.add_argument("--json", action="store_true", help="one JSON object per image")
    usage = commands.add_parser("usage", parents=[connection], help="the app's sandboxes now, today's use, its quotas")
    usage.add_argument("--json", action="store_true", help="the API's answer as JSON")
    ls = commands.add_parser("ls", parents=[connection], help="the app's sandboxes, newest first")
    ls.add_argument("-n", "--limit", type=int, default=50, help="show at most N (0: all; default 50)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = commands.add_parser("show", parents=[connection], help="one sandbox, with its output")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the API's JSON")
    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a sandbox that has not finished")
    cancel.add_argument("id")
    return parser


# Commands


def _run(client: Client, options: argparse.Namespace, command: list[str]) -> int:
    if command and options.cmd:
        raise UsageError("give the command either after -- or with --cmd, not both")
    # One word after `--` is a shell command line as written (`-- 'python main.py | sort'`); several are
    # the program's arguments, each kept whole however it is spelled (`-- python main.py "my file.csv"`).
    cmd = ([command[0]] if len(command) == 1 else [shlex.join(command)]) if command else list(options.cmd)
    image = options.image or "base"
    if not cmd:
        image, line = _choose(client, options.files, options.image, quiet=options.quiet)
        cmd = [line]
    env = {}
    for item in options.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    stdin = None
    if options.stdin is not None:
        stdin = sys.stdin.buffer.read() if options.stdin == "-" else open(options.stdin, "rb").read()  # noqa: SIM115
    limits = {name: getattr(options, name) for name in LIMIT_FLAGS if getattr(options, name) is not None}
    progress = Progress(sys.stderr, enabled=not options.quiet and not options.json and sys.stderr.isatty())

    progress.say("uploading")
    sandbox = client.create(
        cmd,
        options.files,
        image=image,
        timeout=options.timeout,
        stdin=stdin,
        env=env or None,
        network=True if options.network else None,
        callback_url=options.callback,
        **limits,
    )
    printed: set[str] = set()
    try:
        if not options.json:
            progress.clear()
            progress.enabled = False  # the output itself shows it runs
            printed = _print_live(client, sandbox.id)
        # On a terminal, short polls keep the status line current; otherwise one long-poll after another.
        sandbox = client.wait(sandbox.id, poll=1 if progress.enabled else 20, on_update=progress.update)
    except KeyboardInterrupt:
        progress.clear()
        try:
            client.cancel(sandbox.id)
            _say(f"interrupted: sandbox {sandbox.id} cancelled")
        except errors.OpenDevelopError as e:
            _say(f"interrupted; sandbox {sandbox.id} was not cancelled ({e})")
        return EXIT_INTERRUPTED
    progress.clear()
    if options.download is not None and sandbox.status == "terminated":
        written = client.download(sandbox.id, options.download)
        if not options.quiet and not options.json:
            _say(f"{len(written)} artifact{'' if len(written) == 1 else 's'} written to {options.download}")
        if sandbox.artifacts_truncated:
            _say(
                f"some artifacts were dropped at {sandbox.limits.get('artifacts_kb', '?')} KiB (the artifacts_kb limit)"
            )
    if options.json:
        _write(sys.stdout, json.dumps(sandbox.raw, indent=2) + "\n")
        return _exit_status(sandbox, quiet=True)
    if "stdout" not in printed:
        _write(sys.stdout, sandbox.stdout)
    if "stderr" not in printed:
        _write(sys.stderr, sandbox.stderr)
    return _exit_status(sandbox)


def _choose(client: Client, files: list[str], wanted: str | None, quiet: bool) -> tuple[str, str]:
    """The image and command line that run the first FILE, when no command was given; said on stderr."""
    program = next((f for f in files if os.path.isfile(f)), None)
    if program is None:
        raise UsageError(
            "what should run? Name a program file (opendevelop run main.go) or put the command after --, "
            "e.g. opendevelop run main.py -- python main.py"
        )
    name = upload_name(Path(program))
    if wanted:
        chosen = client.image(wanted)
        if not chosen.run:
            raise UsageError(f"image {wanted!r} does not say how to run a file: put the command after --")
    else:
        images = client.images(detail=True)
        claiming = [i for i in images if i.claims(name)]
        ext = os.path.splitext(name)[1] or name
        if not claiming:
            known = sorted({e for i in images for e in i.extensions})
            raise UsageError(
                f"no image claims {ext} files ({', '.join(known) or 'none claims any'}); "
                f"choose one with --image and put the command after --"
            )
        if len(claiming) > 1:
            names = ", ".join(i.name for i in claiming)
            raise UsageError(f"several images claim {ext} files ({names}); choose one with --image")
        chosen = claiming[0]
    line = chosen.command_for(name)
    if not quiet:
        about = " ".join(x for x in (chosen.language, chosen.version) if x)
        _say(f"running {name} with image {chosen.name}{f' ({about})' if about else ''}: {line}")
    return chosen.name, line


def _print_live(client: Client, sandbox_id: str) -> set[str]:
    """Print stdout and stderr to our own as they come, until the sandbox settles; the streams printed whole.

    stdout is followed here (so Ctrl-C lands here), stderr by a second thread.  A
    stream the API cannot follow (an older API) is printed from the finished
    sandbox instead.
    """
    done: set[str] = set()

    def follow(stream: str, out: IO[str]) -> None:
        try:
            for chunk in client.stream(sandbox_id, stream):
                _write(out, chunk)
        except errors.OpenDevelopError:
            return
        done.add(stream)

    other = threading.Thread(target=follow, args=("stderr", sys.stderr), daemon=True)
    other.start()
    follow("stdout", sys.stdout)
    other.join()
    return done


def _exit_status(sandbox: Sandbox, quiet: bool = False) -> int:
    """The program's exit status, or one of ours (with a message saying which) when it did not end on its own."""
    say = (lambda message: None) if quiet else _say
    if sandbox.output_truncated:
        say(f"the output was cut at {sandbox.limits.get('output_kb', '?')} KiB per stream (the output_kb limit)")
    if sandbox.status == "terminated":
        if sandbox.timed_out:
            say(f"the program was killed at its time limit of {sandbox.timeout:g} s (sandbox {sandbox.id})")
            return EXIT_TIMED_OUT
        if sandbox.oom_killed:
            memory = sandbox.limits.get("memory_mb", "?")
            say(f"the program was killed for using more than {memory} MiB of memory (sandbox {sandbox.id})")
            return EXIT_OOM
        return int(sandbox.return_code or 0) & 0xFF
    if sandbox.status == "error":
        say(f"the platform could not run sandbox {sandbox.id}: {sandbox.error or 'no reason given'}")
    else:
        say(f"sandbox {sandbox.id} was {sandbox.status}")
    return EXIT_NOT_RUN


def _images(client: Client, options: argparse.Namespace, command: list[str]) -> int:
    if not (options.long or options.json):
        for name in client.images():
            print(name)
        return 0
    images = client.images(detail=True)
    if options.json:
        for image in images:
            print(json.dumps(image.raw))
        return 0
    table = [("NAME", "LANGUAGE", "VERSION", "EXTENSIONS", "RUN")]
    table += [(i.name, i.language, i.version, " ".join(i.extensions), i.run) for i in images]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def _usage(client: Client, options: argparse.Namespace, command: list[str]) -> int:
    usage = client.usage()
    if options.json:
        print(json.dumps(usage))
        return 0
    limits = usage["limits"]

    def limit(name: str, unit: str = "") -> str:
        return f"{limits[name]}{unit}" if limits[name] else "no limit"

    print(f"running       {usage['running']}")
    print(f"queued        {usage['queued']}  (at once: {limit('concurrency')})")
    print(f"today         {usage['today']['sandboxes']} sandboxes  (per minute: {limit('rate')})")
    print(f"run seconds   {usage['today']['run_seconds']}  (per day: {limit('daily_seconds', ' s')})")
    return 0


def _ls(client: Client, options: argparse.Namespace, command: list[str]) -> int:
    limit = options.limit if options.limit > 0 else None
    page = min(limit or 100, 100)
    rows = list(itertools.islice(client.sandboxes(page_size=page), limit))
    if options.json:
        for sandbox in rows:
            print(json.dumps(sandbox.raw))
        return 0
    table = [("ID", "STATUS", "CODE", "CREATED", "IMAGE", "COMMAND")]
    for s in rows:
        created = s.created_at.strftime("%Y-%m-%d %H:%M:%S") if s.created_at else ""
        code = "" if s.return_code is None else str(s.return_code)
        status = "timed out" if s.timed_out else "oom" if s.oom_killed else s.status
        cmd = " && ".join(s.cmd)
        table.append((s.id, status, code, created, s.image, cmd if len(cmd) <= 60 else cmd[:57] + "..."))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def _show(client: Client, options: argparse.Namespace, command: list[str]) -> int:
    s = client.sandbox(options.id)
    if options.json:
        print(json.dumps(s.raw, indent=2))
        return 0
    flags = [name for name in ("timed_out", "oom_killed", "output_truncated") if getattr(s, name)]
    fields = [
        ("id", s.id),
        ("status", s.status),
        ("return code", "" if s.return_code is None else str(s.return_code)),
        ("flags", ", ".join(flags)),
        ("error", s.error or ""),
        ("image", s.image),
        ("command", " && ".join(s.cmd)),
        ("files", str(s.files)),
        ("limits", " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in s.limits.items())),
        ("created", s.created_at.isoformat() if s.created_at else ""),
        ("started", s.started_at.isoformat() if s.started_at else ""),
        ("finished", s.finished_at.isoformat() if s.finished_at else ""),
        ("duration", "" if s.duration_ms is None else f"{s.duration_ms} ms"),
        ("server", s.server or ""),
    ]
    for name, value in fields:
        if value:
            print(f"{name:<12} {value}")
    for name, text in (("stdout", s.stdout), ("stderr", s.stderr)):
        if text:
            print(f"--- {name} ---")
            _write(sys.stdout, text if text.endswith("\n") else text + "\n")
    return 0


def _cancel(client: Client, options: argparse.Namespace, command: list[str]) -> int:
    try:
        sandbox = client.cancel(options.id)
    except errors.ConflictError:
        current = client.sandbox(options.id)
        _say(f"sandbox {current.id} has already finished ({current.status}); nothing to cancel")
        return EXIT_FAILED
    print(f"{sandbox.id} {sandbox.status}")
    return 0


# Output


def _say(message: str) -> None:
    print(f"opendevelop: {message}", file=sys.stderr, flush=True)


def _write(stream: IO[str], text: str) -> None:
    """The program's output byte for byte (as UTF-8), whatever this terminal's encoding."""
    if not text:
        return
    stream.flush()
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(text.encode("utf-8", errors="replace"))
        buffer.flush()
    else:
        stream.write(text)
        stream.flush()


class Progress:
    """One status line on a terminal, rewritten in place; nothing at all when stderr is not a terminal."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self.shown = False

    def say(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\x1b[Kopendevelop: {text} ({time.monotonic() - self.started:.0f} s)")
            self.stream.flush()
            self.shown = True

    def update(self, sandbox: Sandbox) -> None:
        self.say(f"sandbox {sandbox.id} {sandbox.status}")

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


if __name__ == "__main__":  # pragma: no cover - `python -m opendevelop.cli`
    sys.exit(main())
