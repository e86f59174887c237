"""docs/operating.md stays true: its commands parse, and the tests it names exist and run them.

Each ``sh`` block's commands are run by the tests the guide names next to it;
``sh-aws`` blocks (an AWS account or a registry needed) are the only exception.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operating.md"
TESTS = ROOT / "tests"

with pytest.MonkeyPatch.context() as _mp:
    _mp.setenv("OPENDEVELOP_NO_VENV", "1")  # importing manage must not re-execute this process
    import manage


def blocks(kind: str) -> list[list[str]]:
    """The command lines of every fenced block of ``kind`` (continuation lines joined, comments dropped)."""
    found = re.findall(rf"```{re.escape(kind)}\n(.*?)```", DOC.read_text(), flags=re.S)
    out = []
    for body in found:
        text = re.sub(r"\\\n\s*", " ", body)
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
        out.append([line for line in lines if line and not line.startswith("#")])
    return out


def commands_in_sh_blocks() -> list[str]:
    return [line for block in blocks("sh") for line in block]


def all_test_sources() -> str:
    return "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))


def test_the_guide_has_tested_and_aws_only_blocks_and_nothing_else() -> None:
    fences = re.findall(r"^\s*```(\S*)$", DOC.read_text(), flags=re.M)
    kinds = set(fences[0::2])  # opening fences
    assert kinds == {"sh", "sh-aws"}, kinds
    assert len(commands_in_sh_blocks()) >= 12


def test_every_manage_command_in_the_guide_parses_with_the_real_parser() -> None:
    commands = [line for line in commands_in_sh_blocks() if line.startswith("./manage.py")]
    assert commands
    sources = all_test_sources()
    for line in commands:
        argv = shlex.split(line)[1:]
        args = manage.parser().parse_args(argv)  # exits (fails the test) on an unknown command or flag
        assert f'"{args.command}"' in sources or f"{args.command} " in sources, f"no test runs {args.command}"


def test_the_other_commands_in_the_guide_are_ones_the_tests_run() -> None:
    makefile = (ROOT / "Makefile").read_text()
    ssh_tests = (TESTS / "integration" / "test_ssh.py").read_text()
    for line in commands_in_sh_blocks():
        word = shlex.split(line)[0]
        if word == "./manage.py":
            continue
        if word == "make":
            target = shlex.split(line)[1]
            assert re.search(rf"^{target}:", makefile, flags=re.M), line
            assert f'"{target}"' in (TESTS / "integration" / "test_package.py").read_text(), line
        elif word == "ssh-keyscan":
            assert '"ssh-keyscan"' in ssh_tests
        elif word == "tail":
            assert '/ "log" / "dispatcher.log"' in ssh_tests
        elif word == "curl":
            assert "/metrics" in line
            assert "opendevelop_runs_total" in (TESTS / "functional" / "test_operations.py").read_text()
        elif word.startswith("OPENDEVELOP_SSH_IDENTITY="):
            assert "OPENDEVELOP_SSH_IDENTITY" in ssh_tests and "-m dispatcher" in line
        else:
            pytest.fail(f"docs/operating.md: no test is known to run {line!r}")


def test_every_test_the_guide_names_exists() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b", text)) - {"test_package", "test_ssh", "test_manage"}
    named -= {"test_operating_doc", "test_deployed_settings", "test_scale_in", "test_operations"}
    assert len(named) >= 10
    sources = all_test_sources()
    for name in named:
        assert f"def {name}(" in sources, f"docs/operating.md names {name}, which no test defines"
    for path in re.findall(r"(tests/[a-z_/]+\.py)", text):
        assert (ROOT / path).is_file(), path
