"""Tier 1: the run queue and its policies (kernel/sched.py) on bare tasks, without a kernel.

How the kernel uses the queue (dispatch, preemption) is in test_kernel.py.
"""
import pytest

from apeinxfs.kernel.sched import (NICE_0_WEIGHT, SLICE_TOKENS, FairPolicy, GreedyPolicy, RunQueue,
                                   prio_weight, vruntime_delta)
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import Task


def task(pid: int, prio: int = 5, vruntime: int = 0) -> Task:
    return Task(pid=pid, spec=TaskSpec(name=f"t{pid}", prio=prio), model="sim", uid=0, submitted_us=0,
                tokens_in=1, weight=prio_weight(prio), deadline_at_us=None, vruntime=vruntime)


def drain(queue: RunQueue) -> list[int]:
    return [queue.pop().pid for _ in range(len(queue))]


def test_prio_5_is_nice_0():
    """prio 5 weighs 1024, like a nice-0 CFS task."""
    assert prio_weight(5) == NICE_0_WEIGHT == 1024


@pytest.mark.parametrize("prio", range(9))
def test_weights_are_geometric(prio):
    """Each prio step is worth 1.25x the one below (to rounding)."""
    assert prio_weight(prio + 1) / prio_weight(prio) == pytest.approx(1.25, rel=0.01)


def test_weight_table():
    """The ends of the table: prio 0 is 336 and prio 9 is 2500."""
    assert [prio_weight(p) for p in (0, 9)] == [336, 2500]


def test_vruntime_delta_is_inverse_to_weight():
    """A nice-0 token costs 1024 units; a heavier task pays less per token."""
    assert vruntime_delta(1, 1024) == 1024
    heavy, nice0, light = (vruntime_delta(10, prio_weight(p)) for p in (9, 5, 0))
    assert heavy < nice0 < light


def test_fair_serves_least_vruntime_first():
    """Under fair, the task with the least vruntime comes out first, pid breaking ties."""
    queue = RunQueue(FairPolicy())
    for pid, vruntime in ((1, 3000), (2, 1000), (3, 2000), (4, 1000)):
        queue.push(task(pid, vruntime=vruntime))
    assert drain(queue) == [2, 4, 3, 1]


def test_fair_newcomer_starts_one_slice_late():
    """A new task enters at min_vruntime plus one weighted slice, so it cannot starve others."""
    queue = RunQueue(FairPolicy())
    queue.min_vruntime = 50_000
    newcomer = task(1)
    queue.push(newcomer, new=True)
    assert newcomer.vruntime == 50_000 + vruntime_delta(SLICE_TOKENS, 1024)


def test_fair_sleeper_credit_is_bounded():
    """A returning task keeps at most one slice of credit below min_vruntime."""
    queue = RunQueue(FairPolicy())
    queue.min_vruntime = 500_000
    sleeper = task(1, vruntime=0)
    queue.push(sleeper)
    assert sleeper.vruntime == 500_000 - vruntime_delta(SLICE_TOKENS, 1024)


def test_greedy_serves_highest_prio_first():
    """Under greedy, higher prio runs first, then first come (lower pid)."""
    queue = RunQueue(GreedyPolicy())
    for pid, prio in ((1, 2), (2, 9), (3, 5), (4, 9)):
        queue.push(task(pid, prio=prio))
    assert drain(queue) == [2, 4, 3, 1]
    assert queue.peek() is None


def test_lazy_deletion():
    """A removed task is never peeked or popped, though its heap entry stays behind."""
    queue = RunQueue(FairPolicy())
    first, second = task(1, vruntime=10), task(2, vruntime=20)
    queue.push(first)
    queue.push(second)
    queue.remove(first)
    assert len(queue) == 1
    assert queue.peek() is second
    assert drain(queue) == [2]


def test_repush_uses_the_new_key():
    """A task pushed again after its vruntime changed is ordered by the new key only."""
    queue = RunQueue(FairPolicy())
    moving, still = task(1, vruntime=10), task(2, vruntime=20)
    queue.push(moving)
    queue.push(still)
    queue.remove(moving)
    moving.vruntime = 30
    queue.push(moving)
    assert drain(queue) == [2, 1]


def test_min_vruntime_only_moves_forward():
    """advance raises min_vruntime to the least live vruntime but never lowers it."""
    queue = RunQueue(FairPolicy())
    queue.advance([5000, 7000])
    assert queue.min_vruntime == 5000
    queue.advance([100])
    assert queue.min_vruntime == 5000


def test_tasks_lists_in_run_order():
    """tasks() lists queued tasks in the order they would run."""
    queue = RunQueue(GreedyPolicy())
    for pid, prio in ((1, 1), (2, 8)):
        queue.push(task(pid, prio=prio))
    assert [t.pid for t in queue.tasks()] == [2, 1]
