"""Tiers 1-2: engine outages in the kernel (kernel/engines.py): down engines get no dispatch, their
queued tasks stall up to engine_wait_s, interrupted tasks resume from their text, all replayable;
and in a Runtime, a model the journal left down is tried again at the next start."""
import trio

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.events import (Chunk, Control, EngineHealth, Interrupted, Kill, Step, Submit, Tick, from_row,
                                     to_row)
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.task import State
from test_journal_runtime import open_runtime, submit

SECOND = 1_000_000


def config(wait_s=10.0, resume_limit=2, slots=2) -> KernelConfig:
    """Two models on one GPU of `slots` slots: `llm` may go down, `sim` stays up."""
    return KernelConfig(models=[ModelConfig(name="llm", engine_wait_s=wait_s, resume_limit=resume_limit),
                                ModelConfig(name="sim")], page_mib=1,
                        gpus=[GpuConfig(index=0, kv_mib=64, slots=slots)])


class Driven:
    """A kernel and every event applied to it, with its time, for replaying."""

    def __init__(self, **options):
        self.kernel, self.log = Kernel(config(**options)), []

    def apply(self, event, now_us: int):
        self.kernel.check(event)
        self.log.append((now_us, event))
        return self.kernel.apply(event, now_us)

    def submit(self, model: str, now_us: int = 0, tokens: int = 8) -> int:
        return self.apply(Submit(spec=TaskSpec(name="t", prompt="hello", model=model, max_tokens=tokens), uid=1), now_us)

    def serve(self, pid: int, text: str, now_us: int, tokens: int = 1) -> None:
        self.apply(Step(gpu=0, chunks=[Chunk(pid=pid, text=text, tokens=tokens, prefill=0)]), now_us)

    def kinds(self, kind: str) -> list[str]:
        return [line for line in self.kernel.trace.buffer.decode().splitlines() if f",{kind}," in line]


def test_down_engine_gets_no_dispatch_and_other_models_run():
    """While llm's engine is down its queued task stalls out of the queue; sim's task is dispatched."""
    d = Driven()
    d.apply(EngineHealth(model="llm", up=False, reason="connection refused"), 0)
    llm, sim = d.submit("llm", 1), d.submit("sim", 2)
    k = d.kernel
    assert k.tasks[llm].state is State.QUEUED and k.tasks[llm].gpu is None
    assert k.tasks[sim].state is State.RUNNING
    assert k.engines.waiting("llm") == 1 and k.engines.waiting("sim") == 0
    assert any("llm down: connection refused" in line for line in d.kinds("engine"))
    assert len(d.kinds("stall")) == 1


def test_engine_up_dispatches_the_stalled_tasks():
    """When the engine is up again its stalled tasks are queued and dispatched, with an `engine` line."""
    d = Driven()
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 0)
    pids = [d.submit("llm", 1) for _ in range(3)]
    d.apply(EngineHealth(model="llm", up=True), 3 * SECOND)
    k = d.kernel
    assert [k.tasks[p].state for p in pids].count(State.RUNNING) == 2
    assert k.engines.waiting() == 0 and not k.engines.down
    assert "llm up after 3s; 3 stalled tasks queued again" in d.kinds("engine")[-1]


def test_wait_expires_at_exactly_engine_wait_s_with_the_reason():
    """A stalled task fails at its stall time plus engine_wait_s, not a microsecond earlier, naming the outage."""
    d = Driven(wait_s=10.0)
    d.apply(EngineHealth(model="llm", up=False, reason="connection refused"), 0)
    pid = d.submit("llm", 2 * SECOND)
    assert d.kernel.next_deadline_us() == 12 * SECOND
    d.apply(Tick(), 12 * SECOND - 1)
    assert not d.kernel.tasks[pid].done
    d.apply(Tick(), 12 * SECOND)
    task = d.kernel.tasks[pid]
    assert task.exit == "failed: llm's engine down for 12s: connection refused"
    assert task.exited_us == 12 * SECOND and d.kernel.engines.waiting() == 0


def test_killed_stalled_task_does_not_expire_or_count():
    """A stalled task killed meanwhile keeps its `killed` exit and leaves the stalled count."""
    d = Driven()
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 0)
    pid = d.submit("llm", 0)
    d.apply(Kill(pid=pid, uid=1), SECOND)
    assert d.kernel.engines.waiting() == 0
    d.apply(Tick(), 20 * SECOND)
    assert d.kernel.tasks[pid].exit == "killed"


def test_a_prio_change_keeps_a_stalled_task_waiting_from_its_first_stall():
    """A stalled task whose prio changes stays stalled, with no second `stall` line, and gives up on time."""
    d = Driven(wait_s=10.0)
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 0)
    pid = d.submit("llm", 0)
    d.apply(Control(pid=pid, command=TaskCommand("prio", 3), uid=1), 5 * SECOND)
    assert d.kernel.engines.waiting("llm") == 1 and len(d.kinds("stall")) == 1
    d.apply(Tick(), 10 * SECOND)
    assert d.kernel.tasks[pid].exit.startswith("failed: llm's engine down for 10s")


