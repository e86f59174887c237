"""``make serve``'s front (nginx, ``infra/local/front.py``) against clients it does not know.

One ``make serve`` stack for the module; each test speaks raw sockets or HTTP to
its front on 127.0.0.1 and reads the API process's memory from ``/proc``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from .helpers import remove_containers
from .serve_stack import Serve

CONNS_PER_CLIENT = 8  # the stack's OPENDEVELOP_FRONT_CONNS, small so the limit is cheap to reach


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[Serve]:
    serve = Serve(tmp_path_factory.mktemp("front"), extra_env={"OPENDEVELOP_FRONT_CONNS": str(CONNS_PER_CLIENT)})
    try:
        serve.start()
        yield serve
    finally:
        serve.stop()
        remove_containers(docker_client, serve.server)


def _port(serve: Serve) -> int:
    return serve.ports["API"]


def _api_rss_kb(serve: Serve) -> int:
    """VmRSS of the API's process (``chalice local``)."""
    pids = [pid for pid, line in serve.processes().items() if "infra.local.chalice_local" in line]
    assert len(pids) == 1, serve.processes()
    for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw(serve: Serve, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; what comes back until the server closes it (or ``timeout``),
    and how long the first byte took (the whole wait when none came)."""
    started = time.monotonic()
    first = None
    with socket.create_connection(("127.0.0.1", _port(serve)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                first = first or time.monotonic() - started
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass  # nginx resets a connection whose unread body it gives up on
    return b"".join(chunks), first or time.monotonic() - started


def _timed_get(serve: Serve) -> float:
    assert serve.client is not None
    started = time.monotonic()
    response = serve.client.get("/api/images")
    assert response.status_code == 200, response.text
    return time.monotonic() - started


@pytest.mark.parametrize("method", ["TRACE", "FOO", "PUT", "PATCH"])
def test_a_method_the_api_does_not_route_is_405_in_json(front: Serve, method: str) -> None:
    response = requests.request(method, f"{front.url}/api/images", timeout=10)
    assert response.status_code == 405
    assert response.json()["Code"] == "MethodNotAllowedError"


def test_a_body_over_the_limit_is_refused_from_its_content_length_alone(front: Serve) -> None:
    from chalicelib.settings import Settings

    limit = Settings.from_env(front.env(), require_hmac_key=False).max_upload_bytes
    head = (
        f"POST /api/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {limit + 1}\r\n\r\n"
    )
    answer, took = _raw(front, head.encode(), timeout=10)  # no byte of the body is ever sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"Code": "RequestEntityTooLargeError"' in answer
    assert took < 2


def test_a_client_that_stops_sending_its_header_is_dropped(front: Serve) -> None:
    answer, took = _raw(front, b"GET /api/images HTTP/1.1\r\nHost: x\r\n", timeout=40)
    assert 8 < took < 30, f"dropped after {took:.1f} s"  # client_header_timeout is 10 s
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_slowloris_and_a_1_gb_declared_body_leave_other_clients_answered_within_1_s(front: Serve) -> None:
    _timed_get(front)  # warm
    rss_before = _api_rss_kb(front)
    idle: list[socket.socket] = []
    try:
        for n in range(1000):
            s = socket.create_connection(("127.0.0.1", _port(front)), timeout=10)
            # Half a request header, then nothing (a slowloris); each holds its socket open.
            s.sendall(b"GET /api/sandboxes HTTP/1.1\r\nHost: x\r\nX-Slow-%d: " % n)
            idle.append(s)
        big = socket.create_connection(("127.0.0.1", _port(front)), timeout=10)
        idle.append(big)
        big.sendall(
            b"POST /api/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n"  # 1 GB declared; not a byte of it sent
        )
        assert big.recv(200).startswith(b"HTTP/1.1 413")
        with ThreadPoolExecutor(4) as pool:
            times = list(pool.map(lambda _: _timed_get(front), range(20)))
        assert max(times) < 1.0, f"other clients waited up to {max(times):.2f} s: {sorted(times)}"
        rss_after = _api_rss_kb(front)
    finally:
        for s in idle:
            s.close()
    print(f"slowloris: slowest other client {max(times) * 1000:.0f} ms; API VmRSS {rss_before} -> {rss_after} kB")
    assert rss_after - rss_before < 20 * 1024, f"the API grew from {rss_before} kB to {rss_after} kB"


def test_requests_in_progress_per_client_are_limited(front: Serve) -> None:
    assert front.client is not None
    sandbox_id = front.client.submit(["sleep 25"], timeout="30")

    def hold(_: int) -> int:
        return front.client.get(f"/api/sandboxes/{sandbox_id}", params={"wait": "6"}).status_code  # type: ignore[union-attr]

    with ThreadPoolExecutor(CONNS_PER_CLIENT + 4) as pool:
        codes = list(pool.map(hold, range(CONNS_PER_CLIENT + 4)))
    assert codes.count(200) >= CONNS_PER_CLIENT - 1 and codes.count(503) >= 3, codes
    assert set(codes) <= {200, 503}, codes
    front.client.get(f"/api/sandboxes/{sandbox_id}")
    requests.delete(f"{front.url}/api/sandboxes/{sandbox_id}", auth=front.client.auth, timeout=10)


def test_the_front_speaks_tls_when_given_a_certificate(tmp_path: Path, docker_client: Any) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    serve = Serve(tmp_path, extra_env={"OPENDEVELOP_TLS_CERT": str(cert), "OPENDEVELOP_TLS_KEY": str(key)})
    try:
        client = serve.start()
        assert client.url.startswith("https://")
        response = requests.get(f"{client.url}/api/images", auth=client.auth, verify=str(cert), timeout=10)
        assert response.status_code == 200 and "base" in response.json()
        plain = requests.get(f"http://127.0.0.1:{serve.ports['API']}/api/images", timeout=5)
        assert plain.status_code == 400  # nginx: "the plain HTTP request was sent to HTTPS port"
    finally:
        serve.stop()
        remove_containers(docker_client, serve.server)
