"""fuselock.py: the lock pyfuse3's workers take to wait for a request, their wait, and its installation."""
import os

import pyfuse3
import pytest
import trio
import trio.testing

from apeinxfs import fuselock
from apeinxfs.fuselock import HandOffLock


async def test_waiters_get_the_lock_in_order_of_arrival():
    """Released, the lock passes to the task that has waited longest; one holder at a time."""
    lock, order, holding = HandOffLock(), [], []

    async def take(name):
        async with lock:
            holding.append(name)
            assert len(holding) == 1
            order.append(name)
            await trio.sleep(0.01)
            holding.remove(name)
    async with trio.open_nursery() as nursery:
        for name in "abcd":
            nursery.start_soon(take, name)
            await trio.testing.wait_all_tasks_blocked()
    assert order == list("abcd") and not lock.held and not lock.waiters


async def test_a_cancelled_waiter_leaves_the_queue():
    """A waiter cancelled before its turn is no longer queued, and the next one gets the lock."""
    lock, got, scope = HandOffLock(), [], trio.CancelScope()

    async def take(name):
        async with lock:
            got.append(name)

    async def take_in_scope(name):
        with scope:
            await take(name)
    async with trio.open_nursery() as nursery:
        await lock.__aenter__()
        nursery.start_soon(take_in_scope, "cancelled")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "next")
        await trio.testing.wait_all_tasks_blocked()
        assert len(lock.waiters) == 2
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(lock.waiters) == 1
        await lock.__aexit__(None, None, None)
    assert got == ["next"] and not lock.held


@pytest.fixture
def restored_pyfuse3_trio():
    before = pyfuse3.trio
    yield
    pyfuse3.trio = before


def test_install_gives_pyfuse3_trio_with_the_hand_off_lock(restored_pyfuse3_trio):
    """After install, pyfuse3's trio makes HandOffLocks and waits with a ReadyFirst, and is trio in all else."""
    fuselock.install()
    assert pyfuse3.trio.Lock is HandOffLock
    assert isinstance(pyfuse3.trio.lowlevel.wait_readable.__self__, fuselock.ReadyFirst)
    assert pyfuse3.trio.open_nursery is trio.open_nursery
    assert pyfuse3.trio.lowlevel.current_task is trio.lowlevel.current_task


@pytest.fixture
def pipe():
    reader, writer = os.pipe()
    yield reader, writer
    os.close(reader), os.close(writer)


async def test_wait_readable_takes_what_is_there_at_once_and_waits_for_what_is_not(pipe):
    """With data waiting, wait_readable returns without letting another task run; without, it waits until
    data comes; cancelled, it raises even with data waiting."""
    reader, writer = pipe
    waiting, ran = fuselock.ReadyFirst(), []

    async def other():
        ran.append("other")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        os.write(writer, b"x")
        await waiting.wait_readable(reader)
        assert ran == []  # no checkpoint: the other task has not run
    os.read(reader, 1)
    returned = []

    async def waiter():
        await waiting.wait_readable(reader)
        returned.append(True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []  # nothing to read: it waits
        os.write(writer, b"y")
    assert returned == [True]
    with trio.CancelScope() as scope:
        scope.cancel()
        await waiting.wait_readable(reader)
    assert scope.cancelled_caught


async def test_a_backlog_taken_at_once_still_yields_every_few_takes(pipe):
    """YIELD_TAKES takes in a row that found data at once let no other task run; the next waits through trio
    (a checkpoint)."""
    reader, writer = pipe
    waiting, ran = fuselock.ReadyFirst(), []
    os.write(writer, b"x")

    async def other():
        ran.append("other")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(fuselock.YIELD_TAKES):
            await waiting.wait_readable(reader)
        assert ran == []
        with trio.testing.assert_checkpoints():
            await waiting.wait_readable(reader)
