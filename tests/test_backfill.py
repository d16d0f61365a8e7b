"""Tier 1: backfill (kernel/moves.py): dispatch looks past a head none of whose GPUs has an open slot,
up to BACKFILL_WINDOW heads a pass, and the heads it looks past keep their places in the queue."""
import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig, SchedConfig
from apeinxfs.kernel.events import Chunk, EngineHealth, Step, Tick
from apeinxfs.kernel.invariants import InvariantError
from apeinxfs.kernel.moves import BACKFILL_WINDOW
from apeinxfs.kernel.sched import POLICIES
from apeinxfs.kernel.state import decode, encode
from apeinxfs.kernel.task import State
from apeinxfs.kernel.tenant_config import TenantConfig
from test_kernel import submit

PROMPT = " ".join(f"w{n}" for n in range(16))  # 17 tokens: 3 pages of 8, most of a 4-page pool


def two_models(policy="fair", slots=1, kv_mib=64) -> Kernel:
    """Model a on GPUs 0-1 and model b on GPUs 2-3 (an endpoint each), `slots` slots a GPU; tenants x and y
    beside default."""
    models = [ModelConfig(name="a", endpoints=[{"url": "http://a", "gpus": [0, 1]}]),
              ModelConfig(name="b", endpoints=[{"url": "http://b", "gpus": [2, 3]}])]
    return Kernel(KernelConfig(models=models, page_mib=1, sched=SchedConfig(policy=policy, deadline_boost_s=1),
                               gpus=[GpuConfig(index=n, kv_mib=kv_mib, slots=slots) for n in range(4)],
                               tenants=[TenantConfig("default"), TenantConfig("x", 100), TenantConfig("y", 300)]))


def checked_submit(kernel: Kernel, **fields) -> int:
    """Submit, then check the kernel's invariants."""
    pid = submit(kernel, **fields)
    kernel.check_invariants()
    return pid


def dispatch_lines(kernel: Kernel) -> list[str]:
    return [line for line in kernel.trace.buffer.decode().splitlines() if ",dispatch," in line]


def drain_order(kernel: Kernel, set_aside: int = 0) -> list[int]:
    """The queued pids in the order a copy of the kernel's queue gives them, after its first `set_aside`
    heads were taken out and pushed back, as a dispatch pass that looks past them does."""
    runq, now_us = decode(encode(kernel)).runq, kernel.now_us
    heads = []
    while len(heads) < set_aside and (task := runq.peek(now_us)) is not None:
        runq.remove(task)
        heads.append(task)
    for task in heads:
        runq.push(task)
    order = []
    while (task := runq.peek(now_us)) is not None:
        runq.remove(task)
        order.append(task.pid)
    return order


def test_a_task_of_another_model_runs_at_once_while_the_heads_gpus_are_full():
    """a's two tasks fill GPUs 0-1 and a third waits; b's task then runs on GPU 2 at once, its dispatch line
    says it was backfilled past a's head, and a's head is still the queue's head."""
    k = two_models()
    running = [checked_submit(k, model="a") for _ in range(2)]
    head = checked_submit(k, model="a")
    other = checked_submit(k, model="b")
    assert sorted(k.tasks[p].gpu for p in running) == [0, 1] and k.tasks[head].state is State.QUEUED
    assert k.tasks[other].gpu == 2
    assert f"backfill past pid {head} (its GPUs are full), then least counter: tenant default" in dispatch_lines(k)[-1]
    assert "queued=1" in dispatch_lines(k)[-1]
    assert k.runq.peek(k.now_us) is k.tasks[head] and k.counters.dispatched == 3


def test_a_tenant_whose_only_queued_task_was_looked_past_is_counted_backlogged():
    """x's only queued task (of a, whose GPUs are full) is looked past to run y's task of b: the dispatch line
    counts both x and y backlogged, as x's task still waits in the run queue."""
    k = two_models()
    for _ in range(2):
        checked_submit(k, model="a")
    head = checked_submit(k, model="a", tenant="x")
    checked_submit(k, model="b", tenant="y")
    assert f"backfill past pid {head} (its GPUs are full), then least counter: tenant y of 2 backlogged;" \
        in dispatch_lines(k)[-1]


def test_a_head_whose_open_gpu_has_its_endpoint_down_is_said_to_be_so():
    """a's endpoint on GPU 1 is down and GPU 0 is full: b's task runs past a's head, and the dispatch line says
    a's engine at GPU 1 is down, not that a's GPUs are full."""
    models = [ModelConfig(name="a", endpoints=[{"url": "http://a0", "gpus": [0]}, {"url": "http://a1", "gpus": [1]}]),
              ModelConfig(name="b", endpoints=[{"url": "http://b", "gpus": [2]}])]
    k = Kernel(KernelConfig(models=models, page_mib=1, gpus=[GpuConfig(index=n, kv_mib=64, slots=1) for n in range(3)]))
    k.apply(EngineHealth(model="a", up=False, reason="unreachable: refused", gpus=(1,)), 0)
    running, head = checked_submit(k, model="a"), checked_submit(k, model="a")
    other = checked_submit(k, model="b")
    assert [k.tasks[p].gpu for p in (running, head, other)] == [0, None, 2] and k.gpus[1].open
    assert f"backfill past pid {head} (its engine at gpus=1 is down), then least counter" in dispatch_lines(k)[-1]


