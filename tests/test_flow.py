"""Tier 1: drivers/flow.py, what the openai, triton and llamacpp drivers share: batch following and the outbox.

Fake hosts and tasks on trio's autojump clock; the drivers themselves are tested in
their own files.
"""
import trio
import trio.testing

from apeinxfs.drivers import flow
from apeinxfs.kernel.events import Chunk, Failed, Interrupted
from apeinxfs.kernel.task import State


class Recorder:
    """A driver host that keeps what is delivered and hands out batches sent to `batches`."""

    def __init__(self):
        self.events, self.times = [], []  # what was delivered, and when (trio's clock)
        self.send_batch, self.batches = trio.open_memory_channel(0)

    def deliver(self, event) -> None:
        self.events.append(event)
        self.times.append(trio.current_time())

    async def next_batch(self, gpu: int) -> list:
        return await self.batches.receive()

    batch_changed = next_batch

    def steps(self) -> list:
        return [step.chunks for step in self.events]


class FakeTask:
    """The little of a kernel task that flow.py looks at."""

    def __init__(self, pid: int, state: State = State.RUNNING):
        self.pid, self.state = pid, state


async def test_outbox_sends_a_first_token_and_a_final_chunk_at_once_and_the_rest_a_round_at_a_time(autojump_clock):
    """A task's first chunk with tokens and its final chunk are delivered inside put() (which says so), the final
    one with what waits; the others wait for a round, merged per task."""
    host = Recorder()
    outbox = flow.Outbox(host, gpu=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.deliver_forever)
        assert outbox.put(Chunk(1, "a", 1, prefill=4)) is True
        assert host.steps() == [(Chunk(1, "a", 1, prefill=4),)]
        assert [outbox.put(Chunk(1, text, 1)) for text in ("b", "c", "d")] == [False] * 3
        assert len(host.steps()) == 1
        assert outbox.put(Chunk(2, "x", 1, prefill=3)) is True
        assert outbox.put(Chunk(1, "e", 1)) is False
        await trio.sleep(1)
        assert outbox.put(Chunk(1, "f", 1)) is False
        assert outbox.put(Chunk(1, "", 0, final=True)) is True
        assert host.steps()[1:] == [(Chunk(1, "bcd", 3), Chunk(2, "x", 1, prefill=3)), (Chunk(1, "e", 1),),
                                    (Chunk(1, "f", 1, final=True),)]
        nursery.cancel_scope.cancel()


class StepCounter(trio.abc.Instrument):
    """Counts the scheduling steps of the tasks whose name ends with `name`."""

    def __init__(self, name: str):
        self.name, self.steps = name, 0

    def after_task_step(self, task) -> None:
        self.steps += task.name.endswith(self.name)


async def test_outbox_delivers_at_once_after_a_quiet_round_and_at_most_once_a_round(autojump_clock):
    """A chunk put when the last round is ROUND_S old goes out in the next scheduling round, one wake-up of the
    outbox (a stream read every 100 ms costs it no more); chunks put sooner wait until ROUND_S after the last
    round."""
    host, counter = Recorder(), StepCounter("deliver_forever")
    outbox = flow.Outbox(host, gpu=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.deliver_forever)
        outbox.put(Chunk(1, "a", 1))
        start = trio.current_time()
        await trio.sleep(1)
        trio.lowlevel.add_instrument(counter)
        outbox.put(Chunk(1, "b", 1))
        await trio.sleep(1)
        trio.lowlevel.remove_instrument(counter)
        for text in ("c", "d"):
            outbox.put(Chunk(1, text, 1))
            await trio.sleep(flow.ROUND_S / 4)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert host.steps() == [(Chunk(1, text, 1),) for text in "abcd"] and counter.steps == 1
    assert [time - start for time in host.times] == [0, 1, 2, 2 + flow.ROUND_S]


async def test_a_task_placed_again_gets_its_next_token_at_once(autojump_clock):
    """run_jobs forgets a task that left the batch, so its first token after it is placed again goes at once."""
    host, delivered_at_once = Recorder(), []

    def start(nursery, outbox, task):
        outbox.put(Chunk(task.pid, "t", 1))
        delivered_at_once.append(len(host.events))
        return trio.CancelScope()
    task = FakeTask(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flow.run_jobs, host, 0, start, "test")
        for batch in ([task], [], [task]):
            await host.send_batch.send(batch)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert delivered_at_once == [1, 2] and host.steps() == [(Chunk(1, "t", 1),), (Chunk(1, "t", 1),)]


async def test_failures_are_delivered_only_while_their_task_runs(autojump_clock):
    """A job's failure reaches the host after the round's chunks, unless its task was killed or preempted meanwhile."""
    host = Recorder()
    outbox = flow.Outbox(host, gpu=0)
    running, killed = FakeTask(1), FakeTask(2, State.EXITED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.deliver_forever)
        outbox.fail(running, "engine gone")
        outbox.fail(killed, "engine gone")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert host.events == [Failed(pid=1, reason="engine gone")]


async def test_an_interrupted_job_starts_again_when_its_task_is_placed_again_at_once(autojump_clock):
    """A job that ended with Interrupted is started anew for its task, even when the kernel placed the task back in
    the same batch before run_jobs looked (a batch that looks unchanged)."""
    host, started = Recorder(), []
    task = FakeTask(1)

    def start(nursery, outbox, placed):
        started.append(placed.pid)
        if len(started) == 1:
            outbox.end(placed, Interrupted(pid=placed.pid, reason="stream broke"))
        return trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flow.run_jobs, host, 0, start, "test")
        await host.send_batch.send([task])
        await trio.sleep(1)  # the interruption is delivered; the kernel places the task again at once
        await host.send_batch.send([task])
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert host.events == [Interrupted(pid=1, reason="stream broke")] and started == [1, 1]
