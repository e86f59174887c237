"""A fresh stage for every functional test at the price of one ``admin.init`` per run.

The functional tests share one ``mock_aws()`` per test module (starting one
costs more than most tests: moto registers a thousand URL patterns each
time; per module, it is stopped before the other folders' tests run).
Every test still starts from nothing: ``reset`` empties every moto backend,
as a new ``mock_aws()`` would.  Then ``install`` gives it the stage
``admin.init`` makes.  Creating the stage's tables with their indexes, its
bucket and its queue through moto's API costs more than most functional
tests take, so the first test runs ``admin.init`` for real and the rest get
the result: a deep copy of the (still empty) tables, and the bucket and
queues made again by the same calls of moto's backends that ``admin.init``'s
requests made (recorded the first time), without a request.

``shape`` describes what moto holds, straight from its memory (no request):
every table, queue and bucket with how many items, messages and objects it
holds.  ``install`` checks that a test starts with exactly what ``admin.init``
made, all of it empty, so neither a test that leaves something behind nor an
``admin.init`` that learns to make something this copy does not can go
unnoticed.

``install_rows`` does the same for the rows most tests start with (the
``world`` fixture's image, server, user and app, and the server's queues):
written for real by the first test that asks, copied into every later one.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from moto.core.base_backend import BackendDict
from moto.dynamodb.models import dynamodb_backends
from moto.s3.exceptions import BucketAlreadyExists
from moto.s3.models import S3Backend, s3_backends
from moto.sqs.models import SQSBackend, sqs_backends

from chalicelib import admin
from chalicelib.settings import Settings

Shape = dict[str, int]
T = TypeVar("T")
Tables = list[tuple[str, str, dict[str, Any]]]


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


def reset() -> None:
    """Every moto backend emptied, as a new ``mock_aws()`` leaves them."""
    BackendDict.reset()


@dataclass
class Made:
    """What one real build left in moto: the tables (copied), the backend calls that made queues and buckets."""

    tables: Tables
    calls: list[tuple[BackendDict, str, str, str, tuple[Any, ...], dict[str, Any]]]
    shape: Shape
    result: Any = None

    def install(self) -> None:
        for account, region, saved in self.tables:
            dynamodb_backends[account][region].tables = copy.deepcopy(saved)
        for backends, account, region, method, args, kwargs in self.calls:
            try:
                getattr(backends[account][region], method)(*args, **copy.deepcopy(kwargs))
            except BucketAlreadyExists:  # installed over what a test left: the check that follows says so
                pass


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[BackendDict, str, str, str, tuple[Any, ...], dict[str, Any]]]]:
    """The queues and buckets made inside, as calls of moto's backends that can be made again."""
    calls: list[tuple[BackendDict, str, str, str, tuple[Any, ...], dict[str, Any]]] = []
    patched = [(SQSBackend, "create_queue", sqs_backends), (S3Backend, "create_bucket", s3_backends)]
    originals = [getattr(cls, name) for cls, name, _ in patched]
    for (cls, name, backends), original in zip(patched, originals, strict=True):

        def record(self: Any, *args: Any, _o: Any = original, _b: Any = backends, _n: str = name, **kwargs: Any) -> Any:
            calls.append((_b, self.account_id, self.region_name, _n, args, copy.deepcopy(kwargs)))
            return _o(self, *args, **kwargs)

        setattr(cls, name, record)
    try:
        yield calls
    finally:
        for (cls, name, _), original in zip(patched, originals, strict=True):
            setattr(cls, name, original)


def build(write: Callable[[], T]) -> Made:
    with recording() as calls:
        result = write()
    tables = [
        (account, region, copy.deepcopy(backend.tables))
        for account, region, backend in dynamodb_backends.iter_backends()
        if backend.tables
    ]
    return Made(tables, calls, shape(), result)


def check(expected: Shape, what: str) -> None:
    found = shape()
    if found != expected:
        differs = {name: (expected.get(name), found.get(name)) for name in {*found, *expected}}
        differs = {name: counts for name, counts in differs.items() if counts[0] != counts[1]}
        raise AssertionError(f"{what}; (made, found): {differs}")


@dataclass
class Baseline:
    """What ``admin.init`` (and the ``world`` rows) make, by table prefix and region; given to each test."""

    _made: dict[tuple[str, ...], Made] = field(default_factory=dict)

    def install(self, settings: Settings) -> None:
        """After ``reset``: the stage as ``admin.init(settings)`` leaves it, and nothing else."""
        key = (settings.table_prefix, settings.region)
        made = self._made.get(key)
        if made is None:
            self._made[key] = made = build(lambda: admin.init(settings))
        else:
            made.install()
        assert any(name.startswith("dynamodb/") for name in made.shape), made.shape
        assert all(count == 0 for count in made.shape.values()), f"admin.init stored something: {made.shape}"
        check(made.shape, "a test starts not from what admin.init makes")

    def install_rows(self, settings: Settings, name: str, write: Callable[[], T]) -> T:
        """After ``install``: what ``write()`` writes (rows, queues), as if it ran now; what it first returned."""
        key = (settings.table_prefix, settings.region, name)
        made = self._made.get(key)
        if made is None:
            self._made[key] = made = build(write)
        else:
            made.install()
            check(made.shape, f"the copied {name!r} is not what writing it makes")
        return made.result  # type: ignore[no-any-return]