def test_a_head_stopped_by_kv_still_stops_the_dispatch():
    """a's head has an open slot on its GPU but not the KV pages: b's task behind it waits, GPU 2 idle."""
    k = Kernel(KernelConfig(models=[ModelConfig(name="a", endpoints=[{"url": "http://a", "gpus": [0]}]),
                                    ModelConfig(name="b", endpoints=[{"url": "http://b", "gpus": [1]}])],
                            page_mib=1, gpus=[GpuConfig(index=n, kv_mib=4, slots=2) for n in range(2)]))
    first = checked_submit(k, model="a", prompt=PROMPT)
    head = checked_submit(k, model="a", prompt=PROMPT.replace("w", "v"))
    other = checked_submit(k, model="b")
    assert k.tasks[first].gpu == 0 and k.gpus[0].open
    assert [k.tasks[p].state for p in (head, other)] == [State.QUEUED, State.QUEUED] and not k.gpus[1].running
    k.apply(Step(gpu=0, chunks=[Chunk(pid=first, text="x", tokens=4, final=True)]), 1000)
    assert [k.tasks[p].gpu for p in (head, other)] == [0, 1]  # a's head first, then b's task without backfill
    assert "backfill" not in dispatch_lines(k)[-1]


@pytest.mark.parametrize("deep, runs", [(BACKFILL_WINDOW, True), (BACKFILL_WINDOW + 1, False)])
def test_dispatch_looks_past_at_most_the_window_of_heads(deep, runs):
    """With a's GPUs full and `deep` more tasks of a queued ahead of b's task, b's task runs when at most
    BACKFILL_WINDOW heads are ahead of it, and waits as before when one more is."""
    k = two_models(policy="fcfs", slots=1)
    for _ in range(2 + deep):
        submit(k, model="a")
    other = checked_submit(k, model="b")
    assert (k.tasks[other].state is State.RUNNING) is runs
    assert len(k.runq) == deep + (not runs)


def test_a_pass_that_fills_the_window_rests_backfill():
    """b's task one deeper than the window: the pass that fills the window in vain rests backfill, so events
    in the rest take no head out of the queue; once a's head ran and b's task is within the window, it is
    backfilled at the first event after the rest, not before."""
    k = two_models(policy="fcfs", slots=1)
    running = [submit(k, model="a") for _ in range(2)]
    for _ in range(BACKFILL_WINDOW + 1):
        submit(k, model="a")
    other = checked_submit(k, model="b")
    removed = []
    remove = k.runq.remove
    k.runq.remove = lambda task: (removed.append(task.pid), remove(task))[1]
    k.apply(Tick(), k.now_us + 1)
    assert removed == [] and k.moves.backfill_after_us > k.now_us
    k.apply(Step(gpu=0, chunks=[Chunk(pid=running[0], text="x", tokens=1, final=True)]), k.now_us + 1)
    assert k.tasks[other].state is State.QUEUED and len(removed) == 1  # a's next head took GPU 0
    k.apply(Tick(), k.moves.backfill_after_us)
    assert k.tasks[other].state is State.RUNNING and k.tasks[other].gpu == 2
    k.check_invariants()


@pytest.mark.parametrize("policy", POLICIES)
def test_the_heads_looked_past_keep_their_order(policy):
    """Tasks of a from two tenants and agents, prios, children and deadlines queue behind full GPUs: a task of
    b backfilled past them leaves their order (the queue's own, deadline boosts included) as it was in a
    kernel that never saw b's task."""
    kernels = [two_models(policy) for _ in range(2)]
    for k in kernels:
        for n in range(12):
            parent = 1 if n % 4 == 3 else None
            submit(k, model="a", tenant=None if parent else "xy"[n % 2], prio=n % 3 + 4, parent=parent,
                   deadline_us=None if n % 5 else 900_000 + n)
    before = drain_order(kernels[0])
    other = checked_submit(kernels[1], model="b", tenant="y")
    assert kernels[1].tasks[other].state is State.RUNNING
    assert f"backfill past pid {before[0]}" in dispatch_lines(kernels[1])[-1]
    assert drain_order(kernels[1]) == drain_order(kernels[0]) == before and len(before) == 10
    assert [t.pid for t in kernels[1].runq.tasks()] == [t.pid for t in kernels[0].runq.tasks()]


def test_the_queued_tasks_counted_by_model_are_checked():
    """The run queue's count of queued tasks by model (which says whether looking past a head can find a
    task for the open GPUs) is checked against the queue: a wrong count is an invariant broken."""
    k = two_models()
    for _ in range(3):
        checked_submit(k, model="a")
    assert list(k.runq.queued_models()) == ["a"]
    k.runq._models["b"] = 1
    with pytest.raises(InvariantError, match=r"by model \{'a': 1, 'b': 1\} are not the queue's \{'a': 1\}"):
        k.check_invariants()
