"""Fixtures of the client's fast tests: a scripted API (``fakeapi.FakeAPI``) and a client of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakeapi import APP_ID, SECRET, FakeAPI

from opendevelop import Client


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    api = FakeAPI()
    yield api
    api.close()


@pytest.fixture
def client(fake: FakeAPI) -> Client:
    return Client(fake.url, APP_ID, SECRET, timeout=5, backoff=0.01)
