"""What drivers that run one job per task share: following the kernel's batch, delivering per round.

`follow` starts a job for each task the kernel places on a GPU and cancels the jobs of
tasks it takes off (kill, stop, preemption); `Outbox` gathers what the jobs of one GPU
produce and delivers it as one kernel `Step` per scheduling round, with failures after.
Used by openai.py (a stream per task), triton.py (through openai.py) and llamacpp.py (a
generation per task). No engine I/O here.
"""
import trio

from ..kernel.events import Chunk, Failed, Step
from ..kernel.task import State


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
