"""What the local AWS endpoint counts each request as (``infra/local/moto_calls.kind``)."""

from __future__ import annotations

from infra.local.moto_calls import kind

SCOPE = "AWS4-HMAC-SHA256 Credential=testing/20261202/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=x"


def test_dynamodb_and_sqs_json_calls_are_named_by_their_target() -> None:
    dynamo = {"HTTP_AUTHORIZATION": SCOPE.format("dynamodb"), "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.UpdateItem"}
    sqs = {"HTTP_AUTHORIZATION": SCOPE.format("sqs"), "HTTP_X_AMZ_TARGET": "AmazonSQS.ReceiveMessage"}
    assert kind(dynamo) == "dynamodb:UpdateItem"
    assert kind(sqs) == "sqs:ReceiveMessage"


def test_sqs_query_calls_by_their_action_and_s3_by_method() -> None:
    query = {"HTTP_AUTHORIZATION": SCOPE.format("sqs"), "QUERY_STRING": "Action=SendMessage&Version=2012-11-05"}
    s3 = {"HTTP_AUTHORIZATION": SCOPE.format("s3"), "REQUEST_METHOD": "PUT"}
    assert kind(query) == "sqs:SendMessage"
    assert kind(s3) == "s3:PUT"
    assert kind({"REQUEST_METHOD": "GET"}) == "unsigned:?"
