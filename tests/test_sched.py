"""Tier 1: accounts and run queues (kernel/sched.py) on bare tasks, without a kernel.

How the kernel uses them (dispatch, preemption, hierarchy) is in test_fairness_kernel.py.
"""
import random

import pytest

from apeinxfs.kernel.sched import (NICE_0_WEIGHT, Accounts, LazyHeap, make_queue, prio_weight,
                                   vruntime_delta)
from apeinxfs.kernel.boost import WALKED
from apeinxfs.kernel.config import SchedConfig
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import Task

SLICE_TOKENS = SchedConfig().slice_tokens  # how far ahead of the least backlogged counter a deadline is boosted

def task(pid: int, tenant: str = "a", prio: int = 5, submitted: int = 0, agent: int | None = None,
         deadline: int | None = None) -> Task:
    return Task(pid=pid, spec=TaskSpec(name=f"t{pid}", prio=prio), model="sim", tenant=tenant, uid=0,
                submitted_us=submitted, tokens_in=1, weight=prio_weight(prio), deadline_at_us=deadline,
                agent=agent or pid)


def queue_with(policy: str, tasks, accounts=None):
    accounts = accounts or Accounts({"a": 100, "b": 100})
    queue = make_queue(policy, accounts, boost_us=1_000_000)
    for t in tasks:
        accounts.count(t, "runnable", +1)
        queue.push(t)
    return queue, accounts


def drain(queue) -> list[int]:
    order = []
    while (t := queue.peek(0, SLICE_TOKENS)) is not None:
        order.append(t.pid)
        queue.remove(t)
    return order


def test_prio_5_is_nice_0():
    """prio 5 weighs 1024, like a nice-0 CFS task."""
    assert prio_weight(5) == NICE_0_WEIGHT == 1024


@pytest.mark.parametrize("prio", range(9))
def test_weights_are_geometric(prio):
    """Each prio step is worth 1.25x the one below (to rounding)."""
    assert prio_weight(prio + 1) / prio_weight(prio) == pytest.approx(1.25, rel=0.01)


def test_vruntime_delta_is_inverse_to_weight():
    """A nice-0 token costs 1024 units; a heavier task pays less per token."""
    assert vruntime_delta(1, 1024) == 1024
    heavy, nice0, light = (vruntime_delta(10, prio_weight(p)) for p in (9, 5, 0))
    assert heavy < nice0 < light


def test_lazy_heap_skips_stale_and_discarded_entries():
    """A re-prioritised key is ordered by its newest priority; a discarded one is gone."""
    heap = LazyHeap()
    for key, prio in (("x", 3), ("y", 2), ("z", 1)):
        heap.set(key, (prio, key))
    heap.set("z", (9, "z"))
    heap.discard("y")
    assert heap.peek() == "x" and heap.ordered() == ["x", "z"] and len(heap) == 2


def test_lazy_heap_peeks_the_least_current_priority_through_any_order_of_changes():
    """Random sets (in order, which go to the sorted run, and out of it), discards and peeks agree with a plain min(),
    and least(4) with a sort, leaving every key and the order as they were."""
    rng, heap, truth = random.Random(7), LazyHeap(), {}
    for step in range(20_000):
        key = rng.randrange(300)
        if rng.random() < 0.2:
            heap.discard(key)
            truth.pop(key, None)
        else:
            prio = (step if rng.random() < 0.6 else rng.randrange(step + 1), key)
            heap.set(key, prio)
            truth[key] = prio
        if rng.random() < 0.5:
            assert heap.peek() == (min(truth.values())[-1] if truth else None)
        if step % 50 == 0:
            assert heap.least(4) == sorted(truth, key=truth.__getitem__)[:4]
    assert heap.ordered() == sorted(truth, key=truth.__getitem__) and len(heap._run) > 0
    assert heap.least(len(truth) + 1) == heap.ordered() and heap.least(0) == []


def test_fcfs_serves_arrival_order():
    """fcfs: earliest submission first, whatever the priority."""
    queue, _ = queue_with("fcfs", [task(1, prio=1, submitted=30), task(2, prio=9, submitted=20), task(3, submitted=10)])
    assert drain(queue) == [3, 2, 1]


