"""The local stand-in for the webhooks Lambda: poll the stack's webhooks queue, run ``app.deliver_webhook``.

On AWS, SQS invokes ``app.deliver_webhook`` (``@app.on_sqs_message``) with a
batch of one message, and deletes the message when it returns.  Here this
process long-polls the same queue and calls that same function with an event
of the same shape, a few at once (``OPENDEVELOP_WEBHOOK_WORKERS``, 4), so one
slow receiver does not hold the others; a message whose handler raised is left
to come back after its visibility timeout, as the Lambda's would.

    python -m infra.local.webhooks
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalicelib import aws, logs
from chalicelib.context import get_context
from chalicelib.logs import describe, log
from chalicelib.settings import SettingsError, env_int

logger = logging.getLogger("opendevelop.webhooks")


def event_of(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """The Lambda event SQS would give ``deliver_webhook`` for ``message``."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
        ]
    }


def main() -> int:
    # The deployed handler itself.  Imported first: Chalice(app_name="opendevelop") sets the
    # "opendevelop" logger's level to ERROR, and logs.setup() must come after it.
    from app import deliver_webhook

    logs.setup()
    try:
        settings = get_context().settings
        workers = env_int(os.environ, "OPENDEVELOP_WEBHOOK_WORKERS", 4, 1, 64)
        wait_s = env_int(os.environ, "OPENDEVELOP_POLL_WAIT", 20, 0, 20)
    except SettingsError as e:
        print(f"webhooks: configuration: {e}", file=sys.stderr)
        return 2
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sqs = aws.sqs(settings)
    url = aws.create_webhook_queue(settings)
    arn = f"arn:aws:sqs:{settings.region}:000000000000:{settings.webhook_queue}"

    def run(message: dict[str, Any]) -> None:
        try:
            deliver_webhook(event_of(message, arn), None)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        except Exception as e:  # noqa: BLE001 - left on the queue, it comes back
            log(logger, "webhook.handler_failed", logging.ERROR, error=describe(e), body=json.loads(message["Body"]))

    log(logger, "webhooks.ready", queue=settings.webhook_queue, workers=workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
        while not stopping:
            try:
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=workers, WaitTimeSeconds=wait_s)
            except Exception as e:  # noqa: BLE001 - the endpoint may be restarting; poll again
                log(logger, "webhooks.receive_failed", logging.WARNING, error=describe(e))
                time.sleep(1)
                continue
            list(pool.map(run, got.get("Messages", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
