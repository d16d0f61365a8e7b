"""The simulator's discrete-event loop: arrivals, engine steps and deadlines on a virtual clock.

In the daemon, trio tasks act over time: the sim driver's `serve` on each GPU (plan a step
of the GPU's batch, sleep its duration, deliver it as a `Step`, plan the next one at once,
or wait until the kernel gives the GPU tasks) and the Runtime's deadline timer (a `Tick`
when a deadline is due); here the feeder's submits join them. `StepLoop` does the same from
one heap of the instants they would act at, so a step costs no timer, task switch or cancel
scope. Every event still reaches the kernel through `Runtime.commit`, and every step is
`SimDriver.plan` of the kernel's batch: the loop decides nothing, it only keeps time.

The events of one instant go in a fixed order, so runs are repeatable: first the requests
arriving (feeder order), so a step that ends then plans its next one with them in the queue,
as an engine takes what has arrived when it builds a batch; then the steps ending (in the
order they started), each followed at once by its GPU's next step; then a `Tick` if a
deadline is due that no event has already expired; last the idle GPUs the kernel has given
tasks start a step (by index).
"""
import heapq
import itertools

from ..drivers.sim import SimDriver
from ..kernel.errors import Invalid
from ..kernel.events import Step, Tick


class VirtualClock:
    """The run's time in microseconds, set by the loop (the Runtime's `clock`)."""

    def __init__(self):
        self.us = 0

    def now_us(self) -> int:
        return self.us


class MeteredNotifier:
    """The Runtime's wake-ups in a run: nobody waits, but the meter sees each task that changed."""

    def __init__(self, meter, kernel, clock: VirtualClock):
        self.meter, self.kernel, self.clock = meter, kernel, clock

    def awaited(self, key) -> bool:
        """Nobody waits in a run: no wake needs working out for a waiter."""
        return False

    def wake(self, keys) -> None:
        tasks = self.kernel.tasks
        self.meter.observe(self.clock.us, [tasks[key] for key in keys if type(key) is int and key in tasks])


def sim_driver(models: dict) -> SimDriver:
    """The one sim driver for all the kernel's models (`{name: ModelConfig}`), as the daemon builds it."""
    others = sorted(name for name, model in models.items() if model.driver != SimDriver.name)
    if others:
        raise Invalid(f"the simulator runs models of the sim driver only, not {', '.join(others)}")
    return SimDriver(dict(models))


class StepLoop:
    """Runs the feeder's arrivals, the GPUs' steps and the kernel's deadlines in time order."""

    def __init__(self, runtime, feeder):
        self.rt, self.kernel, self.clock, self.feeder = runtime, runtime.kernel, runtime.clock.host, feeder
        self.driver = sim_driver(runtime.kernel.models)
        self.steps: list = []  # heap of (end_us, order started, Step) for the steps in flight
        self.started = itertools.count()
        self.idle = set(range(len(runtime.kernel.gpus)))  # GPUs with no step in flight
        self.stuck = 0  # tasks left when nothing more could happen

    def run(self, until_us: int | None) -> int:
        """Go until the feeder is done, `until_us` or nothing more can happen; the time it stopped at."""
        while self.feeder.left():
            at = self._next_instant()
            if at is None:
                self.stuck = self.feeder.left()
                break
            if until_us is not None and at >= until_us:
                self.clock.us = until_us
                break
            self._instant(at)
        return self.clock.us

    def _next_instant(self) -> int | None:
        """The earliest of the next step's end, the next arrival and the next deadline."""
        at = self.steps[0][0] if self.steps else None
        for other in (self.feeder.next_arrival_us(), self.kernel.next_deadline_us()):
            if other is not None and (at is None or other < at):
                at = other
        return at

    def _instant(self, at: int) -> None:
        self.clock.us = at
        self.feeder.submit_due(at)
        while self.steps and self.steps[0][0] == at:
            self._end_step(heapq.heappop(self.steps)[2])
        deadline = self.kernel.next_deadline_us()
        if deadline is not None and deadline <= at:
            self.rt.commit([Tick()])
        if self.idle:
            self._start_idle()

    def _end_step(self, step: Step) -> None:
        """Deliver the step, then plan the GPU's next one at once (as `SimDriver.serve` does)."""
        self.rt.commit([step])  # not deliver(): a journal that cannot be written ends the run
        self._start(step.gpu)

    def _start_idle(self) -> None:
        """Start the idle GPUs the kernel has given tasks (as `next_batch` wakes on `("gpu", N)`)."""
        for gpu in sorted(self.idle):
            self._start(gpu)

    def _start(self, gpu: int) -> None:
        """Plan a step of the GPU's batch to end after the driver's duration; with no batch, the GPU idles."""
        batch = self.kernel.batch(gpu)
        if not batch:
            self.idle.add(gpu)
            return
        seconds, chunks = self.driver.plan(batch)
        end_us = self.clock.us + round(seconds * 1e6)
        heapq.heappush(self.steps, (end_us, next(self.started), Step(gpu=gpu, chunks=chunks)))
        self.idle.discard(gpu)
