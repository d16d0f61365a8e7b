"""The simulator's engine: the daemon's Runtime, kernel and sim driver on a virtual clock.

`simulate(workload, options)` boots a Runtime with the config of config.py and runs it
under loop.py's `StepLoop`: each request is submitted at its arrival time, each engine
step takes virtual time, not wall time, and the run stops when every task has exited, at
`options.until`, or when nothing more can happen. Nothing here models the kernel: it is
the kernel, fed the events a daemon would see. A meter watches every change the Runtime
announces (fairness.py).
"""
import os
import time

import attrs

from ..journal import Journal, NullJournal
from ..kernel.errors import ApeinxError, Invalid
from ..kernel.events import Submit
from ..kernel.task import State
from ..runtime import Runtime
from .config import Options, build_config
from .fairness import ServiceMeter
from .loop import MeteredNotifier, StepLoop, VirtualClock
from .workload import Workload, prompt

SUBMIT_PATH = "/ctl/submit"
BATCH_ROWS = 20000  # journal rows written per transaction in a kept journal


class Stalled(RuntimeError):
    """Tasks are left but no step, arrival or deadline is to come: a kernel or driver bug."""


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
    runtime.notifier = MeteredNotifier(meter, runtime.kernel, runtime.clock.host)
    feeder = Feeder(runtime, workload)
    try:
        loop = StepLoop(runtime, feeder)
        started = time.perf_counter()
        end_us = loop.run(None if options.until is None else round(options.until * 1e6))
        wall = time.perf_counter() - started
        meter.finish(end_us)
    finally:
        runtime.journal.close()
    if loop.stuck:
        raise Stalled(f"simulation stalled at {end_us / 1e6:.1f} s: {loop.stuck} tasks are left "
                      f"and no step, arrival or deadline is to come")
    _write_outputs(runtime, options, toml)
    return Outcome(runtime=runtime, workload=workload, options=options, meter=meter,
                   rejected=tuple(feeder.rejected), end_us=end_us, wall_s=wall)


def _write_outputs(runtime: Runtime, options: Options, toml: str) -> None:
    """The trace file, and the config next to the journal so a replay can boot the same kernel."""
    if options.trace:
        with open(options.trace, "wb") as file:
            file.write(runtime.kernel.trace.buffer)
    if options.state_dir:
        with open(os.path.join(options.state_dir, "config.toml"), "w") as file:
            file.write(toml)


class Feeder:
    """Submits the workload's requests at their arrival times and counts the tasks not yet exited."""

    def __init__(self, runtime: Runtime, workload: Workload):
        self.runtime = runtime
        self.requests = workload.requests
        self.arrivals = [round(request.arrival_s * 1e6) for request in workload.requests]
        self.submitted = 0  # requests submitted (accepted or refused) so far, in order
        self.pids: dict[str, int] = {}
        self.groups: dict[str, str] = {}  # prefix group -> its first word
        self.rejected: list = []

    def next_arrival_us(self) -> int | None:
        return self.arrivals[self.submitted] if self.submitted < len(self.arrivals) else None

    def submit_due(self, now_us: int) -> None:
        """Submit every request arrived by `now_us`, one after the other with nothing in between."""
        while self.submitted < len(self.arrivals) and self.arrivals[self.submitted] <= now_us:
            self.submit(self.requests[self.submitted])
            self.submitted += 1

    def left(self) -> int:
        """Requests still to arrive and accepted tasks that have not exited."""
        exited = self.runtime.kernel.tasks.count(State.EXITED)
        return len(self.arrivals) - self.submitted + len(self.pids) - exited

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
