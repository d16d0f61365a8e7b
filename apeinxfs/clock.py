"""The daemon's time: wall-clock microseconds that never go backwards and always advance.

`WallClock` is the one clock the Runtime, admission, the kernel (through the times of the events it is
given), deadlines, ledgers, retention and bills read. It counts on with a steady clock (trio's, so
intervals and virtual time in tests agree with it), follows the host's wall clock when that is stepped
forward (NTP setting a clock that was behind at boot, a resume from suspend: the steady clock does not
count suspend) and does not follow a step back: it keeps counting from where it was, and says once how
far behind the host is. At start it is held at the journal's last time at least (`not_before`), so a host
clock set back across a restart cannot freeze the kernel's time. It is not the kernel's clock: the kernel
only sees the times carried by the events (replay applies each at its journaled time).
"""
import logging
import time
from typing import Protocol

import trio
import trio.testing

log = logging.getLogger(__name__)
STEP_US = 1_000_000  # the host clock moved this much more (or less) than the steady clock: it was stepped


class Host(Protocol):
    """A clock the daemon reads: `now_us` the wall time; a host may also offer `steady_us`."""

    def now_us(self) -> int: ...


class HostClock:
    """The machine's clocks: the wall clock, and a steady one (trio's inside trio.run, else CLOCK_MONOTONIC)
    whose readings go on without a jump when trio's clock is another (recovery before trio.run, a test's run).
    In a run on trio's MockClock (tests) the wall clock counts on with the mock's virtual time instead, from the
    wall time at the run's first reading. Read `steady_us` first: `now_us` goes with the steady reading before."""

    def __init__(self):
        self._source: object = None  # the clock of the last steady reading: a trio clock, or None outside trio
        self._base_us = 0  # added to the source's reading so the steady time goes on from the last one
        self._steady_us = 0
        self._virtual_wall_us: int | None = None  # on a MockClock: the wall time less the steady time

    def now_us(self) -> int:
        if self._virtual_wall_us is not None:
            return self._virtual_wall_us + self._steady_us
        return time.time_ns() // 1000

    def steady_us(self) -> int:
        try:
            source = trio.lowlevel.current_clock()
            reading = int(source.current_time() * 1e6)
        except RuntimeError:  # outside trio.run
            source, reading = None, time.monotonic_ns() // 1000
        if source is not self._source:
            self._switch(source, reading)
        self._steady_us = self._base_us + reading
        return self._steady_us

    def _switch(self, source: object, reading: int) -> None:
        """Go on from the last steady time with `source`, now at `reading`."""
        self._source, self._base_us = source, self._steady_us - reading
        virtual = isinstance(source, trio.testing.MockClock)
        self._virtual_wall_us = time.time_ns() // 1000 - self._steady_us if virtual else None


class WallClock:
    """apeinxfs time over a host clock (the machine's by default). A host with no steady reading (a test's
    clock, the simulator's) is its own steady clock: its time moves only as it is moved."""

    def __init__(self, host: Host | None = None):
        self.host = host if host is not None else HostClock()
        self._steady = getattr(self.host, "steady_us", self.host.now_us)
        self._last_us: int | None = None  # the last time read
        self._last_steady = 0
        self._behind = False  # the host's clock is behind and was said to be

    def now_us(self) -> int:
        steady = self._steady()
        wall = self.host.now_us()
        if self._last_us is None:
            self._last_us = wall
        else:
            self._last_us = self._followed(wall, self._last_us + max(0, steady - self._last_steady))
        self._last_steady = steady
        return self._last_us

    def not_before(self, floor_us: int) -> None:
        """Count on from `floor_us` (the journal's last time, at start) if the time read now is before it."""
        if self.now_us() < floor_us:
            self._last_us = floor_us
            self.now_us()

    def _followed(self, wall: int, counted: int) -> int:
        """The time now, `counted` on with the steady clock since the last reading: the host's `wall`
        instead when that is ahead (by more than STEP_US: it was stepped, said in the log)."""
        if wall > counted + STEP_US:
            log.warning("clock: the host clock stepped %.3f s ahead of the daemon's (set, or resumed from "
                        "suspend): followed", (wall - counted) / 1e6)
        if wall >= counted:
            self._behind = False
            return wall
        if wall < counted - STEP_US and not self._behind:
            self._behind = True
            log.warning("clock: the host clock is %.3f s behind the daemon's (set back, or behind the journal's "
                        "last time): not followed, the daemon's time counts on from its own", (counted - wall) / 1e6)
        return counted
