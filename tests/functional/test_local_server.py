"""The local API server (``infra/local/chalice_local.py``) over a real socket on 127.0.0.1.

A body is refused on what it declares, before it is read (so before
authentication costs anything), and an idle connection is closed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from chalice import Chalice
from chalice.config import Config
from chalice.local import LocalDevServer

from infra.local import chalice_local


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setenv("OPENDEVELOP_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setattr(chalice_local.local.ChaliceRequestHandler, "timeout", 0.5)
    app = Chalice(app_name="probe")
    seen: list[int] = []

    @app.route("/api/sandboxes", methods=["POST"], content_types=["*/*"])
    def create() -> dict[str, int]:
        seen.append(len(app.current_request.raw_body or b""))
        return {"read": seen[-1]}

    dev = LocalDevServer(app, Config(chalice_stage="local"), "127.0.0.1", 0)
    # LocalDevServer.serve_forever's loop, polling for shutdown every 50 ms instead of 500.
    thread = threading.Thread(target=dev.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield dev.server.server_address[:2]
    dev.shutdown()
    thread.join(5)


def exchange(address: tuple[str, int], head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(head + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post_head(length: int | str) -> bytes:
    return (
        f"POST /api/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def test_a_declared_body_over_the_limit_is_a_413_without_reading_it(server):
    started = time.monotonic()
    answer = exchange(server, post_head(10**12))  # a terabyte claimed, nothing sent

    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["Code"] == "RequestEntityTooLargeError"
    assert time.monotonic() - started < 2


def test_a_body_within_the_limit_reaches_the_app(server):
    answer = exchange(server, post_head(10), b"0123456789")

    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"read": 10}


@pytest.mark.parametrize("length", ["-1", "ten", "1e3"])
def test_a_malformed_content_length_is_a_400(server, length):
    assert exchange(server, post_head(length)).startswith(b"HTTP/1.1 400")


def test_an_idle_connection_is_closed(server):
    with socket.create_connection(server, timeout=5) as s:
        s.sendall(b"POST /api/sandboxes HTTP/1.1\r\n")  # and then nothing
        started = time.monotonic()
        assert s.recv(1024) == b""  # the server hung up
        assert time.monotonic() - started < 3
