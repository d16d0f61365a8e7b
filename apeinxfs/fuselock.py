"""The lock pyfuse3's workers take to wait for the next FUSE request, and their wait, made cheaper than trio's.

pyfuse3 runs a pool of worker tasks; each takes one lock, waits until /dev/fuse is readable,
releases the lock and handles the request it reads, so that one worker at a time waits on the
device. That lock is `trio.Lock()`, taken twice per request (by the worker that got the request
and by the one that waits next): trio's lock checkpoints when it is free and raises and catches
WouldBlock when it is held, about a fifth of pyfuse3's own CPU per request. `HandOffLock` keeps
the same first-come hand-off without either. The worker the lock passes to then waits for the
device with trio's wait_readable, a round of epoll even when a request is already there (a burst);
`ReadyFirst` here polls first and takes such a request in the same turn (daemon CPU per task of
4 tasks at once 0.93-0.945x with one token, 0.96x with 32). `install()` gives both to pyfuse3, which
reaches trio through its module attribute `trio` (pyfuse3.asyncio swaps that attribute the same
way). Not here: the workers themselves (pyfuse3), the request handlers (fs.py).
"""
import collections
import select
import types

import pyfuse3
import trio

from .polling import ready

YIELD_TAKES = 8  # requests in a row taken at once, after which a worker waits through trio's epoll


class HandOffLock:
    """A first-come lock: released, it passes straight to the task that has waited longest. Taking a
    free one is no checkpoint (pyfuse3's worker then waits for the device: ReadyFirst yields at least
    every YIELD_TAKES requests); a waiter may be cancelled."""

    def __init__(self):
        self.held = False
        self.waiters: collections.deque = collections.deque()

    async def __aenter__(self) -> None:
        if not self.held:
            self.held = True
            return
        task = trio.lowlevel.current_task()
        self.waiters.append(task)

        def abort(_raise_cancel):
            self.waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED
        await trio.lowlevel.wait_task_rescheduled(abort)

    async def __aexit__(self, *exc_info) -> None:
        if self.waiters:
            trio.lowlevel.reschedule(self.waiters.popleft())
        else:
            self.held = False


class ReadyFirst:
    """pyfuse3's trio.lowlevel.wait_readable: a request already waiting on the device is taken at once, so
    the worker the lock passed to goes on in the same turn instead of a round of epoll (a burst of
    requests). YIELD_TAKES such takes in a row wait through trio once (a checkpoint): a worker serving a
    backlog of requests whose handlers never await cannot hold the loop. A cancel always stops it."""

    def __init__(self):
        self.in_a_row = 0

    async def wait_readable(self, fd: int) -> None:
        if self.in_a_row < YIELD_TAKES and ready(fd, select.POLLIN):
            self.in_a_row += 1
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        self.in_a_row = 0
        await trio.lowlevel.wait_readable(fd)


def install() -> None:
    """Make pyfuse3's workers wait for requests under a HandOffLock (before pyfuse3.main), taking a request
    already there without a round of epoll: pyfuse3 gets all of trio, but its Lock and wait_readable."""
    lowlevel = types.SimpleNamespace(**dict(vars(trio.lowlevel), wait_readable=ReadyFirst().wait_readable))
    pyfuse3.trio = types.SimpleNamespace(**dict(vars(trio), Lock=HandOffLock, lowlevel=lowlevel))
