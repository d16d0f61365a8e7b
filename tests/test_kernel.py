"""Tier 1: the kernel state machine (kernel/kernel.py) driven with explicit times, no clock.

Covers the task life cycle, ctl commands, refusals from `Kernel.check`, deadlines, KV page
books, preemption, restart, the trace and determinism. Policies in isolation are in
test_sched.py; the journal and the real driver loop are in test_journal_runtime.py.
"""
import collections
import csv
import errno
import io

import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig, SchedConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Chunk, Control, Failed, Kill, Rejected, Restart, Step, Submit, Tick
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.task import State

TOKENS_PER_PAGE = 8  # 1 MiB pages over the default model's 128 KiB of KV per token
STEP_US = 20_000


def kernel_config(gpus=1, kv_mib=4, slots=2, policy="fair", context=32768) -> KernelConfig:
    """Small pools: `kv_mib` pages of 8 tokens on each of `gpus` GPUs."""
    return KernelConfig(models=[ModelConfig(name="sim", context=context)], page_mib=1, sched=SchedConfig(policy=policy),
                        gpus=[GpuConfig(index=i, kv_mib=kv_mib, slots=slots) for i in range(gpus)])


def submit(kernel, now_us=0, name="job", tokens=4, prio=5, **fields) -> int:
    """Check and apply one Submit; its pid."""
    event = Submit(spec=TaskSpec(name=name, max_tokens=tokens, prio=prio, **fields), uid=1000)
    kernel.check(event)
    return kernel.apply(event, now_us)


def control(kernel, pid, verb, arg=None, now_us=0) -> None:
    """Check and apply one task ctl command."""
    event = Control(pid=pid, command=TaskCommand(verb, arg))
    kernel.check(event)
    kernel.apply(event, now_us)


def step_event(kernel, gpu) -> Step:
    """What a one-token engine step on `gpu` reports: a word per running task."""
    return Step(gpu=gpu.config.index, chunks=[
        Chunk(pid=t.pid, text=f" w{t.tokens_out}", tokens=1, prefill=0 if t.prefilled else t.context_tokens)
        for t in gpu.running.values()])


def step(kernel, now_us) -> list:
    """One step on every GPU with a batch, at `now_us`; the events applied."""
    applied = [step_event(kernel, g) for g in kernel.gpus if g.running]
    for event in applied:
        kernel.apply(event, now_us)
    return applied


def run_until_idle(kernel, now_us=STEP_US, check_books=True) -> int:
    """Step every STEP_US until nothing runs, checking the KV books each step; the end time."""
    while any(g.running for g in kernel.gpus):
        step(kernel, now_us)
        if check_books:
            assert_books(kernel)
        now_us += STEP_US
    return now_us


def assert_books(kernel) -> None:
    """KV pools are never over-used and hold exactly the pages of the tasks they run."""
    for gpu in kernel.gpus:
        assert 0 <= gpu.pool.pages_used <= gpu.pool.pages_total
        assert gpu.pool.pages_used == sum(t.kv_pages for t in gpu.running.values())
        assert all(t.gpu == gpu.config.index and t.state is State.RUNNING for t in gpu.running.values())
    idle = [t for t in kernel.tasks.values() if t.state is not State.RUNNING]
    assert all(t.kv_pages == 0 and t.gpu is None for t in idle)


def recount(kernel) -> dict:
    """state_counts as they should be: a count of the tasks by state, zeros dropped."""
    return dict(collections.Counter(t.state for t in kernel.tasks.values()))


def trace_rows(kernel) -> list[dict]:
    return list(csv.DictReader(io.StringIO(kernel.trace.buffer.decode())))


def trace_types(kernel, pid=None) -> list[str]:
    return [r["type"] for r in trace_rows(kernel) if pid is None or r["pid"] == str(pid)]


def refusal(kernel, event) -> ApeinxError:
    with pytest.raises(ApeinxError) as caught:
        kernel.check(event)
    return caught.value


# -- life cycle ---------------------------------------------------------------------------------


def test_submit_dispatches_until_slots_run_out():
    """Pids count from 1; tasks run while slots last and queue after."""
    kernel = Kernel(kernel_config(slots=2))
    pids = [submit(kernel) for _ in range(3)]
    assert pids == [1, 2, 3]
    assert [kernel.tasks[p].state for p in pids] == [State.RUNNING, State.RUNNING, State.QUEUED]
    assert kernel.batch(0) == [kernel.tasks[1], kernel.tasks[2]]


