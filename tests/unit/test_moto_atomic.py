"""``infra/local/moto_atomic``: moto's reads never see a write half applied.

moto answers a read by walking the stored item's own values after the backend
call; without the lock a write growing a map meanwhile failed the read (a 500,
"dictionary changed size during iteration").  Here one thread grows a map while
another reads the item, by ``GetItem`` and ``BatchGetItem``, as the API's
waiters and a dispatcher do on the local stack.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local import moto_atomic


@pytest.fixture
def dynamodb(fake_aws_env: None) -> Iterator[Any]:
    moto_atomic.serialize_writes()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="atomic",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.put_item(TableName="atomic", Item={"k": {"S": "row"}, "m": {"M": {}}})
        yield client
        client.delete_table(TableName="atomic")


def test_reads_beside_a_write_growing_a_map_always_answer(dynamodb: Any) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        try:
            for i in range(150):
                dynamodb.update_item(
                    TableName="atomic",
                    Key={"k": {"S": "row"}},
                    UpdateExpression="SET m.#n = :v",
                    ExpressionAttributeNames={"#n": f"key{i}"},
                    ExpressionAttributeValues={":v": {"L": [{"S": "x"}, {"M": {"inner": {"N": str(i)}}}]}},
                )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                dynamodb.get_item(TableName="atomic", Key={"k": {"S": "row"}})
                dynamodb.batch_get_item(RequestItems={"atomic": {"Keys": [{"k": {"S": "row"}}]}})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=write), threading.Thread(target=read), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    item = dynamodb.get_item(TableName="atomic", Key={"k": {"S": "row"}})["Item"]
    assert len(item["m"]["M"]) == 150
