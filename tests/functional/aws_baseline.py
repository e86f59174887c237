"""A fresh stage for every functional test at the price of one ``admin.init`` per run.

Creating the stage's tables with their indexes through moto costs about 70 ms,
more than most functional tests take.  So the first test runs ``admin.init``
for real and its tables (still empty) are kept as a deep copy of moto's
in-process DynamoDB backend; every later test starts, as before, from a fresh
``mock_aws()`` (which empties every backend) and is given its own copy of
those tables, then the bucket and the webhooks queue made through the API as
``admin.init`` makes them (a few ms).

``shape`` describes what moto holds, straight from its memory (no request):
every table, queue and bucket with how many items, messages and objects it
holds.  ``install`` checks that a test starts with exactly what ``admin.init``
made, all of it empty, so neither a test that leaves something behind nor an
``admin.init`` that learns to make something this copy does not can go
unnoticed.
"""

from __future__ import annotations

import copy
from typing import Any

from moto.dynamodb.models import dynamodb_backends
from moto.s3.models import s3_backends
from moto.sqs.models import sqs_backends

from chalicelib import admin, aws
from chalicelib.settings import Settings

Shape = dict[str, int]


def shape() -> Shape:
    """Every table, queue and bucket moto holds (by account and region) and how many things are in each."""
    found: Shape = {}
    for account, region, backend in dynamodb_backends.iter_backends():
        for name, table in backend.tables.items():
            indexes = ",".join(sorted(i.name for i in [*table.global_indexes, *table.indexes]))
            found[f"dynamodb/{account}/{region}/{name}[{indexes}]"] = len(table)
    for account, region, backend in sqs_backends.iter_backends():
        for name, queue in backend.queues.items():
            found[f"sqs/{account}/{region}/{name}"] = len(queue._messages) + len(queue._pending_messages)
    for account, _, backend in s3_backends.iter_backends():
        for name, bucket in backend.buckets.items():
            found[f"s3/{account}/{name}"] = dict.__len__(bucket.keys) + len(bucket.multiparts)
    return found


class Baseline:
    """What ``admin.init`` makes, by the settings' table prefix and region; copied into each test's moto."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], tuple[list[tuple[str, str, dict[str, Any]]], Shape]] = {}

    def install(self, settings: Settings) -> None:
        """Inside a fresh ``mock_aws()``: the stage as ``admin.init(settings)`` leaves it, and nothing else."""
        key = (settings.table_prefix, settings.region)
        made = self._made.get(key)
        if made is None:
            admin.init(settings)
            tables = [
                (account, region, copy.deepcopy(backend.tables))
                for account, region, backend in dynamodb_backends.iter_backends()
                if backend.tables
            ]
            self._made[key] = made = (tables, shape())
        else:
            for account, region, saved in made[0]:
                dynamodb_backends[account][region].tables = copy.deepcopy(saved)
            aws.ensure_bucket(settings)
            aws.create_webhook_queue(settings)
        expected = made[1]
        assert any(name.startswith("dynamodb/") for name in expected), expected
        assert all(count == 0 for count in expected.values()), f"admin.init stored something: {expected}"
        found = shape()
        if found != expected:
            differs = {name: (expected.get(name), found.get(name)) for name in {*found, *expected}}
            differs = {name: counts for name, counts in differs.items() if counts[0] != counts[1]}
            raise AssertionError(f"a test starts not from what admin.init makes; (made, found): {differs}")
