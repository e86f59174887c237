"""Shared fixtures of the functional tests.

AWS (DynamoDB, SQS, S3) is moto, in-process (``moto.mock_aws``); the API is the
real ``app.py`` driven through Chalice's test client; the admin command line is
``manage.main(argv)`` called in-process.  No Docker, no network.

The fixtures build up like a fresh installation does:

* ``env``: the environment a component would start with (local stage, a unique
  table prefix, a fixed HMAC key, moto's dummy credentials).
  ``OPENDEVELOP_AWS_ENDPOINT_URL=none`` makes ``Settings`` pass no endpoint, so
  boto3 and pynamodb talk to the in-process mock instead of 127.0.0.1:5000.
* ``settings``: AWS mocked (one moto per module, emptied before each test),
  tables and bucket created (``admin.init``, run once per run and then
  copied: ``aws_baseline``).
* ``world``: plus an image ``base``, a server ``local`` with a fresh
  heartbeat, a user and an app, and a Chalice test client.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # app.py and manage.py live at the top of the checkout

from aws_baseline import Baseline  # noqa: E402 - beside this file
from aws_baseline import reset as aws_baseline_reset  # noqa: E402
from chalice.test import Client  # noqa: E402

import app as api  # noqa: E402
from chalicelib import admin, auth, aws, context  # noqa: E402
from chalicelib.auth import hash_password  # noqa: E402
from chalicelib.models import DockerServer, Sandbox, User, utcnow  # noqa: E402
from chalicelib.settings import Settings  # noqa: E402
from infra.local.moto_atomic import serialize_writes  # noqa: E402
from infra.local.moto_fast import fast_item_answers  # noqa: E402

serialize_writes()  # conditional writes atomic per item, as DynamoDB's are (moto's are not, across threads)
# The local stack's moto answers DynamoDB's item operations without its model walk; so does the tests'
# (OPENDEVELOP_MOTO_FAST_CHECK=1 compares every such answer with moto's own).
fast_item_answers()

HMAC_KEY = "functional-tests-hmac-key-0123456789abcdef"
# Unique to this run, so nothing here can touch a real stage's tables.  Every test
# gets a fresh, empty moto, so one prefix per run isolates tests as well as one per
# test would, and lets the models keep their connections from test to test.
TABLE_PREFIX = f"odtest-{uuid.uuid4().hex[:8]}"
USERNAME = "sourcelair"
PASSWORD = "correct horse"


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at 1/16 of its cost: the tests make users by the dozen and check hashes, not their price
    (tests/unit/test_auth.py holds the real parameters)."""
    monkeypatch.setattr(auth, "SCRYPT_N", 2**10)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A clean OpenDevelop/AWS environment; tests may ``monkeypatch.setenv`` more
    (then call ``world.reload_settings()`` for the API to see it)."""
    for name in list(os.environ):
        if name.startswith(("OPENDEVELOP_", "AWS_")):
            monkeypatch.delenv(name)
    values = {
        "OPENDEVELOP_STAGE": "local",
        "OPENDEVELOP_TABLE_PREFIX": TABLE_PREFIX,
        "OPENDEVELOP_STATE_DIR": str(tmp_path),
        "OPENDEVELOP_HMAC_KEY": HMAC_KEY,
        "OPENDEVELOP_AWS_ENDPOINT_URL": "none",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def new_api_process() -> Callable[[], context.Context]:
    """Call it to make the API forget what it cached, as a new process (or a few seconds) would."""
    return context.reset_context


@pytest.fixture
def api_client() -> Client:
    """Chalice's test client over the real app.py routes, in the ``local`` stage."""
    return Client(api.app, stage_name="local", project_dir=str(ROOT))


@pytest.fixture(scope="session")
def aws_baseline() -> Baseline:
    return Baseline()


@pytest.fixture(scope="module")
def moto() -> Iterator[None]:
    """One in-process moto per test module (each test empties it first: ``settings``), stopped after it,
    so nothing of it reaches the tests of other folders that run in the same pytest process."""
    with mock_aws():
        yield


@pytest.fixture
def settings(env: dict[str, str], moto: None, aws_baseline: Baseline) -> Iterator[Settings]:
    """AWS mocked in-process, with the stage's tables and bucket, and nothing else."""
    aws_baseline_reset()  # every moto backend empty, as a new mock_aws() leaves them
    # A fresh context read from the environment (binding the models), as the API's first request makes.
    current = context.reset_context().settings
    assert current.aws_endpoint_url is None, "the tests must never reach a real endpoint"
    aws_baseline.install(current)  # what admin.init(current) makes, checked to hold nothing
    yield current
    context.reset_context(current)  # nothing cached under this test's moto outlives it
    aws_baseline_reset()


