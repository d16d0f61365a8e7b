"""The simulator's engine: the daemon's Runtime, kernel and sim driver on a virtual clock.

`simulate(workload, options)` boots a Runtime with the config of config.py, runs it
under trio's MockClock with autojump (engine steps take virtual time, not wall time),
submits each request at its arrival time and stops when every task has exited or at
`options.until`. Nothing here models the kernel: it is the kernel, fed the events a
daemon would see. A meter watches every change the Runtime announces (fairness.py).
"""
import contextlib
import heapq
import itertools
import math
import os
import random
import time

import attrs
import trio
import trio.testing

from ..journal import Journal, NullJournal
from ..kernel.errors import ApeinxError, Invalid
from ..kernel.events import Submit
from ..kernel.task import State
from ..runtime import Notifier, Runtime
from .config import Options, build_config
from .fairness import ServiceMeter
from .workload import Workload, prompt

STALL_S = 3600.0  # virtual seconds without an engine step or a trace line: the run is stuck
SUBMIT_PATH = "/ctl/submit"
BATCH_ROWS = 20000  # journal rows written per transaction in a kept journal


class Stalled(RuntimeError):
    """Tasks are left but nothing has happened for STALL_S virtual seconds: a kernel or driver bug."""


@attrs.frozen
class Outcome:
    """What a run leaves for the report: the kernel's final state and the meter's samples."""

    runtime: Runtime
    workload: Workload
    options: Options
    meter: ServiceMeter
    rejected: tuple
    end_us: int
    wall_s: float


class VirtualClock:
    """Microseconds of trio time, which starts at 0 under MockClock."""

    def now_us(self) -> int:
        return round(trio.current_time() * 1e6)


class MeteredNotifier(Notifier):
    """The Runtime's wake-ups, which also show the meter every task that changed."""

    def __init__(self, meter: ServiceMeter, kernel, clock):
        super().__init__()
        self.meter, self.kernel, self.clock = meter, kernel, clock

    def wake(self, keys) -> None:
        tasks = self.kernel.tasks
        self.meter.observe(self.clock.now_us(), [tasks[k] for k in keys if type(k) is int and k in tasks])
        super().wake(keys)


def open_journal(options: Options):
    """A fresh journal.db in the state directory (refusing a used one), else a discarded one."""
    if options.state_dir is None:
        return NullJournal()
    journal = Journal(os.path.join(options.state_dir, "journal.db"), rows_per_commit=BATCH_ROWS)
    if len(journal):
        journal.close()
        raise Invalid(f"--state-dir {options.state_dir} already holds a journal; give an empty directory")
    return journal


def simulate(workload: Workload, options: Options) -> Outcome:
    """Run the workload to its end (or `options.until`) and return the final state."""
    config, toml = build_config(options, workload)
    sched = config.kernel.sched
    meter = ServiceMeter(workload.tenants, sched.input_cost, sched.output_cost, options.window)
    runtime = Runtime(config, open_journal(options), clock=VirtualClock())
    runtime.notifier = MeteredNotifier(meter, runtime.kernel, runtime.clock)
    feeder = Feeder(runtime, workload)
    started = time.perf_counter()
    try:
        with _seeded_trio(), _ordered_deadlines():
            end_us = trio.run(_main, runtime, feeder, options.until,
                              clock=trio.testing.MockClock(autojump_threshold=0))
        wall = time.perf_counter() - started
        meter.finish(end_us)
    finally:
        runtime.journal.close()
    if feeder.stuck:
        raise Stalled(f"simulation stalled at {end_us / 1e6:.1f} s: {feeder.stuck} tasks made no progress "
                      f"for {STALL_S:.0f} s of virtual time")
    _write_outputs(runtime, options, toml)
    return Outcome(runtime=runtime, workload=workload, options=options, meter=meter,
                   rejected=tuple(feeder.rejected), end_us=end_us, wall_s=wall)


