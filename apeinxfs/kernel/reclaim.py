"""Reclaim: the kernel's two ways of taking a GPU slot or KV pages back from a running task.

- Fairness (policy `fair`): `_rebalance` preempts one running task that is unfair to the
  queue's head: its tenant holds more than its weighted share of slots while the head's
  holds less and it is a slice ahead, or its counter is more than preempt_gap slices ahead
  (slices of service to a tenant of the active tenants' mean weight, so only the weights'
  ratios matter).
- Memory: when a task cannot grow, memory.py evicts idle prefix blocks; then `_reclaim`
  preempts the kernel's victim by swap or recompute, whichever the model says is cheaper,
  and once preemption thrashes (kv_preempt_limit) the OOM killer ends the largest consumer.
A mixin of `Kernel` (kernel.py): it uses the kernel's state and writes its trace.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .sched import COUNTER_SCALE
from .task import Task

if TYPE_CHECKING:
    from .kernel import Gpu


class Reclaim:
    """Preemption for fairness and for KV memory, and the KV OOM killer."""

    def _rebalance(self) -> bool:
        """fair: preempt one running task that is unfair to the queue's head, if any and if the head
        then fits in its KV."""
        if not self._preemptible:  # none has run min_run_tokens yet
            return False
        if self.counters.steps == self._fair_preempt_step:  # the last one's slot is not served yet
            return False
        head = self.runq.peek(self.now_us)
        victim = self._fair_victim(head) if head is not None else None
        if victim is None or not self.kv.fits_instead(head, victim):  # a slot the head cannot use is no help
            return False
        self.counters.fair_preemptions += 1
        self._fair_preempt_step = self.counters.steps
        mine, theirs = self.accounts.tenant(head), self.accounts.tenant(victim)
        self._preempt_costed(victim, f"fair: tenant {theirs.name} (counter {theirs.counter:.1f}, {theirs.running} running) "
                              f"is ahead of {mine.name} (counter {mine.counter:.1f}, {mine.running} running) "
                              f"waiting with pid {head.pid}")
        return True

    def _fair_victim(self, head: Task) -> Task | None:
        """A running task of the tenant most over its share, whose counter is past the gap, or a
        slice past the head's while the head's tenant is under its share."""
        mine, tenants = self.accounts.tenant(head), self.accounts.tenants
        slots, total = sum(g.config.slots for g in self.gpus), self.accounts.active_weight
        piece = self._slice(total)
        gap = self.config.sched.preempt_gap * piece
        mine_under = mine.running + 1 <= slots * mine.weight / total
        best, best_key = None, None
        for task in self._preemptible.values():
            if (theirs := tenants[task.tenant]) is mine:
                continue
            ahead, over = theirs.counter - mine.counter, theirs.running - slots * theirs.weight / total
            unfair = ahead > gap or (ahead > piece and over >= 1 and mine_under)
            key = (over, theirs.counter, -task.context_tokens, task.pid)
            if unfair and (best_key is None or key > best_key):
                best, best_key = task, key
        return best

    def _slice(self, active_weight: int) -> float:
        """A slice in counter units: slice_tokens of service to a tenant of the active tenants' mean
        weight. Weights are ratios (cgroup v2): scaling them all scales every counter step and the
        slice alike, so 1:2:3:4 preempts as 100:200:300:400 does."""
        active = len(self.accounts.active_tenants)
        return self.config.sched.slice_tokens * COUNTER_SCALE * active / active_weight

    def _grow_kv(self, task: Task, gpu: Gpu) -> None:
        """A page for the next token: evict idle prefix blocks, else preempt, else the OOM killer."""
        while not self.kv.grow(task):
            if not self._reclaim(task, gpu):
                return

    def _reclaim(self, task: Task, gpu: Gpu) -> bool:
        """Free pages on `gpu` for `task`: preempt the scheduler's victim or, if it names none,
        OOM-kill the largest consumer. Whether `task` is still running."""
        victim = self._kv_victim(gpu, task)
        if victim is not None:
            self._kv_preempt(victim, task, gpu.config.index)
        else:
            victim = self.tasks[self.kv.largest(gpu.config.index)]
            self._oom_kill(victim, task, gpu.config.index)
        return victim is not task

    def _kv_preempt(self, victim: Task, task: Task, gpu: int) -> None:
        victim.kv_preemptions += 1
        self._preempt_costed(victim, f"kv-full: pid {task.pid} needs a page on gpu {gpu}")

    def _preempt_costed(self, victim: Task, why: str) -> None:
        """Preempt by swap or recompute, whichever the model says is cheaper."""
        mode, swap_s, recompute_s = self.kv.preempt_mode(victim)
        self._preempt(victim, f"{why}; mode={mode} (swap {swap_s * 1e3:.3f} ms, recompute {recompute_s * 1e3:.3f} ms)")
        if mode == "swap":
            self.kv.swapped_out(victim)

    def _oom_kill(self, victim: Task, task: Task, gpu: int) -> None:
        self.counters.oom_kills += 1
        self._emit("oom_kill", victim, f"pid {task.pid} needs a page on gpu {gpu}, nothing left to evict or "
                                       f"preempt; killed the largest consumer ({victim.kv_pages} pages)", gpu)
        self._exit(victim, "oom-killed", f"KV OOM killer on gpu {gpu}")

    def _kv_victim(self, gpu: Gpu, task: Task) -> Task | None:
        """Whom to preempt for KV on `gpu`: the task of the tenant furthest ahead, losing the least
        work, among those preempted for KV fewer than kv_preempt_limit times; None when all have
        been (preemption is thrashing), and then the OOM killer acts."""
        limit = self.config.sched.kv_preempt_limit
        ready = [t for t in gpu.running.values() if t.kv_preemptions < limit]
        return max(ready, key=lambda t: (self.accounts.tenant(t).counter, -t.context_tokens, t.pid), default=None)

    def _evicted(self, gpu: int, pages: int, task: Task) -> None:
        self.counters.evictions += pages
        self._emit("evict", task, f"{pages} idle prefix pages, least recently used first, for pid {task.pid}; "
                                  f"{len(self.kv.caches[gpu])} blocks cached", gpu)