def basic_auth(app_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{app_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def multipart(
    fields: list[tuple[str, str | bytes]],
    files: list[tuple[str, bytes]],
    boundary: str = "------------------------d74496d66958873e",
) -> tuple[dict[str, str], bytes]:
    """A multipart/form-data body as curl's ``-F name=value -F file=@name`` sends it."""
    out = b""
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
    for filename, content in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, out


@dataclass
class World:
    """A running installation: one image, one server, one user with one app."""

    settings: Settings
    client: Client
    monkeypatch: pytest.MonkeyPatch
    app_id: str
    secret: str
    server: DockerServer

    # Credentials

    @property
    def auth(self) -> dict[str, str]:
        return basic_auth(self.app_id, self.secret)

    @staticmethod
    def auth_for(app_id: str, secret: str) -> dict[str, str]:
        return basic_auth(app_id, secret)

    def new_app(self, name: str = "other") -> tuple[str, str]:
        app, secret = admin.app_create(name, USERNAME, settings=self.settings)
        return app.app_id, secret

    # Requests

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.client.http.get(path, headers=self.auth if headers is None else headers)

    def post(self, body: bytes, content_type: str | None, headers: dict[str, str] | None = None) -> Any:
        all_headers = {**self.auth, **(headers or {})}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return self.client.http.post("/api/sandboxes", headers=all_headers, body=body)

    def post_json(self, data: Any, headers: dict[str, str] | None = None) -> Any:
        return self.post(json.dumps(data).encode(), "application/json", headers)

    def post_form(
        self,
        fields: list[tuple[str, str | bytes]],
        files: list[tuple[str, bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        form_headers, body = multipart(fields, files or [])
        return self.post(body, form_headers["Content-Type"], headers)

    def reload_settings(self) -> Settings:
        """After a test changes the environment: the API reads it again, as a new process would."""
        return context.reset_context().settings

    # What the platform stored

    def sandbox_rows(self) -> list[Sandbox]:
        return list(Sandbox.scan())

    def stored_keys(self) -> list[str]:
        listing = aws.s3(self.settings).list_objects_v2(Bucket=self.settings.bucket)
        return [o["Key"] for o in listing.get("Contents", [])]

    def stored_object(self, key: str) -> bytes:
        return aws.get_object(self.settings, key)

    def stored_payload(self, row: Sandbox) -> bytes:
        """The tar (+ stdin) a sandbox will be given: in its row when small, in S3 when not."""
        if row.files_key:
            assert row.files_inline is None
            return self.stored_object(row.files_key)
        return bytes(row.files_inline or b"")

    def queued_messages(self) -> list[dict[str, Any]]:
        """Every message waiting on the server's queue (received, so they stay hidden)."""
        bodies: list[dict[str, Any]] = []
        while True:
            got = (
                aws.sqs(self.settings)
                .receive_message(
                    QueueUrl=self.server.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
                )
                .get("Messages", [])
            )
            if not got:
                return bodies
            bodies += [json.loads(m["Body"]) for m in got]

    def assert_nothing_stored(self) -> None:
        assert self.sandbox_rows() == []
        assert self.stored_keys() == []
        assert self.queued_messages() == []


@functools.cache
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def world(settings: Settings, monkeypatch: pytest.MonkeyPatch, api_client: Client, aws_baseline: Baseline) -> World:
    def write() -> tuple[str, str]:
        admin.image_create("base", "opendevelop/base:latest", description="Debian 12 + Python 3")
        admin.server_create(settings, "local", "unix:///var/run/docker.sock", buckets="/var/tmp/opendevelop")
        # The user admin.user_create would make, with the slow password hash computed once per run.
        User(USERNAME, email="opendevelop@sourcelair.com", password_hash=password_hash()).save()
        app, secret = admin.app_create("myapp", USERNAME, settings=settings)
        return app.app_id, secret

    # Written once per run, copied into each test's emptied moto (with the server's queues made again).
    app_id, secret = aws_baseline.install_rows(settings, "world", write)
    server = DockerServer("local")
    server.update(actions=[DockerServer.last_heartbeat.set(utcnow())])  # as a running dispatcher would; reads it back
    return World(settings, api_client, monkeypatch, app_id, secret, server)
