"""Tier 1: the daemon's time (clock.py) over a fake host whose wall and steady clocks the test sets, and the
Runtime over it: host steps forward followed, steps back not, a restart behind the journal's last time going
on from it, the journal still replaying identically. No FUSE here.
"""
import logging
import time

import trio
import trio.testing

from apeinxfs import verify
from apeinxfs.clock import STEP_US, HostClock, WallClock
from apeinxfs.kernel.events import Submit, Tick
from apeinxfs.kernel.spec import TaskSpec
from test_redteam4 import BEFORE_US, FakeWallClock, run_to_end, started

HOUR_US = 3600 * 10**6


class FakeHost:
    """A host whose wall clock (`wall`) and steady clock (`steady`) the test sets; `tick` moves both."""

    def __init__(self, wall_us: int):
        self.wall, self.steady = wall_us, 0

    def now_us(self) -> int:
        return self.wall

    def steady_us(self) -> int:
        return self.steady

    def tick(self, us: int) -> None:
        self.wall += us
        self.steady += us


def clock_on(wall_us: int = BEFORE_US) -> tuple[WallClock, FakeHost]:
    host = FakeHost(wall_us)
    clock = WallClock(host)
    clock.now_us()
    return clock, host


def clock_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "apeinxfs.clock"]


def test_the_time_advances_with_the_steady_clock_and_reads_the_host_wall_time():
    """With no step, the daemon's time is the host's wall time as both clocks advance."""
    clock, host = clock_on()
    host.tick(5_000_000)
    assert clock.now_us() == host.wall == BEFORE_US + 5_000_000


def test_a_step_forward_is_followed_with_one_log_line(caplog):
    """A host clock stepped an hour ahead is followed at the next reading, and the log says so once."""
    caplog.set_level(logging.WARNING, "apeinxfs.clock")
    clock, host = clock_on()
    host.wall += HOUR_US
    host.tick(1_000)
    assert clock.now_us() == host.wall
    host.tick(1_000)
    assert clock.now_us() == host.wall
    assert len(clock_lines(caplog)) == 1 and "stepped 3600.000 s ahead" in clock_lines(caplog)[0]


def test_a_step_back_is_not_followed_and_is_said_once(caplog):
    """A host clock set an hour back: the time keeps counting on from where it was, one log line says how far
    behind the host is, and the time joins the host's again when the host is stepped back to it."""
    caplog.set_level(logging.WARNING, "apeinxfs.clock")
    clock, host = clock_on()
    host.wall -= HOUR_US
    host.tick(2_000_000)
    assert clock.now_us() == BEFORE_US + 2_000_000
    host.tick(3_000_000)
    assert clock.now_us() == BEFORE_US + 5_000_000
    assert clock_lines(caplog) == ["clock: the host clock is 3600.000 s behind the daemon's (set back, or behind "
                                   "the journal's last time): not followed, the daemon's time counts on from its own"]
    host.wall += HOUR_US
    assert clock.now_us() == host.wall == BEFORE_US + 5_000_000
    assert len(clock_lines(caplog)) == 1


def test_a_small_difference_is_no_step(caplog):
    """The host's wall clock a little behind the steady count holds the time, a little ahead moves it: no log."""
    caplog.set_level(logging.WARNING, "apeinxfs.clock")
    clock, host = clock_on()
    host.wall -= STEP_US // 2
    assert clock.now_us() == BEFORE_US
    host.wall += STEP_US
    assert clock.now_us() == BEFORE_US + STEP_US // 2
    assert clock_lines(caplog) == []


def test_the_time_starts_no_earlier_than_the_floor_and_counts_on_from_it():
    """Held at a floor a day ahead of the host (the journal's last time), the time counts on from the floor."""
    clock, host = clock_on()
    clock.not_before(BEFORE_US + 24 * HOUR_US)
    host.tick(7_000_000)
    assert clock.now_us() == BEFORE_US + 24 * HOUR_US + 7_000_000
    clock.not_before(BEFORE_US)
    assert clock.now_us() == BEFORE_US + 24 * HOUR_US + 7_000_000


