"""The client over HTTP, against a scripted API: requests sent, answers read, errors, retries, timeouts."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

import pytest
from fakeapi import APP_ID, SECRET, FakeAPI, sandbox_json

import opendevelop
from opendevelop import Client


def test_the_settings_default_from_the_environment(monkeypatch, fake):
    monkeypatch.setenv("OPENDEVELOP_URL", fake.url + "/")
    monkeypatch.setenv("OPENDEVELOP_APP_ID", APP_ID)
    monkeypatch.setenv("OPENDEVELOP_SECRET", SECRET)
    fake.then(200, ["base"])

    client = Client()

    assert client.images() == ["base"]
    assert client.url == fake.url
    expected = "Basic " + base64.b64encode(f"{APP_ID}:{SECRET}".encode()).decode()
    assert fake.requests[0].headers["Authorization"] == expected
    assert SECRET not in repr(client)


def test_the_url_defaults_to_the_local_stack(monkeypatch):
    monkeypatch.delenv("OPENDEVELOP_URL", raising=False)
    assert Client(app_id="a", secret="b").url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"app_id": "", "secret": "x"}, "app_id"),
        ({"app_id": "x", "secret": ""}, "secret"),
        ({"url": "ftp://x", "app_id": "x", "secret": "y"}, "url"),
        ({"app_id": "x", "secret": "y", "timeout": 0}, "timeout"),
    ],
)
def test_a_client_without_what_it_needs_says_what_is_missing(monkeypatch, kwargs, setting):
    monkeypatch.delenv("OPENDEVELOP_APP_ID", raising=False)
    monkeypatch.delenv("OPENDEVELOP_SECRET", raising=False)
    with pytest.raises(opendevelop.ConfigurationError) as caught:
        Client(**kwargs)
    assert caught.value.setting == setting


def test_create_sends_json_with_the_command_as_a_list_and_the_limits(client, fake, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    fake.then(201, sandbox_json(status="queued"), headers={"Location": "/api/sandboxes/a326efb1fe1f980a"})

    sandbox = client.create(
        "sh run.sh",
        {"run.sh": script, "data.bin": b"\xff\x00", "note.txt": "héllo"},
        image="base",
        timeout=5,
        stdin="input",
        env={"A": "1"},
        memory_mb=128,
        cpus=0.5,
    )

    assert sandbox.status == "queued" and not sandbox.finished
    sent = fake.requests[0]
    assert (sent.method, sent.path, sent.headers["Content-Type"]) == ("POST", "/api/sandboxes", "application/json")
    assert sent.json() == {
        "image": "base",
        "cmd": ["sh run.sh"],  # a list, so a line starting with "[" is never taken for JSON
        "timeout": 5,
        "stdin": "input",
        "env": {"A": "1"},
        "memory_mb": 128,
        "cpus": 0.5,
        "files": [
            {"name": "run.sh", "content": "echo hi\n", "encoding": "utf-8", "executable": True},
            {"name": "data.bin", "content": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64"},
            {"name": "note.txt", "content": "héllo", "encoding": "utf-8"},
        ],
    }


def test_a_sandbox_reads_as_typed_values(client, fake):
    fake.then(200, sandbox_json(stderr="warn\n"))

    sandbox = client.sandbox("a326efb1fe1f980a")

    assert sandbox.cmd == ["python test.py"]
    assert (sandbox.status, sandbox.return_code, sandbox.stdout, sandbox.stderr) == (
        "terminated",
        0,
        "hello opendevelop!\n",
        "warn\n",
    )
    assert sandbox.ok and sandbox.finished
    assert sandbox.created_at == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    assert sandbox.limits["memory_mb"] == 256 and sandbox.timeout == 10.0
    assert sandbox.raw["server"] == "local"


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"return_code": 1}, False),
        ({"return_code": 137, "oom_killed": True}, False),
        ({"return_code": 0, "timed_out": True}, False),
        ({"status": "error", "return_code": None, "error": "docker died"}, False),
        ({}, True),
    ],
)
def test_ok_means_the_program_ran_to_its_end_and_exited_0(fields, ok):
    assert opendevelop.Sandbox.from_json(sandbox_json(**fields)).ok is ok


def test_empty_outputs_are_empty_strings_not_none(client, fake):
    fake.then(200, sandbox_json(status="queued"))
    sandbox = client.sandbox("a326efb1fe1f980a")
    assert (sandbox.stdout, sandbox.stderr, sandbox.logs, sandbox.return_code) == ("", "", "", None)


def test_sandboxes_iterates_every_page_following_next(client, fake):
    fake.then(200, {"sandboxes": [sandbox_json("a1"), sandbox_json("a2")], "next": "c1"})
    fake.then(200, {"sandboxes": [sandbox_json("a3")], "next": None})

    ids = [s.id for s in client.sandboxes(page_size=2)]

    assert ids == ["a1", "a2", "a3"]
    assert [r.query for r in fake.requests] == [{"limit": ["2"]}, {"limit": ["2"], "cursor": ["c1"]}]


def test_run_creates_then_long_polls_until_the_sandbox_has_finished(client, fake):
    fake.then(201, sandbox_json(status="queued"))
    fake.then(200, sandbox_json(status="running"))
    fake.then(200, sandbox_json(status="terminated"))
    seen = []

    sandbox = client.run("python test.py", {"test.py": "print(1)\n"}, on_update=lambda s: seen.append(s.status))

    assert sandbox.ok and sandbox.stdout == "hello opendevelop!\n"
    assert [(r.method, r.path, r.query) for r in fake.requests[1:]] == [
        ("GET", "/api/sandboxes/a326efb1fe1f980a", {"wait": ["20"]}),
        ("GET", "/api/sandboxes/a326efb1fe1f980a", {"wait": ["20"]}),
    ]
    assert seen == ["queued", "running", "terminated"]


def test_wait_gives_up_after_max_wait_with_the_last_sandbox_seen(client, fake):
    for _ in range(5):
        fake.then(200, sandbox_json(status="running"), delay=0.1)

    with pytest.raises(opendevelop.WaitTimeoutError) as caught:
        client.wait("a326efb1fe1f980a", max_wait=0.3, poll=0.1)

    assert caught.value.sandbox.status == "running"
    assert 2 <= len(fake.requests) <= 5


def test_cancel_deletes_and_a_finished_sandbox_is_a_conflict(client, fake):
    fake.then(200, sandbox_json(status="cancelled"))
    fake.then(409, {"Code": "ConflictError", "Message": "sandbox 'x' has already finished (terminated)"})

    assert client.cancel("a326efb1fe1f980a").status == "cancelled"
    with pytest.raises(opendevelop.ConflictError) as caught:
        client.cancel("a326efb1fe1f980a")

    assert fake.requests[0].method == "DELETE"
    assert (caught.value.status, caught.value.code) == (409, "ConflictError")
    assert "already finished" in caught.value.message


def test_ids_are_quoted_into_the_path(client, fake):
    fake.then(404, {"Code": "NotFoundError", "Message": "no sandbox"})
    with pytest.raises(opendevelop.NotFoundError):
        client.sandbox("../images")
    assert fake.requests[0].path == "/api/sandboxes/..%2Fimages"


# Errors


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, opendevelop.BadRequestError),
        (401, opendevelop.UnauthorizedError),
        (404, opendevelop.NotFoundError),
        (409, opendevelop.ConflictError),
        (413, opendevelop.PayloadTooLargeError),
        (415, opendevelop.UnsupportedMediaTypeError),
        (500, opendevelop.ServerError),
    ],
)
def test_each_error_status_is_its_own_exception_carrying_the_apis_code_and_message(client, fake, status, cls):
    fake.then(status, {"Code": f"Code{status}", "Message": "timeout: must be a number"})

    with pytest.raises(cls) as caught:
        client.images()

    error = caught.value
    assert isinstance(error, opendevelop.OpenDevelopError)
    assert (error.status, error.code, error.message) == (status, f"Code{status}", "timeout: must be a number")
    assert str(error) == f"{status} Code{status}: timeout: must be a number"
    assert len(fake.requests) == 1  # not retried


def test_a_bad_request_names_the_field(client, fake):
    fake.then(400, {"Code": "BadRequestError", "Message": "memory_mb: 4096 is above the ceiling of 2048"})
    with pytest.raises(opendevelop.BadRequestError) as caught:
        client.create("true", memory_mb=4096)
    assert caught.value.field == "memory_mb"


def test_an_answer_that_is_not_the_apis_is_a_server_error_with_its_text(client, fake):
    fake.then(502, b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(opendevelop.ServerError) as caught:
        client.sandbox("abc")
    assert caught.value.status == 502 and "Bad Gateway" in caught.value.message


# Retries and timeouts


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried_with_backoff(client, fake, status):
    fake.then(status, {"Code": "X", "Message": "later"}).then(status, {"Code": "X", "Message": "later"})
    fake.then(201, sandbox_json(status="queued"))

    sandbox = client.create("true")  # safe to resend: the API stored nothing when it answered 429/503

    assert sandbox.status == "queued"
    assert [r.method for r in fake.requests] == ["POST", "POST", "POST"]
    assert fake.requests[0].body == fake.requests[2].body


def test_retry_after_is_honoured(fake):
    client = Client(fake.url, APP_ID, SECRET, backoff=0.001)
    fake.then(503, {"Code": "X", "Message": "later"}, headers={"Retry-After": "0.5"}).then(200, ["base"])

    started = time.monotonic()
    assert client.images() == ["base"]
    assert time.monotonic() - started >= 0.5


def test_retries_end_in_the_apis_error(fake):
    client = Client(fake.url, APP_ID, SECRET, retries=2, backoff=0.001)
    for _ in range(3):
        fake.then(503, {"Code": "ServiceUnavailableError", "Message": "no server can take work"})

    with pytest.raises(opendevelop.ServiceUnavailableError) as caught:
        client.images()

    assert caught.value.message == "no server can take work"
    assert len(fake.requests) == 3


def test_over_quota_is_a_quota_exceeded_naming_the_quota_with_retry_after(fake):
    client = Client(fake.url, APP_ID, SECRET, retries=0)
    message = "rate: this app's limit is 4 sandboxes created per minute; it frees in 17 s"
    fake.then(429, {"Code": "TooManyRequests", "Message": message}, headers={"Retry-After": "17"})

    with pytest.raises(opendevelop.QuotaExceeded) as caught:
        client.create("true")

    assert (caught.value.status, caught.value.code) == (429, "TooManyRequests")
    assert caught.value.quota == "rate"
    assert caught.value.retry_after == 17.0
    assert opendevelop.TooManyRequestsError is opendevelop.QuotaExceeded  # the earlier name still catches it


def test_usage_is_the_apps_own_use_and_quotas(client, fake):
    usage = {
        "running": 1,
        "queued": 2,
        "today": {"sandboxes": 9, "run_seconds": 40},
        "limits": {"concurrency": 10, "rate": 60, "daily_seconds": 0},
    }
    fake.then(200, usage)

    assert client.usage() == usage
    assert fake.requests[0].path == "/api/usage"


def test_an_unreachable_server_is_an_unreachable_error_after_retries(monkeypatch):
    fake = FakeAPI()
    url = fake.url
    fake.close()  # nothing listens there any more
    client = Client(url, APP_ID, SECRET, retries=2, backoff=0.001)
    attempts = []
    real_request = client._session.request
    monkeypatch.setattr(client._session, "request", lambda *a, **k: attempts.append(1) or real_request(*a, **k))

    with pytest.raises(opendevelop.UnreachableError) as caught:
        client.images()

    assert f"cannot reach the OpenDevelop API at {url} (connection refused)" == caught.value.message
    assert len(attempts) == 3
    with pytest.raises(opendevelop.UnreachableError):
        client.create("true")  # never connected, so never carried out: retried too
    assert len(attempts) == 6


def test_every_request_has_a_timeout_and_a_slow_create_is_not_sent_twice(fake):
    client = Client(fake.url, APP_ID, SECRET, timeout=0.3, retries=3, backoff=0.001)
    fake.then(201, sandbox_json(status="queued"), delay=1.5)

    started = time.monotonic()
    with pytest.raises(opendevelop.UnreachableError) as caught:
        client.create("true")

    assert time.monotonic() - started < 1.4
    assert "did not answer in time" in caught.value.message
    assert len(fake.requests) == 1  # it may have been created: not sent again


def test_a_slow_read_is_retried(fake):
    client = Client(fake.url, APP_ID, SECRET, timeout=0.3, retries=3, backoff=0.001)
    fake.then(200, ["base"], delay=1.0).then(200, ["base"])

    assert client.images() == ["base"]
    assert len(fake.requests) == 2


def test_a_long_poll_gets_its_wait_on_top_of_the_timeout(fake):
    client = Client(fake.url, APP_ID, SECRET, timeout=0.3, retries=0)
    fake.then(200, sandbox_json(), delay=0.8)

    assert client.sandbox("a326efb1fe1f980a", wait=1).finished
    assert fake.requests[0].query == {"wait": ["1"]}


def test_a_sandbox_streams_its_output_as_the_live_tail_answers(fake, client):
    fake.then(200, sandbox_json(status="running"))
    fake.then(200, sandbox_json(stdout="line 1\nline 2\n"))  # what the tail serves (see fakeapi)

    sandbox = client.sandbox("a326efb1fe1f980a")
    chunks = list(sandbox.stream("stdout"))

    assert chunks == ["line 1\nline 2\n"]
    assert fake.tails == [("/api/sandboxes/a326efb1fe1f980a/logs", "stdout", 0)]


def test_output_is_the_exact_bytes_following_a_redirect_without_credentials(fake, client):
    fake.then(307, b"", headers={"Location": f"{fake.url}/stored/object"})
    fake.then(200, b"\x00\xff\xfe", headers={"Content-Type": "application/octet-stream"})

    assert client.output("a326efb1fe1f980a", "stdout") == b"\x00\xff\xfe"
    first, second = fake.requests
    assert first.headers["Accept"] == "application/octet-stream" and "Authorization" in first.headers
    assert second.path == "/stored/object" and "Authorization" not in second.headers
