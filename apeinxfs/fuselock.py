"""The lock pyfuse3's workers take to wait for the next FUSE request, made cheaper than trio.Lock.

pyfuse3 runs a pool of worker tasks; each takes one lock, waits until /dev/fuse is readable,
releases the lock and handles the request it reads, so that one worker at a time waits on the
device. That lock is `trio.Lock()`, taken twice per request (by the worker that got the request
and by the one that waits next): trio's lock checkpoints when it is free and raises and catches
WouldBlock when it is held, about a fifth of pyfuse3's own CPU per request. `HandOffLock` keeps
the same first-come hand-off without either; `install()` gives it to pyfuse3, which reaches trio
through its module attribute `trio` (pyfuse3.asyncio swaps that attribute the same way). Not
here: the workers themselves (pyfuse3), the request handlers (fs.py).
"""
import collections
import types

import pyfuse3
import trio


class HandOffLock:
    """A first-come lock: released, it passes straight to the task that has waited longest. Taking a
    free one is no checkpoint (pyfuse3's worker checkpoints at once, waiting for the device); a waiter
    may be cancelled."""

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


def install() -> None:
    """Make pyfuse3's workers wait for requests under a HandOffLock (before pyfuse3.main): pyfuse3 gets
    all of trio, but its Lock."""
    pyfuse3.trio = types.SimpleNamespace(**dict(vars(trio), Lock=HandOffLock))
