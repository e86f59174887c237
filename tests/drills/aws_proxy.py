"""An AWS endpoint that fails on demand, per service: a proxy in front of moto, one per platform process.

    python tests/drills/aws_proxy.py LISTEN_PORT TARGET_PORT

Each platform process of a drill stack (a dispatcher, the reconciler) gets its
own, so one process can be cut off while the others are not.  The proxy reads
each request's head, tells its service from the SigV4 credential scope
(``Credential=<key>/<date>/<region>/<service>/aws4_request``: ``dynamodb``,
``sqs``, ``s3``) and its action from ``X-Amz-Target`` (DynamoDB, SQS) or the
method (S3), then applies the first matching fault rule:

* ``refuse``: the connection is reset at once, as an unreachable endpoint's;
* ``hang``: the request is held without an answer (a partition: the caller's
  timeouts fire); held connections are cut when the rule is lifted;
* ``fail``: an HTTP 503 ``ServiceUnavailable`` in the service's own shape.

Anything else is forwarded byte for byte.  So ``AWS_ENDPOINT_URL`` alone is
enough to cut one service of one process: the platform needs no per-service
endpoint for the drills (boto3's ``AWS_ENDPOINT_URL_<SERVICE>`` would do the
same once the settings honour it).

Control, on the same port (requests under ``/__drill__/``, never forwarded):
``POST /__drill__/fault?service=S&mode=M[&action=A][&contains=TEXT]`` adds a
rule (``service=*`` for every service), ``POST /__drill__/clear`` lifts them
all, ``GET /__drill__/stats`` answers ``{"requests": {"sqs:SendMessage": n,
...}, "faulted": {...}}`` counted since the start, and
``GET /__drill__/timeline?since=EPOCH`` every request's time and kind.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SCOPE = re.compile(rb"Credential=[^/,\s]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")
HEAD_LIMIT = 64 * 1024


@dataclass
class Rule:
    service: str
    mode: str  # refuse | hang | fail
    action: str = ""
    contains: bytes = b""

    def matches(self, service: str, action: str, body: bytes) -> bool:
        return (
            self.service in ("*", service)
            and (not self.action or self.action == action)
            and (not self.contains or self.contains in body)
        )


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.rules: list[Rule] = []
        self.requests: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.held: set[asyncio.StreamWriter] = set()
        self.timeline: list[tuple[float, str]] = []  # (time, "service:action") of every request

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pump: asyncio.Task[None] | None = None
        answered = False  # a 503 of ours went out: close gently, so the caller reads it before the end
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                expect = headers.get("expect", "").lower() == "100-continue"
                # A body announced with Expect: 100-continue comes only once the server says so.
                body = b"" if expect or chunked else await reader.readexactly(length)
                if target.startswith("/__drill__/"):
                    await self.control(method, target, writer)
                    continue
                match = SCOPE.search(headers.get("authorization", "").encode())
                service = match.group(1).decode() if match else "other"
                action = headers.get("x-amz-target", "").rsplit(".", 1)[-1] if "x-amz-target" in headers else method
                key = f"{service}:{action}"
                self.requests[key] += 1
                self.timeline.append((time.time(), key))
                rule = next((r for r in self.rules if r.matches(service, action, body)), None)
                if rule is not None:
                    self.faulted[f"{key}:{rule.mode}"] += 1
                    answered = await self.apply(rule, service, writer)
                    return
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
                    pump = asyncio.create_task(_pump(upstream[0], writer))
                upstream[1].write(head + body)
                if chunked:  # no framing to follow any more: the rest of the connection goes through as it is
                    await _pump(reader, upstream[1])
                    return
                if expect and length:
                    await _copy(reader, upstream[1], length)
                await upstream[1].drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
            if upstream is not None:
                upstream[1].transport.abort()
            if answered:
                writer.close()
            else:
                writer.transport.abort()

    async def apply(self, rule: Rule, service: str, writer: asyncio.StreamWriter) -> bool:
        """Carry out a fault; True when an answer went out."""
        if rule.mode == "refuse":
            return False  # the caller aborts the connection
        if rule.mode == "hang":
            self.held.add(writer)
            try:
                while rule in self.rules and not writer.transport.is_closing():
                    await asyncio.sleep(0.1)
            finally:
                self.held.discard(writer)
            return False
        if service == "s3":
            body = b"<Error><Code>ServiceUnavailable</Code><Message>drill: s3 fails</Message></Error>"
            kind = b"application/xml"
        else:
            body = json.dumps({"__type": "ServiceUnavailable", "message": f"drill: {service} fails"}).encode()
            kind = b"application/x-amz-json-1.0"
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
            + kind
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        return True

    async def control(self, method: str, target: str, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        status, answer = "200 OK", {}
        if url.path == "/__drill__/fault" and method == "POST":
            rule = Rule(query["service"], query["mode"], query.get("action", ""), query.get("contains", "").encode())
            if rule.mode not in ("refuse", "hang", "fail"):
                status, answer = "400 Bad Request", {"error": f"unknown mode {rule.mode}"}
            else:
                self.rules.append(rule)
        elif url.path == "/__drill__/clear" and method == "POST":
            self.rules.clear()
        elif url.path == "/__drill__/timeline":
            since = float(query.get("since", "0"))
            answer = {"timeline": [entry for entry in self.timeline if entry[0] >= since]}
        elif url.path == "/__drill__/stats":
            answer = {"requests": dict(self.requests), "faulted": dict(self.faulted), "held": len(self.held)}
        else:
            status, answer = "404 Not Found", {"error": url.path}
        body = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> None:
    while count > 0:
        data = await reader.read(min(count, 65536))
        if not data:
            raise ConnectionError("closed mid-body")
        writer.write(data)
        await writer.drain()
        count -= len(data)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


async def main(listen_port: int, target_port: int) -> None:
    proxy = Proxy(target_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen_port, reuse_address=True, limit=HEAD_LIMIT)
    print("up", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
