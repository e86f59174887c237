"""Every functional test starts from an empty stage, though ``admin.init`` runs once per run (``aws_baseline``).

The first test leaves something everywhere a test can (a row in every table, a
message on every queue, an object, a table and a queue of its own, a secret);
the second, which pytest runs next, must see none of it.  The check every
test's set-up makes (``aws_baseline.shape``) is shown to catch each leak.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from aws_baseline import Baseline, shape

from chalicelib import aws
from chalicelib.models import MODELS, App, Counter, DockerServer, Image, Sandbox, User


def leave_everything_behind(world: Any) -> None:
    settings = world.settings
    world.new_app("left-behind")
    assert world.post_json({"image": "base", "cmd": ["echo hi"]}).status_code == 201
    Counter("left-behind", n=1).save()
    aws.put_object(settings, "left/behind", b"x")
    aws.send_webhook(settings, "left-behind", 0)
    aws.send_webhook(settings, "left-behind-later", 0, delay_s=600)
    dlq = aws.sqs(settings).get_queue_url(QueueName=f"{aws.queue_name(settings, 'local')}-dlq")["QueueUrl"]
    aws.sqs(settings).send_message(QueueUrl=dlq, MessageBody="{}")
    aws.sqs(settings).create_queue(QueueName="left-behind")
    boto3.client("dynamodb", region_name=settings.region).create_table(
        TableName="left-behind",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    boto3.client("secretsmanager", region_name=settings.region).create_secret(Name="left-behind", SecretString="x")


def test_a_test_that_leaves_everything_behind(world, aws_baseline: Baseline) -> None:
    leave_everything_behind(world)

    assert all(model.count() > 0 for model in MODELS), {m.__name__: m.count() for m in MODELS}
    assert world.sandbox_rows() and world.stored_keys() and world.queued_messages()
    # What every test's set-up checks fails on what this test left:
    with pytest.raises(AssertionError, match="not from what admin.init makes"):
        aws_baseline.install(world.settings)


def test_the_next_test_sees_none_of_it(settings, aws_baseline: Baseline) -> None:
    for model in (User, App, Image, DockerServer, Sandbox, Counter):
        assert list(model.scan()) == [], model.__name__
    sqs = aws.sqs(settings)
    assert [url.rsplit("/", 1)[-1] for url in sqs.list_queues().get("QueueUrls", [])] == [settings.webhook_queue]
    counts = sqs.get_queue_attributes(QueueUrl=aws.webhook_queue_url(settings), AttributeNames=["All"])["Attributes"]
    assert [counts[f"ApproximateNumberOfMessages{kind}"] for kind in ("", "Delayed", "NotVisible")] == ["0"] * 3
    assert aws.s3(settings).list_objects_v2(Bucket=settings.bucket).get("Contents", []) == []
    assert [b["Name"] for b in aws.s3(settings).list_buckets()["Buckets"]] == [settings.bucket]
    dynamodb = boto3.client("dynamodb", region_name=settings.region)
    assert sorted(dynamodb.list_tables()["TableNames"]) == sorted(model.Meta.table_name for model in MODELS)
    secrets = boto3.client("secretsmanager", region_name=settings.region)
    assert secrets.list_secrets()["SecretList"] == []


@pytest.mark.parametrize("leak", ["row", "object", "message", "delayed message", "queue", "table", "index"])
def test_the_set_up_check_catches_each_kind_of_leak(settings, leak: str) -> None:
    clean = shape()
    if leak == "row":
        Counter("leak", n=1).save()
    elif leak == "object":
        aws.put_object(settings, "leak", b"x")
    elif leak == "message":
        aws.send_webhook(settings, "leak", 0)
    elif leak == "delayed message":
        aws.send_webhook(settings, "leak", 0, delay_s=600)
    elif leak == "queue":
        aws.sqs(settings).create_queue(QueueName="leak")
    elif leak == "table":
        boto3.client("dynamodb", region_name=settings.region).create_table(
            TableName="leak",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    elif leak == "index":
        Sandbox._get_connection().connection.client.update_table(
            TableName=Sandbox.Meta.table_name,
            AttributeDefinitions=[{"AttributeName": "leak", "AttributeType": "S"}],
            GlobalSecondaryIndexUpdates=[
                {
                    "Create": {
                        "IndexName": "leak",
                        "KeySchema": [{"AttributeName": "leak", "KeyType": "HASH"}],
                        "Projection": {"ProjectionType": "KEYS_ONLY"},
                    }
                }
            ],
        )

    assert shape() != clean
