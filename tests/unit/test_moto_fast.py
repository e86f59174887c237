"""``infra/local/moto_fast``: DynamoDB's item answers without moto's model walk are the answers moto gives.

Every item operation the fast path takes is made here with the check on (each
fast answer also made by moto's serializer and compared), over items holding
every attribute type, with every ``ReturnValues`` and consumed-capacity choice,
pages, conditional failures and transactions; then the check is shown to catch
an answer that differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from infra.local import moto_fast

ITEM: dict[str, Any] = {
    "k": {"S": "a"},
    "r": {"N": "1"},
    "s": {"S": "text é ✓"},
    "n": {"N": "-12.50"},
    "b": {"B": b"\x00\xffbytes"},
    "ss": {"SS": ["x", "y"]},
    "ns": {"NS": ["1", "2.5"]},
    "bs": {"BS": [b"\x01", b"\x02"]},
    "m": {"M": {"inner": {"L": [{"S": "v"}, {"NULL": True}, {"BOOL": False}]}}},
    "l": {"L": [{"N": "3"}, {"M": {}}]},
    "t": {"BOOL": True},
    "z": {"NULL": True},
}


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch, fake_aws_env: None) -> Iterator[Any]:
    moto_fast.fast_item_answers()
    monkeypatch.setattr(moto_fast, "check", True)
    calls: list[str] = []
    original = moto_fast._check

    def counted(slow: Any, fast: Any) -> None:
        calls.append("checked")
        original(slow, fast)

    monkeypatch.setattr(moto_fast, "_check", counted)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}, {"AttributeName": "r", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "k", "AttributeType": "S"},
                {"AttributeName": "r", "AttributeType": "N"},
                {"AttributeName": "s", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_s",
                    "KeySchema": [{"AttributeName": "s", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        client.checked = calls
        yield client
        client.delete_table(TableName="t")  # also when a moto started elsewhere outlives this one


def test_every_item_operation_answers_as_moto_does(dynamodb: Any) -> None:
    capacity = {"ReturnConsumedCapacity": "TOTAL"}
    for r in range(1, 6):
        dynamodb.put_item(TableName="t", Item={**ITEM, "r": {"N": str(r)}}, **capacity)
    got = dynamodb.get_item(TableName="t", Key={"k": {"S": "a"}, "r": {"N": "1"}}, ConsistentRead=True)
    assert got["Item"] == ITEM  # and as written
    dynamodb.get_item(TableName="t", Key={"k": {"S": "a"}, "r": {"N": "1"}}, ProjectionExpression="m.inner, ss")
    dynamodb.get_item(TableName="t", Key={"k": {"S": "none"}, "r": {"N": "1"}}, ReturnConsumedCapacity="INDEXES")
    for returned in ("NONE", "ALL_OLD", "ALL_NEW", "UPDATED_OLD", "UPDATED_NEW"):
        dynamodb.update_item(
            TableName="t",
            Key={"k": {"S": "a"}, "r": {"N": "2"}},
            UpdateExpression="SET n = n + :one, s = :s ADD ns :more REMOVE z",
            ExpressionAttributeValues={":one": {"N": "1"}, ":s": {"S": returned}, ":more": {"NS": ["9"]}},
            ReturnValues=returned,
            **capacity,
        )
    dynamodb.put_item(TableName="t", Item={**ITEM, "r": {"N": "3"}}, ReturnValues="ALL_OLD")
    dynamodb.delete_item(TableName="t", Key={"k": {"S": "a"}, "r": {"N": "4"}}, ReturnValues="ALL_OLD", **capacity)
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):  # an error: moto's own path
        dynamodb.put_item(TableName="t", Item=ITEM, ConditionExpression="attribute_not_exists(k)")
    page = dynamodb.query(
        TableName="t",
        KeyConditionExpression="k = :k",
        ExpressionAttributeValues={":k": {"S": "a"}},
        Limit=2,
        ScanIndexForward=False,
        **capacity,
    )
    assert "LastEvaluatedKey" in page
    dynamodb.query(
        TableName="t",
        KeyConditionExpression="k = :k",
        ExpressionAttributeValues={":k": {"S": "a"}},
        ExclusiveStartKey=page["LastEvaluatedKey"],
        Select="COUNT",
    )
    dynamodb.query(
        TableName="t",
        IndexName="by_s",
        KeyConditionExpression="s = :s",
        ExpressionAttributeValues={":s": {"S": "ALL_NEW"}},
        ReturnConsumedCapacity="INDEXES",
    )
    dynamodb.scan(TableName="t", Limit=1, **capacity)
    dynamodb.scan(TableName="t", FilterExpression="t = :t", ExpressionAttributeValues={":t": {"BOOL": True}})
    dynamodb.batch_write_item(
        RequestItems={
            "t": [
                {"PutRequest": {"Item": {**ITEM, "k": {"S": "b"}}}},
                {"DeleteRequest": {"Key": {"k": {"S": "a"}, "r": {"N": "5"}}}},
            ]
        },
        **capacity,
    )
    dynamodb.batch_get_item(
        RequestItems={"t": {"Keys": [{"k": {"S": "b"}, "r": {"N": "1"}}, {"k": {"S": "none"}, "r": {"N": "1"}}]}},
        **capacity,
    )
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": "t", "Item": {**ITEM, "k": {"S": "c"}}}},
            {
                "Update": {
                    "TableName": "t",
                    "Key": {"k": {"S": "b"}, "r": {"N": "1"}},
                    "UpdateExpression": "SET t = :f",
                    "ExpressionAttributeValues": {":f": {"BOOL": False}},
                }
            },
        ],
        **capacity,
    )
    key = {"k": {"S": "c"}, "r": {"N": "1"}}
    got = dynamodb.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": key}}])
    assert got["Responses"][0]["Item"] == {**ITEM, "k": {"S": "c"}}

    assert len(dynamodb.checked) == 24  # all 25 requests above but the refused one went the fast way, checked


def test_the_check_catches_an_answer_that_differs(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dynamodb.put_item(TableName="t", Item=ITEM)
    # A fast path that kept a key the answer's shape does not name would differ from moto's serializer.
    monkeypatch.setattr(moto_fast, "_members", lambda action: frozenset({"Item", "ConsumedCapacity", "Extra"}))
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.get_item

    def with_extra(self: Any) -> Any:
        answer = original(self)
        answer.result["Extra"] = 1
        return answer

    monkeypatch.setattr(DynamoHandler, "get_item", with_extra)
    with pytest.raises(Exception, match="moto's serializer"):
        dynamodb.get_item(TableName="t", Key={"k": {"S": "a"}, "r": {"N": "1"}})


def test_it_is_on_in_the_local_stacks_moto() -> None:
    source = open(os.path.join(os.path.dirname(moto_fast.__file__), "moto_local.py")).read()
    assert "fast_item_answers()" in source.split('if __name__ == "__main__":', 1)[1]


def test_the_spared_costs_change_no_answer(dynamodb: Any) -> None:
    """One update expression parsed once for many items (each with its own values); two clauses of a kind
    still refused, and at any depth; moto still routes every service by its folder names."""
    from moto import backends

    expression = "SET s = :s, n = n + :one REMOVE z ADD ns :more"
    for key, value in (("a", "first"), ("b", "second")):
        dynamodb.put_item(TableName="t", Item={**ITEM, "k": {"S": key}})
        answer = dynamodb.update_item(
            TableName="t",
            Key={"k": {"S": key}, "r": {"N": "1"}},
            UpdateExpression=expression,
            ExpressionAttributeValues={":s": {"S": value}, ":one": {"N": "1"}, ":more": {"NS": ["7"]}},
            ReturnValues="ALL_NEW",
        )["Attributes"]
        assert (answer["s"], float(answer["n"]["N"]), "z" in answer) == ({"S": value}, -11.5, False)
        assert sorted(answer["ns"]["NS"]) == ["1", "2.5", "7"]

    for twice in ("SET s = :s SET n = :n", "SET s = :s REMOVE z SET n = :n", "REMOVE z, t REMOVE l"):
        values = {":s": {"S": "x"}, ":n": {"N": "1"}} if ":" in twice else {}
        with pytest.raises(ClientError, match="section can only be used once"):
            dynamodb.update_item(
                TableName="t",
                Key={"k": {"S": "a"}, "r": {"N": "1"}},
                UpdateExpression=twice,
                **({"ExpressionAttributeValues": values} if values else {}),
            )
    assert {"dynamodb", "s3", "sqs"} <= set(backends.list_of_moto_modules())