def test_greedy_serves_highest_prio_first():
    """greedy: highest prio first, then pid."""
    queue, _ = queue_with("greedy", [task(1, prio=1), task(2, prio=9), task(3, prio=9)])
    assert drain(queue) == [2, 3, 1]


def test_fair_serves_least_counter_tenant_first():
    """vtc/fair: the tenant with the lower counter goes first, whatever the pids."""
    queue, accounts = queue_with("vtc", [task(1, "a"), task(2, "b")])
    accounts.charge(task(9, "a"), 50)
    queue.rekey(task(1, "a"))
    assert queue.peek(0, SLICE_TOKENS).pid == 2


def test_charge_divides_by_weight():
    """A tenant of weight 200 advances half as fast as one of weight 100 for the same cost."""
    accounts = Accounts({"light": 100, "heavy": 200})
    accounts.charge(task(1, "light"), 10)
    accounts.charge(task(2, "heavy"), 10)
    assert (accounts.tenants["light"].counter, accounts.tenants["heavy"].counter) == (10.0, 5.0)


def test_lift_raises_a_returning_tenant_to_the_least_active_counter():
    """An idle tenant that becomes active is lifted to the least counter among active ones."""
    accounts = Accounts({"a": 100, "b": 100, "c": 100})
    accounts.count(task(1, "a"), "running", +1)
    accounts.charge(task(1, "a"), 500)
    lifts = accounts.count(task(2, "b"), "runnable", +1)
    assert accounts.tenants["b"].counter == 500 and [e.name for e, _ in lifts] == ["b"]


def test_no_lift_for_an_entity_already_ahead():
    """A tenant whose counter is above the active ones keeps it (no credit, no penalty)."""
    accounts = Accounts({"a": 100, "b": 100})
    accounts.charge(task(2, "b"), 900)
    accounts.count(task(1, "a"), "running", +1)
    assert accounts.count(task(2, "b"), "runnable", +1) == []
    assert accounts.tenants["b"].counter == 900


def test_fair_deadline_boost_goes_first():
    """fair: a task within the boost window of its deadline is served before a lower counter."""
    queue, accounts = queue_with("fair", [task(1, "a"), task(2, "b", deadline=1_500_000)])
    accounts.charge(task(9, "b"), 100)
    queue.rekey(task(2, "b"))
    assert queue.peek(600_000, SLICE_TOKENS).pid == 2 and queue.why(()) == "deadline boost"
    assert queue.peek(0, SLICE_TOKENS).pid == 1


def test_fair_deadline_boost_comes_on_time_whatever_was_queued_and_removed_before():
    """fair: with the earliest deadline dispatched, the next one is still boosted exactly from its deadline less boost_us."""
    urgent, later = task(2, "b", deadline=3_000_000), task(3, "b", deadline=5_000_000)
    queue, accounts = queue_with("fair", [task(1, "a"), urgent, later])
    accounts.charge(task(9, "b"), 100)
    queue.rekey(urgent)
    assert queue.peek(2_000_000, SLICE_TOKENS) is urgent and queue.why(()) == "deadline boost"
    queue.remove(urgent)
    assert queue.peek(3_999_999, SLICE_TOKENS).pid == 1 and queue.peek(4_000_000, SLICE_TOKENS) is later
    queue.push(task(4, "b", deadline=1_500_000))  # an earlier deadline arrives
    assert queue.peek(500_000, SLICE_TOKENS).pid == 4


def test_fair_deadline_boost_waits_while_its_tenant_is_more_than_a_slice_ahead():
    """fair: a tenant more than a slice (256 at two tenants of weight 100) ahead of the least backlogged counter
    gets no boost; its urgent task still goes before its own other tasks when counter order reaches it."""
    urgent = task(3, "b", deadline=1_500_000)
    queue, accounts = queue_with("fair", [task(1, "a"), task(2, "b"), urgent])
    accounts.charge(task(9, "b"), 257)
    queue.rekey(urgent)
    assert queue.peek(600_000, SLICE_TOKENS).pid == 1 and queue.why(()).startswith("least counter")
    queue.remove(task(1, "a"))
    assert queue.peek(600_000, SLICE_TOKENS) is urgent and queue.why(()) == "deadline boost"


