"""DynamoDB's per-item atomicity, given to moto.

DynamoDB applies a conditional write atomically: two writers racing on one
item never both see the condition hold.  moto evaluates the condition and
then applies the update in plain Python, with no lock, so two threads of its
server (or of an in-process mock) can both pass ``n < limit`` and overshoot a
quota counter that DynamoDB itself would hold.  ``serialize_writes()`` puts
moto's DynamoDB writes under one lock, so the local stack and the tests see
DynamoDB's guarantee (``chalicelib.quotas`` relies on it).

Reads take the same lock while they build their answer: moto answers a read
from the stored item's own values, walking them after the backend call, so a
write applied meanwhile failed the read with "dictionary changed size during
iteration" (a 500 the bench's profile of the endpoint caught: a BatchGetItem
of the API's waiters beside a dispatcher's UpdateItem of the same row).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
READS = ("get_item", "batch_get_item", "query", "scan", "transact_get_items")  # the handler's: answer included
_lock = threading.RLock()


def serialize_writes() -> None:
    """Idempotent: each write of moto's DynamoDB backend, and each read with its answer, under one lock."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    for owner, names in ((DynamoDBBackend, WRITES), (DynamoHandler, READS)):
        for name in names:
            _lock_method(owner, name)


def _lock_method(owner: type, name: str) -> None:
    original = getattr(owner, name)
    if getattr(original, "_serialized", False):
        return

    def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
        with _lock:
            return _original(self, *args, **kwargs)

    functools.update_wrapper(locked, original)
    locked._serialized = True  # type: ignore[attr-defined]
    setattr(owner, name, locked)
