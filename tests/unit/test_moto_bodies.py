"""Which requests take turns at moto's S3 (``infra/local/moto_bodies.moves_large_body``)."""

from __future__ import annotations

from infra.local.moto_bodies import LARGE, moves_large_body

SCOPE = "AWS4-HMAC-SHA256 Credential=testing/20261202/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=x"


def s3(method: str, path: str = "/bucket/sandboxes/abc/stdout", **environ: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": SCOPE.format("s3"), "REQUEST_METHOD": method, "PATH_INFO": path, **environ}


def test_large_writes_take_turns_and_small_ones_do_not() -> None:
    assert moves_large_body(s3("PUT", CONTENT_LENGTH=str(LARGE + 1)))
    assert moves_large_body(s3("PUT", CONTENT_LENGTH="99", HTTP_X_AMZ_DECODED_CONTENT_LENGTH=str(20 * LARGE)))
    assert moves_large_body(s3("PUT"))  # a stream of unknown length
    assert not moves_large_body(s3("PUT", CONTENT_LENGTH=str(LARGE)))
    assert not moves_large_body(s3("HEAD"))


def test_object_reads_take_turns_presigned_or_signed_but_listings_and_other_services_do_not() -> None:
    presigned = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/bucket/sandboxes/abc/stdout",
        "QUERY_STRING": "X-Amz-Credential=testing%2F20261202%2Fus-east-1%2Fs3%2Faws4_request",
    }
    assert moves_large_body(presigned)
    assert moves_large_body(s3("GET", HTTP_RANGE="bytes=0-99"))
    assert not moves_large_body(s3("GET", path="/bucket", QUERY_STRING="list-type=2"))
    dynamo = {
        "HTTP_AUTHORIZATION": SCOPE.format("dynamodb"),
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(2 * LARGE),
    }
    assert not moves_large_body(dynamo)