def test_steps_run_a_task_to_done():
    """Each Step adds its text and token; at max_tokens the task exits `done`."""
    kernel = Kernel(kernel_config())
    pid = submit(kernel, tokens=3)
    run_until_idle(kernel)
    task = kernel.tasks[pid]
    assert (task.state, task.exit, task.tokens_out) == (State.EXITED, "done", 3)
    assert task.output == b" w0 w1 w2"
    assert task.first_token_us == STEP_US and task.exited_us == 3 * STEP_US
    assert trace_types(kernel, pid) == ["submit", "dispatch", "first_token", "bill", "exit"]


def test_step_for_a_task_not_on_that_gpu_is_ignored():
    """A chunk naming a task that is not in the GPU's batch changes nothing."""
    kernel = Kernel(kernel_config(gpus=2, slots=1))
    pid = submit(kernel)
    other = 1 - kernel.tasks[pid].gpu
    kernel.apply(Step(gpu=other, chunks=[Chunk(pid=pid, text="x", tokens=1)]), 1)
    assert kernel.tasks[pid].tokens_out == 0 and kernel.tasks[pid].output == b""


def test_queued_task_runs_when_a_slot_frees():
    """When a running task exits, the queued one is dispatched in the same apply."""
    kernel = Kernel(kernel_config(slots=1))
    first, second = submit(kernel, tokens=2), submit(kernel, tokens=2)
    step(kernel, 1)
    step(kernel, 2)
    assert kernel.tasks[first].exit == "done"
    assert kernel.tasks[second].state is State.RUNNING


# -- ctl commands ---------------------------------------------------------------------------------


def test_kill_frees_slot_and_pages():
    """Killing a running task exits it `killed`, frees its KV and lets the next run."""
    kernel = Kernel(kernel_config(slots=1))
    victim, waiting = submit(kernel), submit(kernel)
    event = Kill(pid=victim, uid=7)
    kernel.check(event)
    kernel.apply(event, 5)
    assert kernel.tasks[victim].exit == "killed"
    assert kernel.tasks[waiting].state is State.RUNNING
    assert_books(kernel)


def test_stop_and_cont():
    """stop takes a task off its GPU (T); cont puts it back in line and it runs again."""
    kernel = Kernel(kernel_config())
    pid = submit(kernel)
    step(kernel, 1)
    control(kernel, pid, "stop", now_us=2)
    task = kernel.tasks[pid]
    assert (task.state, task.kv_pages, len(kernel.runq)) == (State.STOPPED, 0, 0)
    step(kernel, 3)
    assert task.tokens_out == 1
    control(kernel, pid, "cont", now_us=4)
    assert task.state is State.RUNNING and not task.prefilled
    assert trace_types(kernel, pid)[-3:] == ["stop", "cont", "dispatch"]


def test_prio_changes_weight():
    """prio N sets the task's prio and its geometric weight, and is traced."""
    kernel = Kernel(kernel_config())
    pid = submit(kernel, prio=5)
    control(kernel, pid, "prio", 7)
    task = kernel.tasks[pid]
    assert (task.spec.prio, task.weight) == (7, 1600)
    assert trace_rows(kernel)[-1]["detail"] == "prio=7 weight=1600"


def test_prio_of_a_queued_task_reorders_the_queue():
    """Raising a queued task's prio under greedy makes it the next to run."""
    kernel = Kernel(kernel_config(slots=1, policy="greedy"))
    running, low, high = submit(kernel, prio=5), submit(kernel, prio=5), submit(kernel, prio=5)
    control(kernel, high, "prio", 9)
    kernel.apply(Kill(pid=running), 1)
    assert kernel.tasks[high].state is State.RUNNING
    assert kernel.tasks[low].state is State.QUEUED


def test_failed_exits_with_reason():
    """A driver's Failed event ends the task with `failed: REASON`."""
    kernel = Kernel(kernel_config())
    pid = submit(kernel)
    kernel.apply(Failed(pid=pid, reason="engine down"), 1)
    assert kernel.tasks[pid].exit == "failed: engine down"
    assert_books(kernel)


def test_rejected_is_counted_and_traced():
    """A Rejected event leaves its reason in the trace and bumps the counter."""
    kernel = Kernel(kernel_config())
    kernel.apply(Rejected(path="/ctl/submit", reason="bad line", uid=3), 1)
    assert kernel.counters.rejected == 1
    assert trace_rows(kernel)[-1]["detail"] == "/ctl/submit: bad line (uid 3)"


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields,code", [
    ({"model": "nope"}, errno.ENOENT),
    ({"tenant": "acme"}, errno.ENOENT),
    ({"tokens": 100}, errno.ENOSPC),
])
def test_submit_refusals(fields, code):
    """Unknown model or tenant is ENOENT; a task that can never fit in one pool is ENOSPC."""
    kernel = Kernel(kernel_config(kv_mib=4))
    spec = TaskSpec(name="j", max_tokens=fields.pop("tokens", 4), **fields)
    assert refusal(kernel, Submit(spec=spec)).errno == code


