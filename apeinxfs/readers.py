"""Readers blocked in `stream` or `wait`: their caps, and one watcher for their signals.

pyfuse3 has no FUSE interrupt hook, so the daemon learns of Ctrl-C on a blocked `cat` by
reading the reader's /proc/PID/status. `Readers` admits blocked readers under a total cap
and a per-uid cap (TooMany, EAGAIN, with the reason, past either) and runs one watcher task
that checks every blocked reader once per SLICE_S (SCAN_CHUNK at a time, the chunks spread
over the slice), interrupting those whose thread has a signal pending or is gone. A reader itself sleeps on the runtime's Notifier with no
timeout of its own: it wakes only when its key changes or the watcher interrupts it. Each
reader's status file is kept open and re-read with pread (7 us of CPU a check here, against
10 us for open, read and close). Not here: what a reader waits for (nodes/), the FUSE
reply (fs.py).
`end_where` ends at once, with one error, the blocked reads of the callers a predicate picks, and refuses
theirs that come after (the daemon's mount was detached: those in its own mount namespace, mount.py).
"""
import collections
import contextlib
import errno
import math
import os
from collections.abc import Callable
from functools import partial

import attrs
import trio

from .kernel.errors import ApeinxError, TooMany

SLICE_S = 0.2  # how often the watcher checks blocked readers for signals: Ctrl-C ends a read within this
SCAN_CHUNK = 64  # readers checked at once: under 1 ms, and the chunks of a pass are spread over its slice
QUIET_SIGNALS = {17, 18, 23, 28}  # SIGCHLD SIGCONT SIGURG SIGWINCH: ignored by default
QUIET_MASK = sum(1 << (signum - 1) for signum in QUIET_SIGNALS)
STATUS_BYTES = 4096  # enough for the lines up to SigCgt unless the thread has very many groups


class Interrupted(ApeinxError):
    """The blocked reader has a signal pending, or is gone."""

    errno = errno.EINTR


SIGNALLED = partial(Interrupted, "the reader has a signal pending")


def signal_pending(status: bytes) -> bool:
    """Whether a /proc/PID/status text shows a signal pending that would end a read: pending
    (for the thread or its process), not blocked, not ignored, and not one ignored by default
    unless caught. Nothing pending, the usual answer, is found from two of the five masks
    (a third of the time of parsing them all, which is as much as the pread)."""
    pending = _mask(status, b"SigPnd") | _mask(status, b"ShdPnd")
    if not pending:
        return False
    pending &= ~_mask(status, b"SigBlk") & ~_mask(status, b"SigIgn")
    return bool(pending & ~(QUIET_MASK & ~_mask(status, b"SigCgt")))


def _mask(status: bytes, name: bytes) -> int:
    """The hexadecimal mask of line `name` (ValueError if there is none)."""
    start = status.index(b"\n" + name + b":\t") + len(name) + 3
    return int(status[start:status.index(b"\n", start)], 16)


class StatusFile:
    """A status file (/proc/PID/status of a reader's thread), kept open; fd None: it was gone
    at open. The fd stays bound to that thread: a reused pid reads as gone, never as another."""

    def __init__(self, path: str):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    @classmethod
    def of_thread(cls, pid: int) -> "StatusFile":
        return cls(f"/proc/{pid}/status")

    def signalled(self) -> bool:
        """Whether the thread has a signal pending that ends its read, or is gone."""
        if self.fd is None:
            return True
        try:
            size = STATUS_BYTES
            while b"\nSigCgt:" not in (status := os.pread(self.fd, size, 0)) and len(status) == size:
                size *= 4
            return signal_pending(status)
        except (OSError, ValueError):  # ESRCH: the thread has exited; or no status to read
            return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@attrs.define(eq=False)
class Reader:
    """One blocked read(2): whose it is (uid, and pid of the calling thread), how its signals are seen, the
    scope it sleeps in, and what makes the error that ends it (None while it may sleep; a fresh error at each
    raise)."""

    uid: int
    pid: int
    probe: object
    ending: Callable[[], ApeinxError] | None = None
    scope: trio.CancelScope | None = None

    def interrupt(self, error: Callable[[], ApeinxError] = SIGNALLED) -> None:
        self.ending = error
        if self.scope is not None:
            self.scope.cancel()


