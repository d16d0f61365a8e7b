"""Tier 1: the per-uid rate-limited log (ratelog.py) with a fake clock."""
import logging

import attrs

from apeinxfs import ratelog
from apeinxfs.ratelog import RateLog


@attrs.define
class Clock:
    """A clock that moves only when told."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Lines:
    """A stand-in logger that keeps the formatted lines."""

    lines: list = attrs.Factory(list)

    def log(self, level, msg, *args):
        self.lines.append(msg % args)

    def warning(self, msg, *args):
        self.log(logging.WARNING, msg, *args)


def make(burst=3, window_s=10.0):
    clock, lines = Clock(), Lines()
    return RateLog(lines, burst=burst, window_s=window_s, clock=clock), clock, lines.lines


def test_a_burst_then_silence_then_a_count():
    """A key logs `burst` lines per window; the next window opens with how many were suppressed."""
    rate, clock, lines = make()
    assert [rate.log("uid 5", logging.ERROR, "bug %d", n) for n in range(8)] == [True] * 3 + [False] * 5
    assert lines == ["bug 0", "bug 1", "bug 2"]
    clock.now = 10.0
    assert rate.log("uid 5", logging.ERROR, "bug %d", 8)
    assert lines[3:] == ["uid 5: 5 similar log lines suppressed in 10 s", "bug 8"]


def test_keys_are_limited_apart():
    """One uid's flood does not silence another's first lines."""
    rate, clock, lines = make(burst=1)
    rate.log("uid 5", logging.ERROR, "a")
    assert not rate.log("uid 5", logging.ERROR, "b")
    assert rate.log("uid 6", logging.ERROR, "c")
    assert lines == ["a", "c"]


def test_a_quiet_window_reports_nothing():
    """A key that stayed under its burst starts its next window without a count line."""
    rate, clock, lines = make()
    rate.log("uid 5", logging.ERROR, "a")
    clock.now = 100.0
    rate.log("uid 5", logging.ERROR, "b")
    assert lines == ["a", "b"]


def test_memory_stays_bounded(monkeypatch):
    """Past KEYS_MAX keys, ended windows are forgotten, and all of them if none has ended."""
    monkeypatch.setattr(ratelog, "KEYS_MAX", 4)
    rate, clock, _ = make(window_s=10.0)
    for uid in range(3):
        rate.log(uid, logging.ERROR, "x")
    clock.now = 20.0
    for uid in range(3, 12):
        rate.log(uid, logging.ERROR, "x")
        assert len(rate.limit.windows) <= 4
