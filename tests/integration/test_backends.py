"""Two implementations, one behaviour: what the platform asks of DynamoDB and S3, on moto and on
``make serve``'s dynalite and s3rver (``infra/local/persistent.py``).

Each test runs once per endpoint (the ``endpoints`` fixture's parameter).  Where one of
them deviates from AWS, the test says so and checks that the platform does not
depend on the deviation:

- dynalite has no ``UpdateTimeToLive`` and never
  expires a row (moto keeps TTL as a setting and expires nothing either):
  ``models.create_tables`` does not ask for one locally, and nothing in the
  platform waits for a row to vanish (a sandbox past ``expires_at`` is still
  shown; the AWS template turns TTL on);
- s3rver reads a suffix range (``bytes=-N``) as ``bytes=0-N``; ``infra/local/s3_server.js``
  mends that for presigned GETs, where a client's own ``Range`` reaches it (the
  platform itself always asks for explicit ranges);
- s3rver has no lifecycle rules (nothing expires there either) and checks
  signatures against its one account (``S3RVER``), which the stack signs with;
- moto's server applies an update's clauses one by one (see
  ``lifecycle.record``: the status is written last); dynalite, like DynamoDB,
  applies an update at once.

Transactions are not used by the platform, so neither is checked for them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from pynamodb.exceptions import PutError

from chalicelib import admin, aws, lifecycle
from chalicelib.models import Sandbox, utcnow
from infra.local.stack import Stack, free_port

from .helpers import models_bound_to


@pytest.fixture(scope="module", params=["moto", "persistent"])
def endpoints(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp(f"backend-{request.param}")
    stack = Stack(
        aws_port=free_port(),
        table_prefix=f"be{secrets.token_hex(3)}",
        state_dir=base / "state",
        log_dir=base / "logs",
        data_dir=base / "data" if request.param == "persistent" else None,
    )
    try:
        stack.start_aws()
        with models_bound_to(stack.settings()):
            admin.init(stack.settings())
            yield stack
    finally:
        stack.stop_all()


def _sandbox(app_id: str = "app1", **fields: Any) -> Sandbox:
    return lifecycle.create(
        secrets.token_hex(8), "s1", app_id=app_id, image="base", docker_image="x", cmd=["true"], **fields
    )


def test_a_conditional_write_whose_condition_fails_is_lost_not_an_error(endpoints: Stack) -> None:
    row = _sandbox()
    with pytest.raises(PutError) as raised:
        lifecycle.create(row.sandbox_id, "s1", app_id="app1", image="base", docker_image="x", cmd=["true"])
    assert lifecycle.lost(raised.value)
    token = lifecycle.claim(row, "s1", "h1")
    assert token and row.status == "running" and row.token == token  # the claim's write, read back (ALL_NEW)
    assert lifecycle.claim(Sandbox.get(row.sandbox_id), "s1", "h2") is None  # no longer queued: lost
    assert not lifecycle.record(row.sandbox_id, "another-token", [Sandbox.return_code.set(1)])
    assert lifecycle.record(row.sandbox_id, token, [Sandbox.return_code.set(0)])
    assert (Sandbox.get(row.sandbox_id).status, Sandbox.get(row.sandbox_id).return_code) == ("terminated", 0)


def test_an_index_pages_newest_first_with_limit_and_exclusive_start_key(endpoints: Stack) -> None:
    app_id = secrets.token_hex(4)
    made = [_sandbox(app_id).sandbox_id for _ in range(7)]
    seen: list[str] = []
    start = None
    for _ in range(10):
        page = Sandbox.by_app.query(app_id, scan_index_forward=False, limit=3, last_evaluated_key=start, page_size=3)
        seen += [row.sandbox_id for row in page]
        start = page.last_evaluated_key
        if not start:
            break
    assert seen == list(reversed(made))


def test_a_sparse_index_holds_only_the_rows_with_its_key(endpoints: Stack) -> None:
    app_id = secrets.token_hex(4)
    parked = _sandbox(app_id, parked_app=app_id)
    _sandbox(app_id)
    assert [row.sandbox_id for row in Sandbox.parked.query(app_id)] == [parked.sandbox_id]
    by_status = {row.sandbox_id: row for row in Sandbox.by_status.query("queued")}
    assert by_status[parked.sandbox_id].app_id == app_id  # a projected attribute


def test_an_item_over_400_kb_is_refused(endpoints: Stack) -> None:
    with pytest.raises(PutError) as raised:
        _sandbox(stdout="x" * 410 * 1024)
    assert "ValidationException" in str(raised.value) or "size" in str(raised.value).lower()


def test_ttl_is_not_relied_on(endpoints: Stack) -> None:
    client = Sandbox._get_connection().connection.client
    table = Sandbox.Meta.table_name
    spec = {"Enabled": True, "AttributeName": "expires_at"}
    if endpoints.persistent:
        with pytest.raises(ClientError, match="UnknownOperation"):  # dynalite: TTL cannot be turned on
            client.update_time_to_live(TableName=table, TimeToLiveSpecification=spec)
    else:
        client.update_time_to_live(TableName=table, TimeToLiveSpecification=spec)
    row = _sandbox()
    row.update(actions=[Sandbox.expires_at.set(utcnow() - timedelta(days=1))])
    assert Sandbox.get(row.sandbox_id).sandbox_id == row.sandbox_id  # past its TTL and still there


def test_objects_ranges_presigned_urls_and_batch_deletes(endpoints: Stack) -> None:
    settings = endpoints.settings()
    s3 = aws.s3(settings)
    key = f"t/{secrets.token_hex(4)}"
    body = bytes(range(256)) * 64
    aws.put_object(settings, key, body)
    assert s3.get_object(Bucket=settings.bucket, Key=key, Range="bytes=10-19")["Body"].read() == body[10:20]
    url = s3.generate_presigned_url("get_object", Params={"Bucket": settings.bucket, "Key": key}, ExpiresIn=60)
    assert url.startswith("http://127.0.0.1:")
    fetched = requests.get(url, headers={"Range": "bytes=0-3"}, timeout=10)
    assert (fetched.status_code, fetched.content) == (206, body[:4])
    # A suffix range through a presigned URL: s3rver alone reads "bytes=-5" as 0-5 (s3_server.js mends it).
    fetched = requests.get(url, headers={"Range": "bytes=-5"}, timeout=10)
    assert (fetched.status_code, fetched.content) == (206, body[-5:])
    s3.delete_objects(Bucket=settings.bucket, Delete={"Objects": [{"Key": key}]})
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket=settings.bucket, Key=key)
    assert aws.is_missing(raised.value)
