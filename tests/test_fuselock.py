"""fuselock.py: the lock pyfuse3's workers take to wait for a request, and its installation."""
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
    """After install, pyfuse3's trio makes HandOffLocks and is trio in all else."""
    fuselock.install()
    assert pyfuse3.trio.Lock is HandOffLock
    assert pyfuse3.trio.lowlevel is trio.lowlevel and pyfuse3.trio.open_nursery is trio.open_nursery
