"""Tier 1: the daemon's time (clock.py) over a fake host whose wall and steady clocks the test sets, and the
Runtime over it: host steps forward followed, steps back not, a restart behind the journal's last time going
on from it, the journal still replaying identically. No FUSE here.
"""
import logging
import time
import types

import trio
import trio.testing

from apeinxfs import health, verify
from apeinxfs.compaction import Snapshotter
from apeinxfs.fs import Operations
from apeinxfs.clock import STEP_US, HostClock, WallClock
from apeinxfs.kernel.events import Submit, Tick
from apeinxfs.journal import Journal
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes.tree import Tree
from apeinxfs.runtime import Runtime
from test_redteam4 import BEFORE_US, SET_BACK_US, FakeWallClock, run_to_end, started

HOUR_US = 3600 * 10**6
YEAR_US = 365 * 24 * HOUR_US
ROOT_INODE = 1


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


def test_the_warning_of_a_host_clock_set_back_from_the_right_time_says_why():
    """A host clock set back two minutes, with no step followed nor floor taken before, is the warning's reason."""
    clock, host = clock_on()
    host.wall -= 120_000_000
    assert clock.ahead() == ("clock: the daemon's time is 120 s ahead of the host's (the host's clock was set back); "
                             "deadlines, retention and bills count from the daemon's time, which does not go back")


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


class TrioHost:
    """A host whose steady clock is trio's (virtual) time and whose wall clock is that plus an offset the test
    steps."""

    def __init__(self, wall_us: int):
        self.offset = wall_us

    def steady_us(self) -> int:
        return int(trio.current_time() * 1e6)

    def now_us(self) -> int:
        return self.offset + self.steady_us()


def deadline_after_step(tmp_path, read_after_step: bool) -> tuple[bool, bool]:
    """Run the deadline timer of an idle Runtime over a TrioHost; submit a task with a 2 h deadline, step the
    host 7300 s forward (past the deadline) and, if `read_after_step`, read the time as any request
    would; whether the task is done 1 s, then 61 s, after the step."""
    host = TrioHost(BEFORE_US)
    done = []

    async def main() -> None:
        rt = started(tmp_path, host)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rt._deadline_timer)
                spec = TaskSpec(name="d", max_tokens=5, deadline_us=2 * HOUR_US, tenant="t")
                pid = rt.commit([Submit(spec=spec, uid=1000)])[0]
                await trio.sleep(1)
                host.offset += 7300 * 10**6
                if read_after_step:
                    rt.clock.now_us()
                for wait_s in (1, 60):
                    await trio.sleep(wait_s)
                    done.append(rt.kernel.tasks[pid].done)
                nursery.cancel_scope.cancel()
        finally:
            rt.journal.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return done[0], done[1]


def test_a_followed_step_wakes_the_deadline_timer(tmp_path):
    """A step forward, once read, wakes the idle deadline timer: a deadline the step passed fires at once."""
    assert deadline_after_step(tmp_path, read_after_step=True) == (True, True)


def test_the_deadline_timer_sees_a_step_nothing_read_within_a_minute(tmp_path):
    """A step forward no request reads (an idle daemon; a suspend likewise) is seen by the deadline timer within
    its 60 s cap, not at the end of the wait it began in the old time."""
    assert deadline_after_step(tmp_path, read_after_step=False) == (False, True)


def test_a_step_back_after_a_followed_step_forward_is_warned_in_health(tmp_path):
    """A year's step forward followed, then the host set back: /health has a Warning row saying by how much
    the daemon's time is ahead and that a step was followed; within 60 s of the host's clock there is none."""
    host = FakeHost(BEFORE_US)
    rt = started(tmp_path, host)
    try:
        host.wall += YEAR_US
        host.tick(1_000)
        assert health.show(rt.health, None, None, rt.clock) == "State:\tok\n"
        host.wall -= 59_000_000
        host.tick(1_000)
        assert health.show(rt.health, None, None, rt.clock) == "State:\tok\n"
        host.wall -= 2_000_000
        host.tick(1_000)
        shown = health.show(rt.health, None, None, rt.clock)
    finally:
        rt.journal.close()
    assert shown == ("State:\tok\nWarning:\tclock: the daemon's time is 61 s ahead of the host's (a host step "
                     f"{YEAR_US // 10**6} s forward was followed, then the host set back); deadlines, retention and "
                     "bills count from the daemon's time, which does not go back\n")


def snapshotted(tmp_path, host: FakeHost) -> Runtime:
    """A Runtime as `started` makes, with a snapshotter (every 300 s) built before it recovers, as mount.py
    does."""
    first = started(tmp_path, host)
    first.journal.close()
    rt = Runtime(first.config, Journal(str(tmp_path / "state" / "journal.db")), clock=host)
    rt.snapshotter = Snapshotter(rt, str(tmp_path / "state" / "snapshots"), 1000, 300)
    rt.recover()
    return rt


