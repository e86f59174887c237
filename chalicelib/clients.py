"""boto3 clients by service and endpoint: made once per process and shared (they are thread-safe).

A ``Clients`` lives in the process's ``Context`` (``chalicelib.context``);
``chalicelib.aws`` finds it from the settings it is given.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

from chalicelib.settings import Settings

_CONFIG = Config(
    connect_timeout=5,
    read_timeout=30,  # > the 20 s SQS long poll
    retries={"max_attempts": 3, "mode": "standard"},
    max_pool_connections=50,
)


class Clients:
    """boto3 clients by service and endpoint, each made on first use and then shared.

    Keyed by the endpoint and credentials as well as the service, so one
    process may talk to two stacks (the tests do) without mixing them up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}

    def client(self, service: str, settings: Settings) -> Any:
        key = (service, tuple(sorted(settings.boto_kwargs(service).items())))
        with self._lock:
            made = self._made.get(key)
            if made is None:
                # Under the lock: boto3's session set-up is not thread-safe, and one client per key is the point.
                made = boto3.session.Session().client(service, config=_CONFIG, **dict(key[1]))
                self._made[key] = made
        return made
