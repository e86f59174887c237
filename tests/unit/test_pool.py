"""The pool of spare containers, with fake make/remove and a fake clock: what it keeps, hands out, replaces, removes.

Most tests drive the pool's work one step at a time (``tend()``) instead of
its thread, so nothing waits on real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dispatcher import pool as pool_module
from dispatcher.container import Shape
from dispatcher.pool import Pool


class FakeMaker:
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shape(image: str = "base:1", memory_mb: int = 256, network: bool = False) -> Shape:
    return Shape(image, memory_mb, 1.0, 64, 64, network)


def settle(pool: Pool, steps: int = 20) -> None:
    """Let the pool do all it has to do now."""
    for _ in range(steps):
        if pool.tend() > 0:
            return
    raise AssertionError("the pool never rests")


@pytest.fixture
def maker() -> FakeMaker:
    return FakeMaker()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def new_pool(maker: FakeMaker, clock: FakeClock, size: int) -> Pool:
    p = Pool(maker.start_spare, maker.remove, size=size, clock=clock)
    p.start(background=False)
    return p


@pytest.fixture
def pool(maker: FakeMaker, clock: FakeClock):
    p = new_pool(maker, clock, 2)
    yield p
    p.close()


def test_the_first_run_of_a_shape_finds_no_spare_and_later_runs_do(pool, maker):
    assert pool.take(shape()) is None
    settle(pool)
    assert pool.spares() == 2

    first, second = pool.take(shape()), pool.take(shape())

    assert {first, second} == {"c0", "c1"}
    assert all(s == Shape("base:1", 256, 1.0, 64, 64) for _, s in maker.started)
    settle(pool)
    assert pool.spares() == 2  # each one taken is replaced
    assert len(maker.started) == 4
    assert maker.removed == []  # taken spares belong to their runs now


def test_a_spare_is_never_handed_out_twice(pool):
    pool.take(shape())
    taken = []
    for _ in range(30):
        pool.tend()
        taken.append(pool.take(shape()))
    handed = [cid for cid in taken if cid is not None]
    assert len(handed) == len(set(handed)) >= 2


def test_a_spare_of_another_shape_is_not_handed_out(pool):
    pool.take(shape(memory_mb=256))
    settle(pool)

    assert pool.take(shape(memory_mb=512)) is None
    assert pool.take(shape(image="other:2")) is None


def test_sandboxes_with_network_access_are_never_pooled(pool, maker):
    assert pool.take(shape(network=True)) is None
    settle(pool)
    assert maker.started == []


def test_only_the_most_recent_shapes_are_kept(pool, maker):
    for memory in (128, 256, 512):
        pool.take(shape(memory_mb=memory))
        settle(pool)

    oldest = {cid for cid, s in maker.started if s.memory_mb == 128}
    assert len(oldest) == 2 and set(maker.removed) == oldest
    assert pool.spares() == 2 * pool_module.SHAPES


def test_idle_spares_are_replaced(pool, maker, clock):
    pool.take(shape())
    settle(pool)
    assert pool.spares() == 2

    clock.now += pool_module.IDLE_MAX_S + 1
    settle(pool)

    assert sorted(maker.removed) == ["c0", "c1"]
    assert pool.spares() == 2
    assert pool.take(shape()) not in ("c0", "c1")


def test_pause_removes_the_spares_and_makes_none_until_resumed(pool, maker):
    pool.take(shape())
    settle(pool)

    pool.pause()

    assert sorted(maker.removed) == ["c0", "c1"]
    assert pool.take(shape()) is None
    settle(pool)
    assert len(maker.started) == 2
    pool.resume()
    settle(pool)
    assert pool.spares() == 2


def test_close_removes_every_spare(maker, clock):
    p = new_pool(maker, clock, 3)
    p.take(shape())
    settle(p)
    assert p.spares() == 3

    p.close()

    assert sorted(maker.removed) == ["c0", "c1", "c2"]
    assert p.spares() == 0


def test_an_engine_that_fails_is_retried_with_backoff(maker, clock):
    maker.fail = True
    p = new_pool(maker, clock, 1)
    assert p.take(shape()) is None
    first = p.tend()
    assert first > 0
    maker.fail = False

    assert p.tend() == pytest.approx(first)  # backing off: nothing is tried before its time
    assert p.spares() == 0
    clock.now += first
    settle(p)

    assert p.spares() == 1
    p.close()


def test_size_zero_is_off(maker, clock):
    p = new_pool(maker, clock, 0)
    assert p.take(shape()) is None
    p.tend()
    assert maker.started == []


def eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_its_thread_fills_the_pool_and_close_stops_it(maker):
    p = Pool(maker.start_spare, maker.remove, size=2)
    p.start()
    try:
        assert p.take(shape()) is None  # wakes the thread
        eventually(lambda: p.spares() == 2)
    finally:
        p.close()
    assert sorted(maker.removed) == ["c0", "c1"]
    assert p._thread is not None and not p._thread.is_alive()