@contextlib.contextmanager
def _seeded_trio():
    """Make trio's choice between tasks ready at the same instant repeatable, so runs are.

    trio orders each batch of ready tasks with its module's Random (the one Hypothesis
    seeds through `register_random`); seeding it for the run and restoring it afterwards
    makes two runs of one workload commit the same events in the same order.
    """
    rng = getattr(trio._core._run, "_r", None)
    if not isinstance(rng, random.Random):
        yield
        return
    state = rng.getstate()
    rng.seed(0)
    try:
        yield
    finally:
        rng.setstate(state)


@contextlib.contextmanager
def _ordered_deadlines():
    """Make trio wake timers due at the same virtual instant in the order they were set.

    trio breaks such a tie (a GPU's step ending as a request arrives) by id() of the cancel
    scopes, a memory address, so which event commits first could differ from one process to
    another. For the run, its deadline heap gets a counter as the tie-breaker instead.
    """
    deadlines = getattr(trio._core._run, "Deadlines", None)
    if deadlines is None or not hasattr(deadlines, "add"):
        yield
        return
    order, trio_add = itertools.count(), deadlines.add

    def add(self, deadline: float, cancel_scope) -> None:
        heapq.heappush(self._heap, (deadline, next(order), cancel_scope))
        self._active += 1
    deadlines.add = add
    try:
        yield
    finally:
        deadlines.add = trio_add


async def _main(runtime: Runtime, feeder: "Feeder", until: float | None) -> int:
    """Run until the feeder is done or `until`; the virtual time it stopped at, in µs."""
    with trio.move_on_at(until if until is not None else math.inf):
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            await feeder.run()
            nursery.cancel_scope.cancel()
    return runtime.clock.now_us()


def _write_outputs(runtime: Runtime, options: Options, toml: str) -> None:
    """The trace file, and the config next to the journal so a replay can boot the same kernel."""
    if options.trace:
        with open(options.trace, "wb") as file:
            file.write(runtime.kernel.trace.buffer)
    if options.state_dir:
        with open(os.path.join(options.state_dir, "config.toml"), "w") as file:
            file.write(toml)


class Feeder:
    """Submits the workload's requests at their arrival times, then waits for all to exit."""

    def __init__(self, runtime: Runtime, workload: Workload):
        self.runtime = runtime
        self.workload = workload
        self.pids: dict[str, int] = {}
        self.groups: dict[str, str] = {}  # prefix group -> its first word
        self.rejected: list = []
        self.stuck = 0  # tasks left when the run stalled

    async def run(self) -> None:
        """Requests that arrive at the same instant are submitted without yielding in between."""
        for arrival, requests in itertools.groupby(self.workload.requests, key=lambda r: r.arrival_s):
            await trio.sleep_until(arrival)
            for request in requests:
                self.submit(request)
        await self._all_exited()

    def submit(self, request) -> None:
        """Commit the request's Submit, or record why it was refused, as the daemon would."""
        try:
            if request.parent is not None and request.parent not in self.pids:
                raise Invalid(f"parent {request.parent!r} was refused")
            spec = attrs.evolve(request.spec, prompt=prompt(request, self.groups),
                                parent=self.pids.get(request.parent))
            self.pids[request.spec.name] = self.runtime.commit([Submit(spec=spec, uid=0)])[0]
        except ApeinxError as exc:
            self.runtime.reject(SUBMIT_PATH, exc, uid=0)
            self.rejected.append((request, exc.reason))

    async def _all_exited(self) -> None:
        """Return once every accepted task has exited, or (setting `stuck`) when nothing moves."""
        kernel = self.runtime.kernel
        while (left := len(self.pids) - kernel.state_counts.get(State.EXITED, 0)) > 0:
            progress = (kernel.trace.seq, kernel.counters.steps)
            await self.runtime.notifier.wait("trace", STALL_S)
            if (kernel.trace.seq, kernel.counters.steps) == progress:
                self.stuck = left
                return
