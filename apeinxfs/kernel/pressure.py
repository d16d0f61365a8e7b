"""PSI-style stall accounting: total stalled time and 10/60/300 s running averages.

Linux folds stall time into exponential averages every 2 s; so does this, driven by the
event times the kernel sees. `snapshot(now)` projects without changing the record, so
reading /memory/pressure never alters kernel state.
"""
import copy
import math

import attrs

PERIOD_US = 2_000_000
WINDOWS_S = (10, 60, 300)
DECAY = tuple(math.exp(-PERIOD_US / 1e6 / w) for w in WINDOWS_S)


@attrs.define
class StallClock:
    """One PSI line (`some` or `full`): whether stalled now, total and averages."""

    stalled: bool = False
    since_us: int = 0
    total_us: int = 0
    period_start_us: int | None = None  # None until the first time is seen
    period_stall_us: int = 0
    avgs: list[float] = attrs.Factory(lambda: [0.0, 0.0, 0.0])

    def set(self, now_us: int, stalled: bool) -> None:
        """Record the state from `now_us` on."""
        self.advance(now_us)
        self.stalled = stalled

    def advance(self, now_us: int) -> None:
        """Account time up to `now_us` in the current state."""
        if self.period_start_us is None:
            self.period_start_us = self.since_us = now_us
        while now_us > self.since_us:
            end = min(now_us, self.period_start_us + PERIOD_US)
            self._account(end - self.since_us)
            self.since_us = end
            if end == self.period_start_us + PERIOD_US:
                self._close_period(now_us)

    def _account(self, span_us: int) -> None:
        if self.stalled:
            self.total_us += span_us
            self.period_stall_us += span_us

    def _close_period(self, now_us: int) -> None:
        assert self.period_start_us is not None  # advance() sets it before any period closes
        share = self.period_stall_us / PERIOD_US
        self.avgs = [a * d + share * (1 - d) for a, d in zip(self.avgs, DECAY)]
        self.period_start_us += PERIOD_US
        self.period_stall_us = 0
        whole = (now_us - self.period_start_us) // PERIOD_US
        if whole > 0:
            self._skip_periods(whole)

    def _skip_periods(self, count: int) -> None:
        """`count` whole periods in one unchanged state, folded in closed form."""
        assert self.period_start_us is not None  # advance() sets it before any period closes
        share = 1.0 if self.stalled else 0.0
        self.avgs = [share + (a - share) * d ** count for a, d in zip(self.avgs, DECAY)]
        span = count * PERIOD_US
        self.total_us += span if self.stalled else 0
        self.period_start_us += span
        self.since_us = self.period_start_us

    def snapshot(self, now_us: int) -> "StallClock":
        """A copy advanced to `now_us`; the original is unchanged."""
        view = copy.deepcopy(self)
        view.advance(now_us)
        return view

    def line(self, kind: str, now_us: int) -> str:
        view = self.snapshot(now_us)
        a10, a60, a300 = (100 * a for a in view.avgs)
        return f"{kind} avg10={a10:.2f} avg60={a60:.2f} avg300={a300:.2f} total={view.total_us}\n"
