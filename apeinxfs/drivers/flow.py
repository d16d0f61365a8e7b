"""What drivers that run one job per task share: following the kernel's batch, delivering per round.

`run_jobs` follows one GPU's batch for ever: it starts a job for each task the kernel
places there and cancels the jobs of tasks it takes off (kill, stop, preemption);
`Outbox` gathers what the jobs of the GPU produce and delivers it as one kernel `Step`
per scheduling round, with failures after. Used by openai.py (a stream per task),
triton.py (through openai.py) and llamacpp.py (a generation per task). No engine I/O here.
"""
import functools

import trio

from ..kernel.events import Chunk, Failed, Step
from ..kernel.task import State


async def run_jobs(host, gpu: int, start) -> None:
    """Follow `gpu`'s batch until cancelled: `start(nursery, outbox, task)` begins a task's job
    and returns something whose `cancel()` ends it, called when the task leaves the batch."""
    outbox, jobs = Outbox(host, gpu), {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.deliver_forever)
        begin = functools.partial(start, nursery, outbox)
        batch = await host.next_batch(gpu)
        while True:
            follow(batch, jobs, begin)
            batch = await host.batch_changed(gpu)


def spawn(nursery, job, *args) -> trio.CancelScope:
    """Run `job(*args)` in the background under a cancel scope of its own, which it returns."""
    scope = trio.CancelScope()

    async def scoped():
        with scope:
            await job(*args)
    nursery.start_soon(scoped)
    return scope


def follow(batch: list, jobs: dict, start) -> None:
    """Start a job (`start(task)` returns something with `cancel()`) for each task new to the
    batch; cancel the jobs of tasks that left it.

    A job that ended stays listed until its task leaves, so it is never started twice.
    """
    for task in batch:
        if task.pid not in jobs:
            jobs[task.pid] = start(task)
    for pid in jobs.keys() - {task.pid for task in batch}:
        jobs.pop(pid).cancel()


class Outbox:
    """Chunks and failures of one GPU, delivered together: one kernel step per scheduling round."""

    def __init__(self, host, gpu: int):
        self.host, self.gpu = host, gpu
        self.chunks, self.failures = [], []
        self.ready = trio.Event()

    def put(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.ready.set()

    def fail(self, task, reason: str) -> None:
        self.failures.append((task, Failed(pid=task.pid, reason=reason)))
        self.ready.set()

    async def deliver_forever(self) -> None:
        while True:
            await self.ready.wait()
            self.ready = trio.Event()
            chunks, failures, self.chunks, self.failures = self.chunks, self.failures, [], []
            if chunks:
                self.host.deliver(Step(gpu=self.gpu, chunks=chunks))
            for task, failure in failures:
                if task.state is State.RUNNING:  # not if killed or preempted meanwhile
                    self.host.deliver(failure)
