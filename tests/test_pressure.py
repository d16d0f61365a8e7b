"""Tier 1: PSI stall accounting (kernel/pressure.py) with explicit times.

What counts as a KV stall is the kernel's decision (test_kernel.py); this checks the clock.
"""
import pytest

from apeinxfs.kernel.pressure import PERIOD_US, StallClock

SECOND = 1_000_000


def stalled_for(seconds: int, start_us: int = 0) -> StallClock:
    clock = StallClock()
    clock.set(start_us, True)
    clock.set(start_us + seconds * SECOND, False)
    return clock


def test_total_counts_stalled_time_only():
    """total is the stalled time in microseconds, not the idle time around it."""
    clock = StallClock()
    clock.set(0, False)
    clock.set(3 * SECOND, True)
    clock.set(5 * SECOND, False)
    clock.advance(9 * SECOND)
    assert clock.total_us == 2 * SECOND


def test_a_clock_starting_at_time_zero_counts_from_zero():
    """Time 0 is a real time: a stall from 0 to 1 s counts one second."""
    assert stalled_for(1).total_us == SECOND


def test_averages_rise_while_stalled():
    """While stalled, avg10 climbs fastest, then avg60, then avg300, all below 100%."""
    clock = stalled_for(20)
    a10, a60, a300 = clock.avgs
    assert 1.0 > a10 > a60 > a300 > 0.0


def test_averages_decay_when_not_stalled():
    """After the stall ends, averages fall; avg10 falls fastest."""
    clock = stalled_for(20)
    before = list(clock.avgs)
    clock.advance(80 * SECOND)
    after = clock.avgs
    assert all(a < b for a, b in zip(after, before))
    assert after[0] / before[0] < after[2] / before[2]
    assert clock.total_us == 20 * SECOND


def test_long_stall_approaches_full():
    """Stalled for an hour, every average is near 100% (closed-form skip of whole periods)."""
    clock = stalled_for(3600)
    assert clock.avgs == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    assert clock.total_us == 3600 * SECOND


def test_skipping_periods_matches_stepping_them():
    """Advancing in one jump gives the same result as advancing period by period."""
    jumped, stepped = stalled_for(1, 0), stalled_for(1, 0)
    jumped.advance(60 * SECOND)
    for now in range(PERIOD_US, 60 * SECOND + 1, PERIOD_US):
        stepped.advance(now)
    assert jumped.avgs == pytest.approx(stepped.avgs)
    assert jumped.total_us == stepped.total_us


def test_snapshot_does_not_mutate():
    """snapshot and line project forward on a copy; the clock itself is unchanged."""
    clock = StallClock()
    clock.set(SECOND, True)
    before = (clock.since_us, clock.total_us, list(clock.avgs))
    view = clock.snapshot(30 * SECOND)
    clock.line("some", 60 * SECOND)
    assert view.total_us == 29 * SECOND
    assert (clock.since_us, clock.total_us, list(clock.avgs)) == before


def test_line_format():
    """A PSI line: kind, three averages in percent with two decimals, total in us."""
    line = stalled_for(20).line("some", 20 * SECOND)
    kind, a10, a60, a300, total = line.split()
    assert kind == "some" and line.endswith("\n")
    assert [f.split("=")[0] for f in (a10, a60, a300, total)] == ["avg10", "avg60", "avg300", "total"]
    assert total == f"total={20 * SECOND}"
    assert all(len(f.split("=")[1].split(".")[1]) == 2 for f in (a10, a60, a300))