def test_a_task_stopped_past_its_wait_stalls_afresh_when_continued():
    """A stalled task stopped when its wait ends does not fail; continued, it waits engine_wait_s again."""
    d = Driven(wait_s=10.0)
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 0)
    pid = d.submit("llm", 0)
    d.apply(Control(pid=pid, command=TaskCommand("stop"), uid=1), SECOND)
    d.apply(Tick(), 10 * SECOND)
    d.apply(Control(pid=pid, command=TaskCommand("cont"), uid=1), 12 * SECOND)
    assert not d.kernel.tasks[pid].done and d.kernel.next_deadline_us() == 22 * SECOND
    d.apply(Tick(), 22 * SECOND)
    assert d.kernel.tasks[pid].exit.startswith("failed: llm's engine down for 22s")


def test_interrupted_task_resumes_from_its_text():
    """An interrupted task goes back to the queue with its output and is dispatched again to go on."""
    d = Driven()
    pid = d.submit("llm", 0)
    d.serve(pid, "one two", SECOND, tokens=2)
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 2 * SECOND)
    d.apply(Interrupted(pid=pid, reason="stream broke after 2 tokens"), 2 * SECOND)
    task = d.kernel.tasks[pid]
    assert task.state is State.PREEMPTED and task.gpu is None and bytes(task.output) == b"one two"
    assert "stream broke after 2 tokens; resumes after token 2 (resume 1 of 2)" in d.kinds("resume")[0]
    d.apply(EngineHealth(model="llm", up=True), 3 * SECOND)
    d.serve(pid, " three", 4 * SECOND, tokens=6)
    assert task.exit == "done" and bytes(task.output) == b"one two three" and task.tokens_out == 8


def test_resume_limit_fails_the_task_with_the_reason():
    """Past resume_limit interruptions a task fails with the last reason."""
    d = Driven(resume_limit=1)
    pid = d.submit("llm", 0)
    d.apply(Interrupted(pid=pid, reason="stream broke"), SECOND)
    assert d.kernel.tasks[pid].state is State.RUNNING  # dispatched again at once: the engine is up
    d.apply(Interrupted(pid=pid, reason="stream broke again"), 2 * SECOND)
    assert d.kernel.tasks[pid].exit == "failed: stream broke again"


def test_interrupted_after_the_task_left_its_gpu_changes_nothing():
    """An interruption that arrives after the task was killed is moot."""
    d = Driven()
    pid = d.submit("llm", 0)
    d.apply(Kill(pid=pid, uid=1), SECOND)
    d.apply(Interrupted(pid=pid, reason="late"), 2 * SECOND)
    assert d.kernel.tasks[pid].exit == "killed" and not d.kinds("resume")


def test_engine_stall_time_is_counted():
    """The engine stall clock counts the time a stalled task waited."""
    d = Driven()
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 0)
    d.submit("llm", 0)
    d.apply(EngineHealth(model="llm", up=True), 4 * SECOND)
    assert d.kernel.engines.clock.snapshot(5 * SECOND).total_us == 4 * SECOND


def test_replay_through_the_journal_codec_gives_the_same_trace():
    """Replaying the same events, encoded and decoded as the journal does, rebuilds the same trace and exits."""
    d = Driven(wait_s=5.0, resume_limit=1)
    a, b = d.submit("llm", 0), d.submit("llm", 0)
    d.serve(a, "x", SECOND)
    d.apply(EngineHealth(model="llm", up=False, reason="refused"), 2 * SECOND)
    d.apply(Interrupted(pid=a, reason="broke"), 2 * SECOND)
    d.apply(Interrupted(pid=b, reason="broke"), 2 * SECOND)
    c = d.submit("llm", 3 * SECOND)
    d.apply(EngineHealth(model="llm", up=True), 4 * SECOND)
    d.apply(Tick(), 10 * SECOND)
    replayed = Kernel(config(wait_s=5.0, resume_limit=1))
    for now_us, event in d.log:
        replayed.apply(from_row(*to_row(event)), now_us)
    assert replayed.trace.buffer == d.kernel.trace.buffer
    assert [replayed.tasks[p].exit for p in (a, b, c)] == [d.kernel.tasks[p].exit for p in (a, b, c)]


async def test_a_model_left_down_by_the_journal_is_tried_again_at_start(tmp_path, autojump_clock):
    """A model down when the daemon stopped is up again once its driver starts, and its stalled task runs."""
    with open_runtime(tmp_path) as rt:
        rt.commit([EngineHealth(model="sim", up=False, reason="unreachable: refused")])
        pid = submit(rt)
        assert rt.kernel.engines.waiting() == 1
    with open_runtime(tmp_path) as rt:
        rt.recover()
        assert "sim" in rt.kernel.engines.down
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            with trio.fail_after(60):
                while not rt.kernel.tasks[pid].done:
                    await rt.wait_for(pid, 1.0)
            nursery.cancel_scope.cancel()
        assert rt.kernel.tasks[pid].exit == "done" and not rt.kernel.engines.down