def test_context_overflow_is_einval():
    """Prompt plus max_tokens beyond the model's context is EINVAL."""
    kernel = Kernel(kernel_config(context=16))
    assert refusal(kernel, Submit(spec=TaskSpec(name="j", max_tokens=16))).errno == errno.EINVAL


def test_largest_fitting_task_is_accepted():
    """A task whose whole context just fits the pool passes check."""
    kernel = Kernel(kernel_config(kv_mib=4))
    kernel.check(Submit(spec=TaskSpec(name="j", max_tokens=4 * TOKENS_PER_PAGE - 1)))


def test_ctl_refusals():
    """Unknown pid is ENOENT; exited task, stop twice and cont of a live task are EBUSY."""
    kernel = Kernel(kernel_config())
    live, gone = submit(kernel), submit(kernel)
    kernel.apply(Kill(pid=gone), 1)
    assert refusal(kernel, Kill(pid=99)).errno == errno.ENOENT
    assert refusal(kernel, Kill(pid=gone)).errno == errno.EBUSY
    assert refusal(kernel, Control(pid=live, command=TaskCommand("cont"))).errno == errno.EBUSY
    control(kernel, live, "stop")
    assert refusal(kernel, Control(pid=live, command=TaskCommand("stop"))).errno == errno.EBUSY


def test_events_made_moot_in_one_commit_change_nothing():
    """Two conts or two kills checked together apply once: no task on two GPUs, one exit."""
    kernel = Kernel(kernel_config(gpus=2))
    pid = submit(kernel)
    control(kernel, pid, "stop")
    batch = [Control(pid=pid, command=TaskCommand("cont"))] * 2 + [Kill(pid=pid)] * 2
    for event in batch:  # all checked first, then all applied, as Runtime.commit does
        kernel.check(event)
    for event in batch:
        kernel.apply(event, 1)
    assert sum(pid in g.running for g in kernel.gpus) == 0
    assert kernel.counters.exits == {"killed": 1}
    assert_books(kernel)


# -- deadlines ---------------------------------------------------------------------------------------


def test_deadline_expires_on_time():
    """A task with a 1 s deadline is still alive at 999,999 us and `expired` at 1 s."""
    kernel = Kernel(kernel_config())
    pid = submit(kernel, now_us=0, tokens=20, deadline_us=1_000_000)
    assert kernel.next_deadline_us() == 1_000_000
    kernel.apply(Tick(), 999_999)
    assert kernel.tasks[pid].exit is None
    kernel.apply(Tick(), 1_000_000)
    assert kernel.tasks[pid].exit == "expired"
    assert kernel.next_deadline_us() == kernel.reaper.next_us()  # no deadline left: only its reaping by age
    assert_books(kernel)


def test_deadline_of_a_finished_task_is_dropped():
    """Once its task is done, a deadline no longer counts as the next one."""
    kernel = Kernel(kernel_config())
    submit(kernel, tokens=1, deadline_us=5_000_000)
    step(kernel, 1)
    assert kernel.next_deadline_us() == kernel.reaper.next_us() > 5_000_000  # only its reaping by age


# -- KV pages ------------------------------------------------------------------------------------


