"""Service and backlog over virtual time, and the two fairness numbers of the report.

`ServiceMeter` is shown every task the kernel changes. It adds up, per tenant, the
service delivered (input_cost per prompt token when a task's prompt is first prefilled,
output_cost per generated token), samples the running totals on a grid of
`window_s / SAMPLES_PER_WINDOW` seconds, and records when each tenant is backlogged
(has a task waiting in the run queue: queued or preempted). `fairness` turns these into
`service_gap` and `windowed_unfairness`; docs/simulator.md defines both exactly. This
module measures; it never schedules.
"""
SAMPLES_PER_WINDOW = 60


class ServiceMeter:
    """Per-tenant service totals on a time grid, and per-tenant backlogged intervals."""

    def __init__(self, tenants: list[str], input_cost: float, output_cost: float, window_s: float):
        self.tenants = list(tenants)
        self.index = {tenant: i for i, tenant in enumerate(self.tenants)}
        self.input_cost, self.output_cost = input_cost, output_cost
        self.step_us = max(1, round(window_s * 1e6 / SAMPLES_PER_WINDOW))
        self.totals = [0.0] * len(self.tenants)
        self.times, self.values = [0], [tuple(self.totals)]
        self.seen: dict[int, tuple] = {}  # pid -> (tokens_out, prefilled, waiting) when last shown
        self.waiting = [0] * len(self.tenants)
        self.spans: list[list] = [[] for _ in self.tenants]  # per tenant: [start_us, end_us or None]

    def observe(self, now_us: int, tasks: list) -> None:
        """Account for what changed in `tasks` since they were last shown."""
        self._sample_to(now_us)
        for task in tasks:
            tenant = self.index[task.tenant]
            tokens_out, prefilled, waiting = self.seen.get(task.pid, (0, False, False))
            now_prefilled, now_waiting = task.first_token_us is not None, task.runnable
            self.totals[tenant] += (self.output_cost * (task.tokens_out - tokens_out)
                                    + (self.input_cost * task.tokens_in if now_prefilled and not prefilled else 0))
            if now_waiting != waiting:
                self._backlog(tenant, now_us, 1 if now_waiting else -1)
            self.seen[task.pid] = (task.tokens_out, now_prefilled, now_waiting)

    def _backlog(self, tenant: int, now_us: int, change: int) -> None:
        self.waiting[tenant] += change
        spans = self.spans[tenant]
        if change > 0 and self.waiting[tenant] == 1:
            spans.append([now_us, None])
        elif change < 0 and self.waiting[tenant] == 0:
            spans[-1][1] = now_us

    def _sample_to(self, now_us: int) -> None:
        """Sample the grid points time has moved past: each holds the service delivered up to and at it."""
        while self.times[-1] + self.step_us < now_us:
            self.times.append(self.times[-1] + self.step_us)
            self.values.append(tuple(self.totals))

    def finish(self, end_us: int) -> None:
        """Close the grid and the open backlogged intervals at the end of the run."""
        self._sample_to(end_us)
        if self.times[-1] < end_us:
            self.times.append(end_us)
            self.values.append(tuple(self.totals))
        for spans in self.spans:
            if spans and spans[-1][1] is None:
                spans[-1][1] = end_us


def _backlogged(spans: list, times: list) -> list[bool]:
    """For each grid interval [times[k], times[k+1]]: was the tenant backlogged for at least half of it?"""
    flags, first = [], 0
    for start, end in zip(times, times[1:]):
        while first < len(spans) and spans[first][1] <= start:
            first += 1
        covered, j = 0, first
        while j < len(spans) and spans[j][0] < end:
            covered += min(end, spans[j][1]) - max(start, spans[j][0])
            j += 1
        flags.append(2 * covered >= end - start)
    return flags


def _spread(values: list) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def fairness(meter: ServiceMeter, weights: dict) -> dict:
    """service_gap, windowed_unfairness (max and mean over windows) from a finished meter."""
    flags = [_backlogged(spans, meter.times) for spans in meter.spans]
    gap, excesses = _compare(_served(meter, weights), flags)
    windows = _windows(meter.times, excesses)
    return {"service_gap": gap, "windowed_unfairness": max(windows, default=0.0),
            "windowed_unfairness_mean": sum(windows) / len(windows) if windows else 0.0}


def _compare(served: list, flags: list) -> tuple[float, list]:
    """Interval by interval, among the tenants backlogged in it: the spread of their service
    (summed: the gap) and each one's excess over their mean (running sums, one list per tenant)."""
    gap, excesses = 0.0, [[0.0] for _ in served]
    for k in range(len(flags[0])):
        amounts = [amount[k] for amount, flag in zip(served, flags) if flag[k]]
        gap += _spread(amounts)
        mean = sum(amounts) / len(amounts) if amounts else 0.0
        for amount, flag, running in zip(served, flags, excesses):
            running.append(running[-1] + (amount[k] - mean if flag[k] else 0.0))
    return gap, excesses


def _served(meter: ServiceMeter, weights: dict) -> list[list[float]]:
    """Per tenant, per grid interval: service served, scaled by mean weight / the tenant's weight."""
    mean_weight = sum(weights.values()) / len(weights)
    result = []
    for i, tenant in enumerate(meter.tenants):
        scale = mean_weight / weights[tenant]
        result.append([(after[i] - before[i]) * scale for before, after in zip(meter.values, meter.values[1:])])
    return result


def _windows(times: list, excesses: list) -> list[float]:
    """Per window of SAMPLES_PER_WINDOW intervals (or the whole run if shorter): the spread
    of the tenants' excess service in it, per second."""
    intervals = len(times) - 1
    span = min(SAMPLES_PER_WINDOW, intervals)
    result = []
    for first in range(intervals - span + 1 if span else 0):
        last = first + span
        seconds = (times[last] - times[first]) / 1e6
        result.append(_spread([running[last] - running[first] for running in excesses]) / seconds)
    return result
