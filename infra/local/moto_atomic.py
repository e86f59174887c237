"""DynamoDB's per-item atomicity, given to moto.

DynamoDB applies a conditional write atomically: two writers racing on one
item never both see the condition hold.  moto evaluates the condition and
then applies the update in plain Python, with no lock, so two threads of its
server (or of an in-process mock) can both pass ``n < limit`` and overshoot a
quota counter that DynamoDB itself would hold.  ``serialize_writes()`` puts
moto's DynamoDB writes under one lock, so the local stack and the tests see
DynamoDB's guarantee (``chalicelib.quotas`` relies on it).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
_lock = threading.RLock()


def serialize_writes() -> None:
    """Idempotent: wrap each write of moto's DynamoDB backend in one process-wide lock."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in WRITES:
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_serialized", False):
            continue

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _lock:
                return _original(self, *args, **kwargs)

        functools.update_wrapper(locked, original)
        locked._serialized = True  # type: ignore[attr-defined]
        setattr(DynamoDBBackend, name, locked)
