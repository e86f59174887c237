"""The pool of spare containers, with a fake runner: what it keeps, hands out, replaces and removes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dispatcher import pool as pool_module
from dispatcher.pool import Pool, Shape
from dispatcher.runner import RunSpec


class FakeRunner:
    server = "test"

    def __init__(self) -> None:
        self.started: list[tuple[str, Shape]] = []
        self.removed: list[str] = []
        self.fail = False
        self._lock = threading.Lock()

    def start_spare(self, shape: Shape) -> str:
        if self.fail:
            raise RuntimeError("engine says no")
        with self._lock:
            cid = f"c{len(self.started)}"
            self.started.append((cid, shape))
        return cid

    def remove(self, cid: str) -> None:
        with self._lock:
            self.removed.append(cid)


def spec(image: str = "base:1", memory_mb: int = 256, network: bool = False) -> RunSpec:
    return RunSpec("s1", image, ["true"], 10, memory_mb, 1.0, 64, 64, 1024, network=network)


def eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def pool(runner: FakeRunner):
    p = Pool(runner, size=2)  # type: ignore[arg-type]
    p.start()
    yield p
    p.close()


def test_the_first_run_of_a_shape_finds_no_spare_and_later_runs_do(pool, runner):
    assert pool.take(spec()) is None
    eventually(lambda: pool.spares() == 2)

    first, second = pool.take(spec()), pool.take(spec())

    assert {first, second} == {"c0", "c1"}
    assert all(shape == Shape("base:1", 256, 1.0, 64, 64) for _, shape in runner.started)
    eventually(lambda: pool.spares() == 2)  # each one taken is replaced
    assert len(runner.started) == 4
    assert runner.removed == []  # taken spares belong to their runs now


def test_a_spare_is_never_handed_out_twice(pool):
    pool.take(spec())
    eventually(lambda: pool.spares() == 2)
    taken = [pool.take(spec()) for _ in range(30)]
    handed = [cid for cid in taken if cid is not None]
    assert len(handed) == len(set(handed)) >= 2


def test_a_spare_of_another_shape_is_not_handed_out(pool):
    pool.take(spec(memory_mb=256))
    eventually(lambda: pool.spares() == 2)

    assert pool.take(spec(memory_mb=512)) is None
    assert pool.take(spec(image="other:2")) is None


def test_sandboxes_with_network_access_are_never_pooled(pool, runner):
    assert pool.take(spec(network=True)) is None
    time.sleep(0.2)
    assert runner.started == []


def test_only_the_most_recent_shapes_are_kept(pool, runner):
    for memory in (128, 256, 512):
        pool.take(spec(memory_mb=memory))
        eventually(lambda: pool.spares() >= 2)
    eventually(lambda: len(runner.removed) == 2)

    oldest = {cid for cid, shape in runner.started if shape.memory_mb == 128}
    assert set(runner.removed) == oldest
    eventually(lambda: pool.spares() == 2 * pool_module.SHAPES)


def test_idle_spares_are_replaced(runner, monkeypatch):
    monkeypatch.setattr(pool_module, "IDLE_MAX_S", 0.2)
    p = Pool(runner, size=1)  # type: ignore[arg-type]
    p.start()
    try:
        p.take(spec())
        eventually(lambda: p.spares() == 1)
        p._wake.set()
        time.sleep(0.3)
        p._wake.set()
        eventually(lambda: "c0" in runner.removed)
        eventually(lambda: p.spares() == 1)
        assert p.take(spec()) != "c0"
    finally:
        p.close()


def test_pause_removes_the_spares_and_makes_none_until_resumed(pool, runner):
    pool.take(spec())
    eventually(lambda: pool.spares() == 2)

    pool.pause()

    assert sorted(runner.removed) == ["c0", "c1"]
    assert pool.take(spec()) is None
    time.sleep(0.2)
    assert len(runner.started) == 2
    pool.resume()
    eventually(lambda: pool.spares() == 2)


def test_close_removes_every_spare(runner):
    p = Pool(runner, size=3)  # type: ignore[arg-type]
    p.start()
    p.take(spec())
    eventually(lambda: p.spares() == 3)

    p.close()

    assert sorted(runner.removed) == ["c0", "c1", "c2"]
    assert p.spares() == 0


def test_an_engine_that_fails_is_retried_with_backoff(runner):
    runner.fail = True
    p = Pool(runner, size=1)  # type: ignore[arg-type]
    p.start()
    try:
        assert p.take(spec()) is None
        time.sleep(0.6)
        runner.fail = False
        eventually(lambda: p.spares() == 1, timeout=10)
    finally:
        p.close()


def test_size_zero_is_off(runner):
    p = Pool(runner, size=0)  # type: ignore[arg-type]
    p.start()
    assert p.take(spec()) is None
    time.sleep(0.1)
    assert runner.started == []
