"""The server's SQS queue, as the dispatcher's inbox: wake-up calls, never the truth.

A message is deleted only after its sandbox is settled; while its sandbox is
in hand its visibility is extended (see ``duties``).  A message that cannot be
handled now comes back after a backoff that doubles per failure (not the full
visibility timeout); after ``aws.MAX_RECEIVES`` receives SQS moves it to the
dead-letter queue, where the reconciler marks its sandbox ``error``.  A
failure that is not the sandbox's (the engine gone, a cold stop) replaces the
message by a fresh one instead, so those receives never add up to a dead letter.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws
from chalicelib.errors import Unavailable
from chalicelib.logs import log
from chalicelib.settings import Settings
from dispatcher.retry import Retry
from dispatcher.settings import DispatcherSettings
from dispatcher.state import Flags, InHand, Job

logger = logging.getLogger("opendevelop.dispatcher")

MAX_BACKOFF_S = 30
RECEIVE_VISIBILITY_S = 20
DELETE_BUDGET_S = 30


class Inbox:
    def __init__(
        self,
        settings: Settings,
        config: DispatcherSettings,
        server: str,
        queue_url: str,
        hands: InHand,
        flags: Flags,
        retry: Retry,
    ) -> None:
        self.settings = settings
        self.config = config
        self.server = server
        self.queue_url = queue_url
        self.hands = hands
        self.flags = flags
        self.retry = retry
        self.sqs = aws.sqs(settings)

    def receive(self, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` messages, after a long poll; raises ``Unavailable``."""
        with aws.translated("receiving from the queue"):
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.config.poll_wait_s,
                # Short at first: a long poll still open for a dispatcher that was killed can take
                # a message nobody will handle; it shows again this soon.  The visibility duty
                # extends a message in hand well within it.
                VisibilityTimeout=min(self.config.visibility_s, RECEIVE_VISIBILITY_S),
                AttributeNames=["ApproximateReceiveCount"],
            )
        return list(response.get("Messages", []))

    def delete(self, receipt: str) -> None:
        try:
            self.retry(
                "deleting the message",
                lambda: self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt),
                budget_s=min(DELETE_BUDGET_S, self.config.retry_budget_s),
            )
        except (BotoCoreError, ClientError) as e:
            # Harmless: the message comes back, finds the sandbox settled, and is dropped then.
            log(logger, "queue.delete_failed", logging.WARNING, server=self.server, error=str(e))

    def hide(self, receipt: str, seconds: int | None = None, event: str = "queue.extend_failed") -> None:
        """Keep a message invisible ``seconds`` more (``visibility_s`` by default); 0 shows it now."""
        seconds = self.config.visibility_s if seconds is None else seconds
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except (BotoCoreError, ClientError) as e:
            log(logger, event, logging.WARNING, server=self.server, error=str(e))

    def hand_back(self, messages: list[dict[str, Any]]) -> None:
        """Messages this dispatcher will not handle (a stop, a drain): visible again at once."""
        for message in messages:
            self.hide(message["ReceiptHandle"], 0, "queue.hand_back_failed")

    def retry_soon(self, job: Job, failures: int) -> None:
        """Let the job's message come back after a backoff that doubles per failure."""
        self.hands.release(job)
        self.hide(job.receipt, self.backoff_s(failures), "queue.backoff_failed")

    def backoff_s(self, failures: int) -> int:
        """The delay after ``failures`` failures: doubling from ``backoff_s``, at most ``MAX_BACKOFF_S``."""
        if failures <= 0 or self.flags.cold.is_set():
            return 0
        return min(math.ceil(self.config.backoff_s * 2 ** (failures - 1)), MAX_BACKOFF_S)

    def fresh_wakeup(self, job: Job, delay_s: int) -> None:
        """Replace the job's message by a new one (receive count 0); sent first, so there is never none."""
        self.hands.release(job)
        try:
            self.wake(job.sandbox_id, delay_s)
        except Unavailable as e:
            log(logger, "queue.wakeup_failed", logging.WARNING, sandbox_id=job.sandbox_id, error=str(e)[:300])
            self.retry_soon(job, 0)  # the old one will do
            return
        self.delete(job.receipt)

    def wake(self, sandbox_id: str, delay_s: int = 0) -> None:
        """A new wake-up for ``sandbox_id``; raises ``Unavailable``."""
        aws.send_wakeup(self.settings, self.queue_url, sandbox_id, delay_s=delay_s)
