"""Monotonic totals of one kernel, for /metrics and sched/stat."""
import attrs


@attrs.define
class Counters:
    """Monotonic totals for /metrics."""

    submitted: int = 0
    rejected: int = 0
    dispatched: int = 0
    preempted: int = 0
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    evictions: int = 0
    oom_kills: int = 0
    fair_preemptions: int = 0
    lifts: int = 0
    boosts: int = 0
    reaped: int = 0  # exited tasks forgotten (retention.py)
    exits: dict[str, int] = attrs.Factory(dict)  # exit kind (done, killed, ...) -> tasks

    @property
    def decisions(self) -> int:
        """Scheduling decisions made: each is a dispatch (sched/stat's name for it)."""
        return self.dispatched
