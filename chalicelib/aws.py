"""boto3 clients, the per-server SQS queues and the S3 file store.

Clients are made once per process and reused (they are thread-safe): they live
in the process's ``Context`` (``chalicelib.context``), and the functions here
find them from the ``settings`` they are given.  Every transport failure
leaves this module as ``Unavailable`` so callers see one kind of
infrastructure fault.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import context
from chalicelib.clients import Clients
from chalicelib.errors import Unavailable
from chalicelib.settings import Settings

__all__ = ["Clients", "MAX_RECEIVES"]

# A message that fails this many receives goes to the dead-letter queue.
MAX_RECEIVES = 5


def sqs(settings: Settings) -> Any:
    return _clients(settings).client("sqs", settings)


def s3(settings: Settings) -> Any:
    return _clients(settings).client("s3", settings)


def _clients(settings: Settings) -> Clients:
    return context.for_settings(settings).clients


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn boto's transport and service errors into ``Unavailable``."""
    try:
        yield
    except (BotoCoreError, ClientError) as e:
        raise Unavailable(f"{what}: {e}") from e


def is_missing(e: BaseException) -> bool:
    code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
    return code in {"NoSuchKey", "404", "NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


def queue_name(settings: Settings, server: str) -> str:
    return f"{settings.table_prefix}-server-{server}"


def create_server_queue(settings: Settings, server: str) -> tuple[str, str]:
    """Create (or find) a server's queue and its dead-letter queue; return both URLs."""
    client = sqs(settings)
    name = queue_name(settings, server)
    with translated("creating the server's queue"):
        dlq_url = client.create_queue(QueueName=f"{name}-dlq", Attributes={"MessageRetentionPeriod": "1209600"})[
            "QueueUrl"
        ]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes = {
            "VisibilityTimeout": "60",
            "ReceiveMessageWaitTimeSeconds": "20",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}),
        }
        try:
            url = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        except ClientError as e:
            if e.response["Error"]["Code"] not in {"QueueAlreadyExists", "QueueNameExists"}:
                raise
            url = client.get_queue_url(QueueName=name)["QueueUrl"]
            client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url, dlq_url


def delete_server_queue(settings: Settings, queue_url: str, dlq_url: str) -> None:
    client = sqs(settings)
    for url in (queue_url, dlq_url):
        if not url:
            continue
        try:
            client.delete_queue(QueueUrl=url)
        except ClientError as e:
            if not is_missing(e):
                raise Unavailable(f"deleting queue {url}: {e}") from e


def send_wakeup(settings: Settings, queue_url: str, sandbox_id: str, delay_s: int = 0) -> None:
    """``delay_s``: the message stays invisible that long (SQS takes 0 to 900 s)."""
    with translated("queueing the sandbox"):
        sqs(settings).send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps({"sandbox_id": sandbox_id}),
            DelaySeconds=max(0, min(int(delay_s), 900)),
        )


def send_wakeups(settings: Settings, queue_url: str, sandbox_ids: list[str]) -> list[str]:
    """Wake-ups for many sandboxes, ten to a ``SendMessageBatch``; the ids SQS did not take (tried twice).

    A wake-up that is not sent is not lost work: the row is stored ``queued``
    and the reconciler re-sends lost wake-ups (``reconciler._rewake``).
    """
    left: list[str] = []
    for i in range(0, len(sandbox_ids), 10):
        chunk = sandbox_ids[i : i + 10]
        for _ in range(2):
            entries = [{"Id": str(n), "MessageBody": json.dumps({"sandbox_id": sid})} for n, sid in enumerate(chunk)]
            with translated("queueing the sandboxes"):
                failed = sqs(settings).send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
            chunk = [chunk[int(f["Id"])] for f in failed]
            if not chunk:
                break
        left += chunk
    return left


# The webhooks queue (``chalicelib.webhooks``): one message per delivery attempt.
_webhook_urls: dict[tuple[str | None, str], str] = {}


def create_webhook_queue(settings: Settings) -> str:
    """Create (or find) the webhooks queue; its URL.  On AWS the template makes it (``WebhooksQueue``)."""
    client = sqs(settings)
    attributes = {"VisibilityTimeout": "60", "ReceiveMessageWaitTimeSeconds": "20"}
    with translated("creating the webhooks queue"):
        try:
            url: str = client.create_queue(QueueName=settings.webhook_queue, Attributes=attributes)["QueueUrl"]
        except ClientError as e:
            if e.response["Error"]["Code"] not in {"QueueAlreadyExists", "QueueNameExists"}:
                raise
            url = client.get_queue_url(QueueName=settings.webhook_queue)["QueueUrl"]
    return url


def webhook_queue_url(settings: Settings) -> str:
    key = (settings.endpoint("sqs"), settings.webhook_queue)
    url = _webhook_urls.get(key)
    if url is None:
        with translated("finding the webhooks queue"):
            url = _webhook_urls[key] = sqs(settings).get_queue_url(QueueName=settings.webhook_queue)["QueueUrl"]
    return url


