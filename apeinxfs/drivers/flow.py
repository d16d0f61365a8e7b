"""What drivers that run one job per task share: following the kernel's batch, delivering per round.

`run_jobs` follows one GPU's batch for ever: it starts a job for each task the kernel
places there and cancels the jobs of tasks it takes off (kill, stop, preemption);
`Outbox` gathers what the jobs of the GPU produce and delivers it as one kernel `Step`
per round of at least ROUND_S, one merged chunk per task, with failures and interruptions
(engines that went away midway: the kernel resumes those tasks) after; a task's
first token and its final chunk go at once. `Outbox.guarded` is a job's bug boundary: an
Exception a job lets out (not one of the errors its driver turns into Failed or Interrupted,
which it catches itself) fails that task alone, `driver bug: TYPE at FILE:LINE`, and is kept
as the Bug `driver.NAME.job` of the runtime's supervisor (supervise.py, /ai/health); the
GPU's other jobs and the daemon go on. Failed at once rather than resumed: a bug is not an
outage; resumed, the same code meets the same text again. Used by openai.py (a stream per task),
triton.py (through openai.py) and llamacpp.py (a generation per task). No engine I/O here.
"""
import functools
import math

import trio

from ..kernel.events import Chunk, Failed, Interrupted, Step
from ..kernel.task import State
from ..supervise import place_of

ROUND_S = 0.01  # the shortest time between two steps of one GPU's outbox (a fast engine's tokens come 5-20 at a time)


async def run_jobs(host, gpu: int, start, driver: str) -> None:
    """Follow `gpu`'s batch until cancelled: `start(nursery, outbox, task)` begins a task's job
    (through `outbox.guarded`) and returns something whose `cancel()` ends it, called when the task
    leaves the batch. `driver`: the driver's name, in the name of its jobs' Bug."""
    outbox, jobs = Outbox(host, gpu, f"driver.{driver}.job"), {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.deliver_forever)
        begin = functools.partial(start, nursery, outbox)
        batch = await host.next_batch(gpu)
        while True:
            follow(batch, jobs, begin, outbox.take_interrupted())
            outbox.placed(jobs.keys())
            batch = await host.batch_changed(gpu)


def spawn(nursery, outbox: "Outbox", task, job, *args) -> trio.CancelScope:
    """Run `task`'s job `job(*args)` in the background, guarded (Outbox.guarded), under a cancel scope
    of its own, which it returns."""
    scope = trio.CancelScope()

    async def scoped():
        with scope:
            await outbox.guarded(task, job, *args)
    nursery.start_soon(scoped)
    return scope


def follow(batch: list, jobs: dict, start, interrupted=()) -> None:
    """Start a job (`start(task)` returns something with `cancel()`) for each task new to the
    batch; cancel the jobs of tasks that left it.

    A job that ended stays listed until its task leaves, so it is never started twice; unless it
    ended `interrupted` (its Interrupted delivered): the kernel may have placed its task here
    again at once, and the task resumes in a new job.
    """
    for pid in interrupted:
        jobs.pop(pid, None)
    for task in batch:
        if task.pid not in jobs:
            jobs[task.pid] = start(task)
    for pid in jobs.keys() - {task.pid for task in batch}:
        jobs.pop(pid).cancel()


class Outbox:
    """Chunks and failures of one GPU, delivered together: one kernel step per round of at least
    ROUND_S, with one chunk per task, so a fast engine's tokens are journaled and read a few at a
    time (each step is a journal commit and a wake-up of every reader). A task's first token since
    it was placed goes at once, with whatever else waits: time to first token is what a reader of
    a new task feels. So does its final chunk (the end of its stream), with what waits: a reader
    of `wait` or of the stream to its end should not wait a round more. A failure or interruption
    is delivered only if its task still runs by then."""

    def __init__(self, host, gpu: int, bug_name: str = "driver.job"):
        self.host, self.gpu, self.bug_name = host, gpu, bug_name
        self.chunks, self.failures = [], []
        self.interrupted: set[int] = set()  # tasks whose Interrupted went out since run_jobs last looked
        self.flowing: set[int] = set()  # tasks whose first token since they were placed went out
        self.ready = trio.Event()

    def put(self, chunk: Chunk) -> bool:
        """Queue `chunk`; True if it went out at once (its task's first token, or its final chunk)."""
        self.chunks.append(chunk)
        if chunk.final or (chunk.tokens and chunk.pid not in self.flowing):
            self.flowing.add(chunk.pid)
            self._deliver_chunks()
            return True
        self.ready.set()
        return False

    def placed(self, pids) -> None:
        """Forget the tasks no longer placed here: placed again, their next token is a first one."""
        self.flowing &= set(pids)

    def fail(self, task, reason: str) -> None:
        self.end(task, Failed(pid=task.pid, reason=reason))

    def end(self, task, event: Failed | Interrupted) -> None:
        """Deliver how `task`'s job ended short of its end (Failed, or Interrupted: it resumes later)."""
        self.failures.append((task, event))
        self.ready.set()

    async def guarded(self, task, job, *args) -> None:
        """Run `task`'s job `job(*args)`; an Exception it lets out is a bug: `task` fails naming its
        type and place, and the host keeps it (`note_bug`). Cancelled and other BaseExceptions pass."""
        try:
            await job(*args)
        except Exception as exc:
            self._bug(task, exc)

    def put_guarded(self, task, chunk) -> bool:
        """`put(chunk)` for `task`'s job from outside the job's trio task (llama.cpp's thread hands its tokens
        over through run_sync_soon, where a bug would end trio itself): a bug fails `task` as in `guarded`,
        and then False."""
        try:
            self.put(chunk)
        except Exception as exc:
            self._bug(task, exc)
            return False
        return True

    def _bug(self, task, exc: Exception) -> None:
        """`task` fails naming the bug's type and place, and the host keeps it (`note_bug`)."""
        error, where = place_of(exc)
        self.host.note_bug(self.bug_name, exc, "its task failed")
        self.fail(task, f"driver bug: {error} at {where}")

    def take_interrupted(self) -> set[int]:
        interrupted, self.interrupted = self.interrupted, set()
        return interrupted

    async def deliver_forever(self) -> None:
        """Deliver what waits once ROUND_S has passed since the previous round: at once after a quiet
        round (a stream read every 100 ms costs one wake-up a read), else at the end of the round."""
        last_s = -math.inf
        while True:
            await self.ready.wait()
            if (rest_s := last_s + ROUND_S - trio.current_time()) > 0:
                await trio.sleep(rest_s)
            self.ready, last_s = trio.Event(), trio.current_time()
            self._deliver_chunks()
            failures, self.failures = self.failures, []
            for task, failure in failures:
                if task.state is State.RUNNING:  # not if killed or preempted meanwhile
                    self.host.deliver(failure)
                    if isinstance(failure, Interrupted):
                        self.interrupted.add(task.pid)

    def _deliver_chunks(self) -> None:
        chunks, self.chunks = self.chunks, []
        if chunks:
            self.host.deliver(Step(gpu=self.gpu, chunks=merged(chunks)))


def merged(chunks: list[Chunk]) -> list[Chunk]:
    """One chunk per task, in order of first appearance: its texts joined, tokens and prefill summed."""
    by_task: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_task.setdefault(chunk.pid, []).append(chunk)
    return [Chunk(pid=pid, text="".join(c.text for c in group), tokens=sum(c.tokens for c in group),
                  prefill=sum(c.prefill for c in group), final=any(c.final for c in group))
            for pid, group in by_task.items()]
