"""Whether a file descriptor is ready now, without waiting: one poll(2) with a zero timeout.

For the waits that skip a round of trio's epoll when what they wait for is already there
(fuselock.py: a FUSE request waiting on /dev/fuse; drivers/spares.py: a connect made at once,
a spare the engine closed). Not a wait itself: trio.lowlevel.wait_readable/wait_writable are.
"""
import select


def ready(fd, events: int) -> bool:
    """Whether `fd` (a descriptor or an object with fileno()) has one of poll's `events` now (POLLIN:
    readable; POLLOUT: writable)."""
    poll = select.poll()
    poll.register(fd, events)
    return bool(poll.poll(0))