def send_webhook(settings: Settings, sandbox_id: str, attempt: int, delay_s: float = 0) -> None:
    """A delivery attempt of ``sandbox_id``'s webhook, due in ``delay_s`` (SQS holds at most 900 s)."""
    body = json.dumps({"sandbox_id": sandbox_id, "attempt": attempt})
    with translated("queueing the webhook"):
        sqs(settings).send_message(
            QueueUrl=webhook_queue_url(settings), MessageBody=body, DelaySeconds=max(0, min(math.ceil(delay_s), 900))
        )


def ensure_bucket(settings: Settings) -> None:
    client = s3(settings)
    with translated("creating the bucket"):
        try:
            client.head_bucket(Bucket=settings.bucket)
        except ClientError as e:
            if e.response["Error"]["Code"] not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            kwargs: dict[str, Any] = {"Bucket": settings.bucket}
            if settings.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
            client.create_bucket(**kwargs)


def put_object(settings: Settings, key: str, body: bytes) -> None:
    with translated("storing files"):
        s3(settings).put_object(Bucket=settings.bucket, Key=key, Body=body)


# A file over this goes to S3 in parts of this size (S3's are 5 MiB at least, but the last): no request
# carries more, whatever the file's size, and a run's output can be sent while it is written (``Parts``).
PART_BYTES = 8 * 1024 * 1024


@dataclass
class Parts:
    """A multipart upload of a file under way: its first ``len(etags)`` parts of ``PART_BYTES`` are sent."""

    key: str
    upload_id: str
    etags: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def sent(self) -> int:
        return len(self.etags) * PART_BYTES


class _Slice(io.RawIOBase):
    """``size`` bytes of an open file from ``start``: a part's body, read as it is sent."""

    def __init__(self, f: io.BufferedReader, start: int, size: int) -> None:
        super().__init__()
        self.f, self.start, self.size, self.at = f, start, size, 0

    def __len__(self) -> int:
        return self.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.at, io.SEEK_END: self.size}[whence]
        self.at = max(0, min(self.size, base + offset))
        return self.at

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.at)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.at)
        got = self.f.readinto(memoryview(buffer)[:n]) or 0
        self.at += got
        return got


def start_parts(settings: Settings, key: str) -> Parts:
    with translated("storing output"):
        answer = s3(settings).create_multipart_upload(Bucket=settings.bucket, Key=key)
    return Parts(key, answer["UploadId"])


def send_part(settings: Settings, parts: Parts, path: Path, size: int = PART_BYTES) -> None:
    """The file's next part (``size`` bytes from ``parts.sent``: ``PART_BYTES`` but for the last)."""
    with translated("storing output"), open(path, "rb") as f:
        body = _Slice(f, parts.sent, size)
        answer = s3(settings).upload_part(
            Bucket=settings.bucket, Key=parts.key, UploadId=parts.upload_id, PartNumber=len(parts.etags) + 1, Body=body
        )
    parts.etags.append(answer["ETag"])


def abort_parts(settings: Settings, parts: Parts) -> None:
    with translated("abandoning an upload"):
        s3(settings).abort_multipart_upload(Bucket=settings.bucket, Key=parts.key, UploadId=parts.upload_id)


def put_file(settings: Settings, key: str, path: Path, parts: Parts | None = None) -> None:
    """Upload a file as it is on disk, read as it goes (never whole in memory): in one request up to
    ``PART_BYTES``, else in parts, going on from ``parts`` when some were sent while it was written.
    An upload S3 no longer knows (aborted, expired) is begun again; a failure leaves ``parts`` as far as
    it got, so a call again goes on from there."""
    if parts is not None and parts.done:
        return  # completed by an earlier call (a record tried again): the object is this run's already
    size = path.stat().st_size
    if parts is None and size <= PART_BYTES:
        with translated("storing output"), open(path, "rb") as body:
            s3(settings).put_object(Bucket=settings.bucket, Key=key, Body=body)
        return
    if parts is None:
        parts = start_parts(settings, key)
    try:
        _finish(settings, parts, path, size)
    except Unavailable as e:
        if getattr(e.__cause__, "response", {}).get("Error", {}).get("Code") != "NoSuchUpload":
            raise
        put_file(settings, key, path, start_parts(settings, key))


def _finish(settings: Settings, parts: Parts, path: Path, size: int) -> None:
    while size - parts.sent > PART_BYTES:
        send_part(settings, parts, path)
    if size > parts.sent or not parts.etags:
        send_part(settings, parts, path, size - parts.sent)  # the last: may be short
    numbered = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(parts.etags, 1)]
    with translated("storing output"):
        s3(settings).complete_multipart_upload(
            Bucket=settings.bucket, Key=parts.key, UploadId=parts.upload_id, MultipartUpload={"Parts": numbered}
        )
    parts.done = True


def get_object(settings: Settings, key: str) -> bytes:
    with translated("reading files"):
        data: bytes = s3(settings).get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        return data


def delete_objects(settings: Settings, keys: list[str]) -> None:
    if keys:
        with translated("deleting files"):
            s3(settings).delete_objects(Bucket=settings.bucket, Delete={"Objects": [{"Key": k} for k in keys]})


def queue_depth(settings: Settings, queue_url: str) -> int:
    """Messages on a queue, visible, in flight or delayed (SQS's approximate counts)."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    with translated("reading the queue's depth"):
        attributes = sqs(settings).get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in names)