def test_fair_deadline_boost_is_up_to_a_slice_ahead():
    """fair: a tenant exactly a slice ahead of the least backlogged counter is still boosted."""
    queue, accounts = queue_with("fair", [task(1, "a"), task(2, "b", deadline=1_500_000)])
    accounts.charge(task(9, "b"), 256)
    queue.rekey(task(2, "b"))
    assert queue.peek(600_000, SLICE_TOKENS).pid == 2


def test_fair_deadline_boost_of_a_tenant_too_far_ahead_does_not_hide_another_tenants():
    """fair: the earliest deadline's tenant being more than a slice ahead, the next deadline of a tenant within
    a slice is boosted before the least counter's task."""
    accounts = Accounts({"a": 100, "b": 100, "c": 100})
    queue, _ = queue_with("fair", [task(1, "a"), task(2, "b", deadline=1_200_000), task(3, "c", deadline=1_500_000)],
                          accounts)
    accounts.charge(task(9, "b"), 1000)
    accounts.charge(task(8, "c"), 100)
    for pid, tenant in ((2, "b"), (3, "c")):
        queue.rekey(task(pid, tenant))
    assert queue.peek(600_000, SLICE_TOKENS).pid == 3 and queue.why(()) == "deadline boost"
    assert queue.peek(400_000, SLICE_TOKENS).pid == 1  # c's deadline not yet within boost_us


class CountedTenants(dict):
    """A tenant table that counts the counters looked up by key: the work a peek's boost does."""

    lookups = 0

    def __getitem__(self, name):
        self.lookups += 1
        return super().__getitem__(name)


def urgent_tenants_ahead(count: int, least_deadline: int | None):
    """`count` tenants, each with a task 1.5 s from its deadline and 1,000 tokens (many slices) ahead, and tenant
    z behind them all, its task's deadline `least_deadline`: the queue, its accounts, and z's task."""
    accounts = Accounts({**{f"t{n}": 100 for n in range(count)}, "z": 100})
    accounts.tenants = CountedTenants(accounts.tenants)
    theirs = [task(n + 1, f"t{n}", deadline=1_500_000 + n) for n in range(count)]
    least = task(count + 1, "z", deadline=least_deadline)
    queue, _ = queue_with("fair", [*theirs, least], accounts)
    for urgent in theirs:
        accounts.charge(urgent, 1000)
        queue.rekey(urgent)
    return queue, accounts, least


def test_fair_deadline_boost_looks_at_a_few_tenants_per_peek_however_many_are_urgent_and_ahead():
    """fair: 1,000 tenants with urgent deadlines, all more than a slice ahead: each of ten peeks serves the least
    counter after looking up at most WALKED + 1 tenants' counters (not every urgent tenant's, sorted)."""
    queue, accounts, least = urgent_tenants_ahead(1000, None)
    accounts.tenants.lookups = 0
    for _ in range(10):
        assert queue.peek(600_000, SLICE_TOKENS) is least
    assert 0 < accounts.tenants.lookups <= 10 * (WALKED + 1)


def test_fair_deadline_boost_serves_the_least_tenants_urgent_task_past_the_tenants_walked():
    """fair: with more urgent tenants ahead than a peek walks, the least backlogged tenant's own urgent task (its
    deadline the latest) is still boosted."""
    queue, _, least = urgent_tenants_ahead(WALKED + 3, 2_000_000)
    assert queue.peek(1_000_000, SLICE_TOKENS) is least and queue.why(()) == "deadline boost"


def test_agents_share_within_a_tenant():
    """Within one tenant, the agent (root task) with the lower counter goes first."""
    t1, t2, t3 = task(1, "a", agent=1), task(2, "a", agent=1), task(3, "a", agent=3)
    queue, accounts = queue_with("vtc", [t1, t2, t3])
    accounts.charge(t1, 10)
    queue.rekey(t1)
    assert queue.peek(0, SLICE_TOKENS).pid == 3
