"""A scripted HTTP server on 127.0.0.1 for the client's fast tests: real sockets, no real API.

Each test queues the answers the "API" gives, in order, and reads back the
requests it got.  The client's behaviour at the HTTP level -- retries,
backoff, timeouts, error mapping, pagination, long-polls -- is exercised over
a real connection; the tests against the real stack are in
``tests/integration/test_client.py``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

APP_ID = "0123456789abcdef"
SECRET = "s3cret-s3cret-s3cret"


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeAPI:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests: list[Seen] = []
        self.tails: list[tuple[str, str, int]] = []  # the live tail's calls (answered apart from the script)
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                if url.path.endswith("/logs"):
                    return self._tail(url.path, parse_qs(url.query))
                with api.lock:
                    api.requests.append(
                        Seen(self.command, url.path, parse_qs(url.query), dict(self.headers.items()), body)
                    )
                    answer = api.answers.pop(0) if api.answers else Answer(500, {"Code": "X", "Message": "no answer"})
                if answer.delay:
                    time.sleep(answer.delay)
                payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    headers = {"Content-Type": "application/json", **answer.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def _tail(self, path: str, query: dict[str, list[str]]) -> None:
                """The live tail, as the API answers it once the sandbox has settled: the text of the
                first finished sandbox still to be answered, all at once."""
                stream = query.get("stream", ["logs"])[0]
                offset = int(query.get("offset", ["0"])[0])
                with api.lock:
                    api.tails.append((path, stream, offset))
                    final = next(
                        (a.body for a in api.answers if isinstance(a.body, dict) and a.body.get("finished_at")), {}
                    )
                text = (final.get("stdout") or "") + (final.get("stderr") or "") if stream == "logs" else ""
                text = text or final.get(stream) or ""
                data = text.encode()[offset:]
                body = json.dumps({"data": data.decode(), "offset": offset, "next": offset + len(data), "done": True})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def then(self, status: int = 200, body: Any = None, **kwargs: Any) -> FakeAPI:
        self.answers.append(Answer(status, body, **kwargs))
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sandbox_json(sandbox_id: str = "a326efb1fe1f980a", status: str = "terminated", **fields: Any) -> dict[str, Any]:
    """A sandbox as the API shows it."""
    finished = status in ("terminated", "error", "cancelled")
    data: dict[str, Any] = {
        "id": sandbox_id,
        "status": status,
        "image": "base",
        "cmd": '["python test.py"]',
        "return_code": 0 if status == "terminated" else None,
        "logs": "hello opendevelop!\n" if status == "terminated" else None,
        "stdout": "hello opendevelop!\n" if status == "terminated" else None,
        "stderr": None,
        "timeout": 10.0,
        "limits": {"timeout": 10.0, "memory_mb": 256, "cpus": 1.0, "pids": 128, "disk_mb": 64, "output_kb": 64},
        "timed_out": False,
        "oom_killed": False,
        "output_truncated": False,
        "error": None,
        "files": 1,
        "created_at": "2026-01-02T03:04:05.000006Z",
        "started_at": "2026-01-02T03:04:05.5Z" if finished else None,
        "finished_at": "2026-01-02T03:04:06Z" if finished else None,
        "duration_ms": 500 if finished else None,
        "server": "local",
    }
    data.update(fields)
    return data