def test_kv_pages_grow_per_token_and_are_freed():
    """A task holds pages for context+1 tokens after each step, and none once done."""
    kernel = Kernel(kernel_config(kv_mib=4))
    pid = submit(kernel, tokens=20)
    task, now = kernel.tasks[pid], 0
    while not task.done:
        expected = -(-(task.context_tokens + 1) // TOKENS_PER_PAGE)
        assert task.kv_pages == expected == kernel.gpus[0].pool.pages_used
        now += STEP_US
        step(kernel, now)
    assert kernel.gpus[0].pool.pages_used == 0 and task.kv_pages == 0


def test_preemption_when_the_pool_is_full():
    """Two tasks that cannot both grow in one pool: one is preempted, both finish, books hold."""
    kernel = Kernel(kernel_config(kv_mib=4, slots=2))
    pids = [submit(kernel, name=f"j{i}", tokens=30) for i in range(2)]
    run_until_idle(kernel)
    assert kernel.counters.preempted >= 1
    assert "preempt" in trace_types(kernel)
    assert [kernel.tasks[p].exit for p in pids] == ["done", "done"]
    assert kernel.moves.kv_some.snapshot(kernel.now_us).total_us > 0


# -- restart, trace, determinism ------------------------------------------------------------------


def test_restart_requeues_running_tasks():
    """Restart takes running tasks off their GPUs (to prefill again) and says so in the trace."""
    kernel = Kernel(kernel_config(slots=2))
    pids = [submit(kernel, tokens=10) for _ in range(3)]
    step(kernel, 1)
    kernel.apply(Restart(), 2)
    types = trace_types(kernel)
    restart_at = types.index("restart")
    assert types[restart_at:].count("requeue") == 2
    assert trace_rows(kernel)[restart_at]["detail"] == "daemon restarted with 3 tasks"
    assert all(not kernel.tasks[p].prefilled for p in pids)
    assert_books(kernel)


def scenario() -> tuple[Kernel, list]:
    """A busy run (submits, steps, stop/cont, prio, kill, deadline, restart); the kernel and
    the (event, time) list it applied."""
    kernel, applied = Kernel(kernel_config(gpus=2, kv_mib=3, slots=2)), []

    def apply(event, now):
        kernel.check(event)
        applied.append((event, now))
        kernel.apply(event, now)
    for i in range(6):
        apply(Submit(spec=TaskSpec(name=f"j{i}", max_tokens=10 + i, prio=i, prompt=f"p {i}",
                                   deadline_us=60_000 if i == 5 else None)), i)
    for now in range(STEP_US, 40 * STEP_US, STEP_US):
        applied += [(e, now) for e in step(kernel, now)]
        if now == 3 * STEP_US:
            apply(Control(pid=2, command=TaskCommand("stop")), now)
            apply(Control(pid=3, command=TaskCommand("prio", 9)), now)
            apply(Kill(pid=4), now)
        if now == 8 * STEP_US:
            apply(Control(pid=2, command=TaskCommand("cont")), now)
            apply(Restart(), now)
        apply(Tick(), now)
    return kernel, applied


def test_scenario_keeps_its_books():
    """At every event of the busy scenario, state_counts match a recount and KV books balance."""
    original, applied = scenario()
    kernel = Kernel(original.config)
    for event, now in applied:
        kernel.apply(event, now)
        assert {s: n for s, n in kernel.tasks.state_counts.items() if n} == recount(kernel)
        assert_books(kernel)
    assert kernel.tasks[6].exit == "expired" and kernel.tasks[4].exit == "killed"
    assert kernel.counters.preempted and "requeue" in trace_types(kernel)


def test_trace_seq_strictly_increasing():
    """Trace seqs run 1, 2, 3... with no gap, and times never go back."""
    kernel, _ = scenario()
    rows = trace_rows(kernel)
    assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1))
    times = [int(r["time_us"]) for r in rows]
    assert times == sorted(times)


def test_task_and_tenant_trace_views_are_the_whole_trace_filtered():
    """Each task's and tenant's lines, read between events and after, are the whole trace's lines of it, in order."""
    kernel = Kernel(kernel_config(slots=1))
    kernel.apply(Submit(spec=TaskSpec(name="a", max_tokens=3, prompt='say "hi"\nthen stop')), 0)
    early = bytes(kernel.trace.of_tenant("default"))  # read once mid-run: later reads copy only the new lines
    submit(kernel, name="b", tokens=3)
    run_until_idle(kernel)
    rows = trace_rows(kernel)
    for pid in kernel.tasks:
        own = list(csv.DictReader(io.StringIO(kernel.trace.of_task(kernel.tasks[pid]).decode())))
        assert own == [r for r in rows if r["pid"] == str(pid)] and len(own) >= 5
    tenant = list(csv.DictReader(io.StringIO(kernel.trace.of_tenant("default").decode())))
    assert early.count(b"\n") == 3 and tenant == [r for r in rows if r["tenant"] == "default"]
    assert tenant[0]["detail"].startswith("name=a") and kernel.trace.of_tenant("nobody") == b"seq,time_us,type,pid,tenant,model,gpu,node,detail\n"


def test_same_events_give_identical_state():
    """Replaying the applied events into a fresh kernel gives byte-identical trace and outputs."""
    original, applied = scenario()
    replica = Kernel(original.config)
    for event, now in applied:
        replica.apply(event, now)
    assert replica.trace.buffer == original.trace.buffer
    assert {p: bytes(t.output) for p, t in replica.tasks.items()} == \
        {p: bytes(t.output) for p, t in original.tasks.items()}
    assert {p: replica.trace.of_task(t) for p, t in replica.tasks.items()} == \
        {p: original.trace.of_task(t) for p, t in original.tasks.items()}


def test_take_changed_reports_and_clears():
    """take_changed names the touched pid, the trace and the GPU, then starts empty."""
    kernel = Kernel(kernel_config())
    pid = submit(kernel)
    assert {pid, "trace", ("gpu", 0)} <= kernel.take_changed()
    assert kernel.take_changed() == set()
