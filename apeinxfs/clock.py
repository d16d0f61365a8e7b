"""The daemon's time: wall-clock microseconds that never go backwards and always advance.

`WallClock` is the one clock the Runtime, admission, the kernel (through the times of the events it is
given), deadlines, ledgers, retention and bills read. It counts on with a steady clock (CLOCK_BOOTTIME,
which counts suspend; a test's virtual time under trio's MockClock), follows the host's wall clock when
that is stepped forward (NTP setting a clock that was behind at boot) and does not follow a step back: it
keeps counting from where it was, and says how far behind the host is (again when that grows by a step;
rate-limited). At start it is held at the journal's last time at least (`not_before`), so a host clock set
back across a restart cannot freeze the kernel's time. While it is ahead of the host's by more than a
minute, `ahead` says so (/ai/health). It is not the kernel's clock: the kernel
only sees the times carried by the events (replay applies each at its journaled time).
"""
import logging
import time
from typing import Callable, Protocol

import trio
import trio.testing

from .ratelog import RateLog

log = logging.getLogger(__name__)
STEP_US = 1_000_000  # the host clock moved this much more (or less) than the steady clock: it was stepped
AHEAD_WARNED_US = 60_000_000  # /health warns while the daemon's time is ahead of the host's by more
LOG_BURST, LOG_WINDOW_S = 5, 600.0  # lines of each kind (steps followed, host behind) per window


class Host(Protocol):
    """A clock the daemon reads: `now_us` the wall time; a host may also offer `steady_us`."""

    def now_us(self) -> int: ...


class HostClock:
    """The machine's clocks: the wall clock, and a steady one, CLOCK_BOOTTIME: CLOCK_MONOTONIC (trio's clock)
    and the time suspended, so the daemon's time counts a suspend even while the host's wall clock is behind.
    In a trio run on a MockClock (tests) both count the mock's virtual time instead, from the readings at the
    run's first use, so a test's time is its virtual time. Read `steady_us` first: `now_us` goes with it."""

    def __init__(self) -> None:
        self._trio_clock: object = None  # trio's clock at the last reading (None: outside trio.run)
        self._mock: trio.testing.MockClock | None = None  # the MockClock the steady time is read from
        self._base_us = 0  # added to the source's reading so the steady time goes on from the last one
        self._steady_us = 0
        self._virtual_wall_us: int | None = None  # on a MockClock: the wall time less the steady time

    def now_us(self) -> int:
        if self._virtual_wall_us is not None:
            return self._virtual_wall_us + self._steady_us
        return time.time_ns() // 1000

    def steady_us(self) -> int:
        try:
            trio_clock = trio.lowlevel.current_clock()
        except RuntimeError:  # outside trio.run
            trio_clock = None
        if trio_clock is not self._trio_clock:
            self._trio_clock = trio_clock
            self._read_from(trio_clock if isinstance(trio_clock, trio.testing.MockClock) else None)
        self._steady_us = self._base_us + self._reading()
        return self._steady_us

    def _reading(self) -> int:
        if self._mock is None:
            return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1000
        return int(self._mock.current_time() * 1e6)

    def _read_from(self, mock: trio.testing.MockClock | None) -> None:
        """Read the steady time from `mock` (None: CLOCK_BOOTTIME), going on from the last reading."""
        if mock is self._mock:
            return
        self._mock = mock
        self._base_us = self._steady_us - self._reading()
        self._virtual_wall_us = None if mock is None else time.time_ns() // 1000 - self._steady_us


class WallClock:
    """apeinxfs time over a host clock (the machine's by default). A host with no steady reading (a test's
    clock, the simulator's) is its own steady clock: its time moves only as it is moved. `on_step` is called
    when a step forward is followed (the Runtime wakes its deadline timer, whose wait was in the old time)."""

    def __init__(self, host: Host | None = None, on_step: Callable[[], None] = lambda: None) -> None:
        self.host = host if host is not None else HostClock()
        self.on_step = on_step
        self._steady: Callable[[], int] = getattr(self.host, "steady_us", self.host.now_us)
        self._last_us: int | None = None  # the last time read
        self._last_steady = 0
        self._behind_said_us = 0  # how far behind the host's clock was last said to be (0: it is not behind)
        self._ahead_why = "the host's clock was set back"  # why the daemon's time may be ahead: then the last step
        # followed or floor taken
        self._log = RateLog(log, burst=LOG_BURST, window_s=LOG_WINDOW_S, clock=lambda: self._last_steady / 1e6)

    def now_us(self) -> int:
        steady = self._steady()
        wall = self.host.now_us()
        if self._last_us is None:
            self._last_us = wall
        else:
            self._last_us = self._followed(wall, self._last_us + max(0, steady - self._last_steady))
        self._last_steady = steady
        return self._last_us

    def steady_us(self) -> int:
        """The steady clock's reading in µs (only its differences mean something): for spans of real time
        that no step of the host's clock, followed or not, nor the journal's floor, should stretch."""
        return self._steady()

    def not_before(self, floor_us: int) -> None:
        """Count on from `floor_us` (the journal's last time, at start) if the time read now is before it."""
        if self.now_us() < floor_us:
            self._last_us = floor_us
            self._ahead_why = "the journal's last time was ahead of the host's clock at start"
            self.now_us()

    def ahead(self) -> str | None:
        """/health's warning while the daemon's time is ahead of the host's by more than AHEAD_WARNED_US:
        by how much, why, and what follows from it; None while it is not."""
        ahead_us = self.now_us() - self.host.now_us()
        if ahead_us <= AHEAD_WARNED_US:
            return None
        return (f"clock: the daemon's time is {ahead_us / 1e6:.0f} s ahead of the host's ({self._ahead_why}); "
                "deadlines, retention and bills count from the daemon's time, which does not go back")

    def _followed(self, wall: int, counted: int) -> int:
        """The time now, `counted` on with the steady clock since the last reading: the host's `wall`
        instead when that is ahead (by more than STEP_US: it was stepped, said in the log)."""
        if wall > counted + STEP_US:
            self._log.log("clock: host steps followed", logging.WARNING, "clock: the host clock stepped %.3f s "
                          "ahead of the daemon's (set, by NTP or by hand): followed", (wall - counted) / 1e6)
            self._ahead_why = f"a host step {(wall - counted) / 1e6:.0f} s forward was followed, then the host set back"
            self.on_step()
        if wall >= counted:
            self._behind_said_us = 0
            return wall
        if wall < counted - self._behind_said_us - STEP_US:
            self._behind_said_us = counted - wall
            self._log.log("clock: host behind", logging.WARNING, "clock: the host clock is %.3f s behind the "
                          "daemon's (set back, or behind the journal's last time): not followed, the daemon's "
                          "time counts on from its own", (counted - wall) / 1e6)
        return counted
