"""Fixtures shared by the unit tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from infra.local.stack import ROOT, aws_command, free_port, wait_http


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment an in-process ``mock_aws()`` wants: fake credentials, one region, no real endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@dataclass(frozen=True)
class Endpoint:
    url: str
    pid: int


@pytest.fixture
def local_endpoint() -> Iterator[Endpoint]:
    """The stack's local AWS endpoint (``infra.local.moto_local``), a process of its own, on a free port."""
    port = free_port()
    server = subprocess.Popen(aws_command(port), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        wait_http(f"http://127.0.0.1:{port}/_opendevelop/calls", 30, server)
        yield Endpoint(f"http://127.0.0.1:{port}", server.pid)
    finally:
        server.kill()
        server.wait()