def submitted(rt: Runtime) -> int:
    """Submit a task of uid 1000 (a journal row for a snapshot to take); its pid."""
    return rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=5, tenant="t"), uid=1000)])[0]


def test_a_start_behind_the_journal_is_warned_in_health_and_no_snapshot_is_stale(tmp_path):
    """A restart with the host's clock a day behind the journal's last time: /health warns of the daemon's
    time being ahead because of the journal, and not of snapshots (none is due yet)."""
    host = FakeHost(BEFORE_US)
    first = started(tmp_path, host)
    submitted(first)
    host.tick(1_000_000)
    first.journal.close()
    host.wall -= SET_BACK_US
    rt = snapshotted(tmp_path, host)
    try:
        warnings = [line for line in health.show(rt.health, None, rt.snapshotter, rt.clock).splitlines()
                    if line.startswith("Warning:")]
    finally:
        rt.journal.close()
    assert len(warnings) == 1 and "the journal's last time was ahead of the host's clock at start" in warnings[0]


def test_a_followed_step_forward_makes_no_snapshot_stale(tmp_path):
    """A host step two hours forward (past 3 x snapshot_s) right after a snapshot: no snapshot warning, as no
    time passed for the snapshots to be late."""
    host = FakeHost(BEFORE_US)
    rt = snapshotted(tmp_path, host)
    try:
        submitted(rt)
        host.wall += 2 * HOUR_US
        host.tick(1_000)
        assert rt.clock.now_us() == host.wall
        warning = rt.snapshotter.warning()
    finally:
        rt.journal.close()
    assert warning is None


def test_a_jittering_host_clock_logs_a_bounded_number_of_lines(caplog):
    """A host clock 1.5 s ahead, then behind, every second for 100 s: at most 5 lines of each kind (in 10 min),
    and the time stays within the jitter of the true time."""
    caplog.set_level(logging.WARNING, "apeinxfs.clock")
    clock, host = clock_on()
    true_us = BEFORE_US
    for second in range(100):
        host.tick(1_000_000)
        true_us += 1_000_000
        host.wall = true_us + (1_500_000 if second % 2 else -1_500_000)
        clock.now_us()
    lines = clock_lines(caplog)
    assert 0 < sum("s ahead" in line for line in lines) <= 5
    assert 0 < sum("s behind" in line for line in lines) <= 5
    assert clock.now_us() - true_us <= 1_500_000


def test_a_host_going_further_behind_is_said_again(caplog):
    """A host set back 10 s is said once; set back 10 s more it is said again; a half second more, not."""
    caplog.set_level(logging.WARNING, "apeinxfs.clock")
    clock, host = clock_on()
    for step_us in (10_000_000, 10_000_000, 500_000):
        host.wall -= step_us
        clock.now_us()
    assert [line.split(" behind")[0] for line in clock_lines(caplog)] == [
        "clock: the host clock is 10.000 s", "clock: the host clock is 20.000 s"]


def test_the_machine_steady_clock_is_clock_boottime(monkeypatch):
    """Outside trio the host's steady clock is CLOCK_BOOTTIME: a suspend (boot time moving, the monotonic
    clock not) moves the daemon's time, even with the host's wall clock held."""
    boottime = [5_000_000_000]
    real = time.clock_gettime_ns
    monkeypatch.setattr(time, "clock_gettime_ns",
                        lambda which: boottime[0] if which == time.CLOCK_BOOTTIME else real(which))
    monkeypatch.setattr(time, "time_ns", lambda: BEFORE_US * 1000)
    clock = WallClock()
    assert clock.now_us() == BEFORE_US and clock.host.steady_us() == 5_000_000
    boottime[0] += 3600 * 10**9
    assert clock.now_us() == BEFORE_US + HOUR_US


def test_file_times_are_the_daemons_and_never_go_back(tmp_path):
    """A file's mtime is the daemon's time: with the host's clock set an hour back, it does not go back."""
    host = FakeHost(BEFORE_US)
    rt = started(tmp_path, host)
    ops = Operations(Tree(rt))
    caller = types.SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)

    async def mtimes() -> list[int]:
        before = (await ops.getattr(ROOT_INODE, caller)).st_mtime_ns
        host.wall -= HOUR_US
        host.tick(1_000_000)
        return [before, (await ops.getattr(ROOT_INODE, caller)).st_mtime_ns]

    try:
        assert trio.run(mtimes) == [BEFORE_US * 1000, (BEFORE_US + 1_000_000) * 1000]
    finally:
        rt.journal.close()