class Readers:
    """The registry of blocked readers: caps at admission, one signal watcher for them all."""

    def __init__(self, notifier, total: int, per_uid: int, probe=StatusFile.of_thread):
        self.notifier = notifier
        self.total, self.per_uid = total, per_uid
        self.probe = probe  # pid -> an object with signalled() and close()
        self.blocked: dict[Reader, None] = {}  # in order of arrival: each pass checks them in the same order
        self.by_uid: collections.Counter = collections.Counter()
        self._arrived = trio.Event()
        self.ended: Callable[[int], ApeinxError | None] = lambda pid: None  # pid -> the error its later reads end
        # with: end_where's, for a caller it picks; None: none

    def __len__(self) -> int:
        return len(self.blocked)

    def admit(self, uid: int, pid: int) -> Reader:
        """Register a reader about to block; TooMany past the total or the uid's cap, and end_where's error,
        once it ran, for a caller it picks."""
        if (error := self.ended(pid)) is not None:
            raise error
        if len(self.blocked) >= self.total:
            raise TooMany(f"too many blocked readers ({len(self.blocked)}, daemon.max_waiters); try again")
        if self.by_uid[uid] >= self.per_uid:
            raise TooMany(f"uid {uid} has {self.by_uid[uid]} blocked readers, the most one user may have "
                          f"(daemon.max_waiters_per_uid); try again")
        reader = Reader(uid, pid, self.probe(pid))
        if reader.probe.signalled():  # already signalled or gone: no need to wait a slice
            reader.ending = SIGNALLED
        self.blocked[reader] = None
        self.by_uid[uid] += 1
        self._arrived.set()
        return reader

    def leave(self, reader: Reader) -> None:
        del self.blocked[reader]
        self.by_uid[reader.uid] -= 1
        if not self.by_uid[reader.uid]:
            del self.by_uid[reader.uid]
        reader.probe.close()

    def scan(self, readers) -> None:
        """Interrupt those of `readers` still blocked whose thread is signalled or gone."""
        for reader in readers:
            if reader in self.blocked and reader.ending is None and reader.probe.signalled():
                reader.interrupt()

    def end_where(self, error: Callable[[], ApeinxError], ends: Callable[[int], bool]) -> int:
        """End with an `error()` now the blocked reads whose caller's pid `ends` picks, and each later one it picks
        at its first wait; how many it ended now."""
        self.ended = lambda pid: error() if ends(pid) else None
        ended = [reader for reader in self.blocked if ends(reader.pid)]
        for reader in ended:
            reader.interrupt(error)
        return len(ended)

    async def watch(self, slice_s: float = SLICE_S) -> None:
        """Check every blocked reader once per `slice_s`, SCAN_CHUNK at a time with the chunks
        spread evenly over the slice (short bursts keep other requests' waits short); sleep
        without a timer while no one is blocked."""
        while True:
            if not self.blocked:
                self._arrived = trio.Event()
                await self._arrived.wait()
            readers = list(self.blocked)
            starts = range(0, len(readers), SCAN_CHUNK)
            for start in starts:
                await trio.sleep(slice_s / len(starts))
                self.scan(readers[start:start + SCAN_CHUNK])

    @contextlib.contextmanager
    def waiting(self, deadline: float = math.inf):
        """A waiter for one read(2) (see Waiter), and its reader's leave once the read is over."""
        waiter = Waiter(self, deadline)
        try:
            yield waiter
        finally:
            if waiter.reader is not None:
                self.leave(waiter.reader)

    def check(self) -> None:
        """The per-uid counts add up to the readers blocked, and none is over its cap."""
        assert sum(self.by_uid.values()) == len(self.blocked) <= self.total
        assert all(0 < count <= self.per_uid for count in self.by_uid.values())


@attrs.define(eq=False)
class Waiter:
    """What one blocking read awaits each time it has nothing to return: admitted at its
    first wait, it sleeps until `key` changes, the watcher interrupts it (Interrupted, EINTR)
    or trio's clock passes `deadline` (TooMany: the kernel's FUSE request timeout is near)."""

    readers: Readers
    deadline: float
    reader: Reader | None = None

    async def __call__(self, key, caller) -> None:
        await self.blocking(caller, lambda: self.readers.notifier.wait(key))

    async def blocking(self, caller, wait):
        """Await `wait()` as a blocked read does (admitted at the first, ended by Interrupted or
        TooMany as above); its result. A remote file's read awaits its peer's answer so."""
        if self.reader is None:
            self.reader = self.readers.admit(caller.uid, caller.pid)
        reader, result = self.reader, None
        if reader.ending is None:
            with trio.CancelScope(deadline=self.deadline) as reader.scope:
                result = await wait()
            reader.scope = None
        if reader.ending is not None:
            raise reader.ending()
        if trio.current_time() >= self.deadline:
            raise TooMany("blocked read would pass the kernel's FUSE request timeout")
        return result
