"""What a container reads on its stdin: header, command (environment first), tar, then the program's stdin."""

from __future__ import annotations

import subprocess

from dispatcher.attach import stdin_for
from dispatcher.container import PROLOGUE
from dispatcher.engine import RunSpec


def spec(cmd: list[str], env: dict[str, str] | None = None, files_bytes: int = 0) -> RunSpec:
    return RunSpec("s1", "base", cmd, 10, 256, 1.0, 64, 64, 1024, files_bytes=files_bytes, env=env or {})


def test_the_header_counts_the_command_and_the_tar():
    data = stdin_for(spec(["echo a", "echo b"], files_bytes=3), b"TARrest")
    header, rest = data.split(b"\n", 1)
    tar_bytes, cmd_bytes = map(int, header.split())
    assert (tar_bytes, rest[:cmd_bytes], rest[cmd_bytes:]) == (3, b"echo a && echo b", b"TARrest")


def test_the_prologue_runs_the_command_with_the_environment_and_leaves_stdin_to_it(tmp_path):
    env = {"GREETING": 'it\'s $HOME `id` "quoted"\nsecond line', "EMPTY": ""}
    command = 'printf "%s|" "$GREETING" "$EMPTY"; cat'
    data = stdin_for(spec([command], env), b"the program's own stdin")
    # The prologue as the container runs it, minus the unpacking (no files) and with a writable folder.
    script = PROLOGUE.replace("/sandbox", str(tmp_path))
    out = subprocess.run(["/bin/sh", "-c", script], input=data, capture_output=True, check=True).stdout
    assert out == b"it's $HOME `id` \"quoted\"\nsecond line||the program's own stdin"