def test_a_host_clock_of_one_reading_is_its_own_steady_clock():
    """A test's or the simulator's clock (wall time only) moves the time as it moves, never back."""
    fake = FakeWallClock(BEFORE_US)
    clock = WallClock(fake)
    clock.now_us()
    fake.now -= HOUR_US
    assert clock.now_us() == BEFORE_US
    fake.now += 5_000_000
    assert clock.now_us() == BEFORE_US + 5_000_000


def test_the_steady_clock_goes_on_across_trio_runs_and_never_back():
    """The machine's steady clock read outside trio, then in a run on a mock clock (at 0), then in a run on
    trio's own clock: each reading is at least the one before, and no run's start is a jump."""
    host = HostClock()
    readings = [host.steady_us()]

    async def read_after(seconds: float) -> None:
        readings.append(host.steady_us())
        await trio.sleep(seconds)
        readings.append(host.steady_us())

    trio.run(read_after, 3600, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(read_after, 0.001)
    assert readings == sorted(readings)
    assert readings[2] - readings[1] == 3600 * 10**6
    assert readings[3] - readings[0] < 3600 * 10**6 + 60 * 10**6


def test_a_restart_behind_the_journal_goes_on_from_it_and_replays_identically(tmp_path):
    """Restarted with the host a day behind, the restart and what follows are stamped after the first run's
    last time, a deadline falls due, and `replay --verify` finds the journal identical."""
    clock = FakeWallClock(BEFORE_US)
    first = started(tmp_path, clock)
    run_to_end(first, clock, 5)
    last_us = first.kernel.now_us
    first.journal.close()
    clock.now -= 24 * HOUR_US
    rt = started(tmp_path, clock)
    try:
        assert rt.kernel.now_us == last_us
        pid = rt.commit([Submit(spec=TaskSpec(name="soon", max_tokens=5, deadline_us=1, tenant="t"), uid=1000)])[0]
        clock.now += 2_000_000
        rt.deliver(Tick())
        task = rt.kernel.tasks[pid]
        times = [int(line.split(b",")[1]) for line in rt.kernel.trace.of_task(task).splitlines()[1:]]
        assert task.done and times[0] == last_us and times[-1] == last_us + 2_000_000, times
    finally:
        rt.journal.close()
    journal = verify.open_journal(str(tmp_path / "state"))
    try:
        report = verify.verify(journal)
    finally:
        journal.close()
    assert report.divergence is None and report.events, report


def test_in_a_run_on_a_mock_clock_the_time_is_the_virtual_time():
    """Under trio's MockClock the daemon's time moves exactly as the virtual time: not with real time spent
    working (the host's wall clock), but with a virtual sleep."""
    clock = WallClock()

    async def elapsed() -> list[int]:
        start = clock.now_us()
        time.sleep(0.01)  # real time passes, virtual time does not
        working = clock.now_us()
        await trio.sleep(7200)
        return [working - start, clock.now_us() - start]

    assert trio.run(elapsed, clock=trio.testing.MockClock(autojump_threshold=0)) == [0, 7200 * 10**6]


def test_the_runtime_stamps_follow_a_step_forward_and_not_a_step_back(tmp_path):
    """A Runtime on a host whose clock is set an hour back, then two hours forward: each task's submit is
    stamped at the steady count after the step back, and at the host's new time after the step forward."""
    host = FakeHost(BEFORE_US)
    rt = started(tmp_path, host)
    try:
        stamps = []
        for step_us in (-HOUR_US, 2 * HOUR_US):
            host.wall += step_us
            host.tick(1_000_000)
            pid = rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=5, tenant="t"), uid=1000)])[0]
            stamps.append(rt.kernel.tasks[pid].submitted_us)
    finally:
        rt.journal.close()
    assert stamps == [BEFORE_US + 1_000_000, BEFORE_US + HOUR_US + 2_000_000]
