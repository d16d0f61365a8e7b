"""Reclaim: the kernel's two ways of taking a GPU slot or KV pages back from a running task.

- Fairness (policy `fair`): `_rebalance` preempts one running task that is unfair to the
  queue's head: its tenant holds more than its weighted share of slots while the head's
  holds less and it is a slice ahead, or its counter is more than preempt_gap slices ahead
  (slices of service to a tenant of the active tenants' mean weight, so only the weights'
  ratios matter).
- Memory: when a task cannot grow, memory.py evicts idle prefix blocks; then `_reclaim`
  preempts the kernel's victim by swap or recompute, whichever the model says is cheaper,
  and once preemption thrashes (kv_preempt_limit) the OOM killer ends the largest consumer.
`Reclaim` owns the index of running tasks that fairness may preempt and the step of the
last fair preemption; it preempts and kills through the kernel's `Host` seam (seams.py).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .config import SchedConfig
from .counters import Counters
from .gpus import Gpu
from .memory import KVManager
from .sched import Accounts
from .seams import Host
from .task import Task


class Reclaim:
    """Preemption for fairness and for KV memory, and the KV OOM killer."""

    def __init__(self, sched: SchedConfig, accounts: Accounts, gpus: Sequence[Gpu], kv: KVManager,
                 tasks: Mapping[int, Task], counters: Counters, host: Host):
        self._sched, self._accounts, self._gpus, self._kv = sched, accounts, gpus, kv
        self._tasks, self._counters, self._host = tasks, counters, host
        self.preemptible: dict[int, Task] = {}  # running tasks past min_run_tokens: fair preemption's candidates
        self._fair_preempt_step = -1  # counters.steps at the last fair preemption: one per step at most

    # -- the index of preemptible tasks ------------------------------------------------------

    def ran(self, task: Task, tokens: int) -> None:
        """Tokens served since the task's dispatch (0 at the dispatch); past min_run_tokens it may
        be preempted for fairness."""
        task.run_tokens += tokens
        if task.run_tokens >= self._sched.min_run_tokens:
            self.preemptible[task.pid] = task

    def left(self, task: Task) -> None:
        """The task left its GPU."""
        self.preemptible.pop(task.pid, None)

    # -- fairness ----------------------------------------------------------------------------

    def rebalance(self, head: Callable[[], Task | None], where: Callable[[str, list[int]], list[int]]) -> bool:
        """fair: preempt one running task that is unfair to the queue's `head`, if any and if the head
        then fits in its KV, on a GPU its model may run on (`where(model, gpus)`: engines.py)."""
        if not self.preemptible:  # none has run min_run_tokens yet
            return False
        if self._counters.steps == self._fair_preempt_step:  # the last one's slot is not served yet
            return False
        waiting = head()
        victim = self._fair_victim(waiting) if waiting is not None else None
        if waiting is None or victim is None or victim.gpu is None:
            return False
        if not where(waiting.model, [victim.gpu]) or not self._kv.fits_instead(waiting, victim):
            return False  # a slot the head cannot use is no help
        self._counters.count(victim.tenant, "fair_preemptions")
        self._fair_preempt_step = self._counters.steps
        mine, theirs = self._accounts.tenant(waiting), self._accounts.tenant(victim)
        self._preempt_costed(victim, f"fair: tenant {theirs.name} (counter {theirs.counter:.1f}, {theirs.running} running) "
                              f"is ahead of {mine.name} (counter {mine.counter:.1f}, {mine.running} running) "
                              f"waiting with pid {waiting.pid}")
        return True

    def _fair_victim(self, head: Task) -> Task | None:
        """A running task of the tenant most over its share, whose counter is past the gap, or a
        slice past the head's while the head's tenant is under its share."""
        mine, tenants = self._accounts.tenant(head), self._accounts.tenants
        slots, total = sum(g.config.slots for g in self._gpus), self._accounts.active_weight
        piece = self._accounts.slice(self._sched.slice_tokens)
        gap = self._sched.preempt_gap * piece
        mine_under = mine.running + 1 <= slots * mine.weight / total
        best, best_key = None, None
        for task in self.preemptible.values():
            if (theirs := tenants[task.tenant]) is mine:
                continue
            ahead, over = theirs.counter - mine.counter, theirs.running - slots * theirs.weight / total
            unfair = ahead > gap or (ahead > piece and over >= 1 and mine_under)
            key = (over, theirs.counter, -task.context_tokens, task.pid)
            if unfair and (best_key is None or key > best_key):
                best, best_key = task, key
        return best

    # -- memory --------------------------------------------------------------------------------

    def grow_kv(self, task: Task, gpu: Gpu) -> None:
        """A page for the next token: evict idle prefix blocks, else preempt, else the OOM killer."""
        while not self._kv.grow(task):
            if not self._reclaim(task, gpu):
                return

    def ended_misfit(self, task: Task) -> bool:
        """End the task, failed, if its prompt plus max_tokens could never fit in the largest GPU pool: queued
        again, it would wait for room that never comes, before all behind it. Whether it ended. A submit is
        refused so (ENOSPC) on its prompt's least count, and an uncounted prompt is placed at a count that fits
        (Task.placed_prompt): only the engine's count of it can pass the pools."""
        tokens = task.kv_prompt_tokens
        why = self._kv.misfit(self._kv.models[task.model], tokens, task.spec.max_tokens)
        if why is not None:
            self._host.exit(task, f"failed: prompt ({tokens} tokens, the engine's count) plus max_tokens {why}",
                            "it could never fit in a GPU's KV pool: ended, not queued again")
        return why is not None

    def _reclaim(self, task: Task, gpu: Gpu) -> bool:
        """Free pages on `gpu` for `task`: preempt the scheduler's victim or, if it names none,
        OOM-kill the largest consumer. Whether `task` is still running."""
        victim = self._kv_victim(gpu)
        if victim is not None:
            self._kv_preempt(victim, task, gpu.config.index)
        else:
            victim = self._tasks[self._kv.largest(gpu.config.index)]
            self._oom_kill(victim, task, gpu.config.index)
        return victim is not task

    def _kv_preempt(self, victim: Task, task: Task, gpu: int) -> None:
        victim.kv_preemptions += 1
        self._preempt_costed(victim, f"kv-full: pid {task.pid} needs a page on gpu {gpu}")

    def _preempt_costed(self, victim: Task, why: str) -> None:
        """Preempt by swap or recompute, whichever the model says is cheaper."""
        mode, swap_s, recompute_s = self._kv.preempt_mode(victim)
        self._host.preempt(victim, f"{why}; mode={mode} (swap {swap_s * 1e3:.3f} ms, recompute {recompute_s * 1e3:.3f} ms)")
        if mode == "swap":
            self._kv.swapped_out(victim)

    def _oom_kill(self, victim: Task, task: Task, gpu: int) -> None:
        self._counters.oom_kills += 1
        self._host.emit("oom_kill", victim, f"pid {task.pid} needs a page on gpu {gpu}, nothing left to evict or "
                                            f"preempt; killed the largest consumer ({victim.kv_pages} pages)", gpu)
        self._host.exit(victim, "oom-killed", f"KV OOM killer on gpu {gpu}")

    def _kv_victim(self, gpu: Gpu) -> Task | None:
        """Whom to preempt for KV on `gpu`: the task of the tenant furthest ahead, losing the least
        work, among those preempted for KV fewer than kv_preempt_limit times; None when all have
        been (preemption is thrashing), and then the OOM killer acts."""
        limit = self._sched.kv_preempt_limit
        ready = [t for t in gpu.running.values() if t.kv_preemptions < limit]
        return max(ready, key=lambda t: (self._accounts.tenant(t).counter, -t.context_tokens, t.pid), default=None)

    def evicted(self, gpu: int, pages: int, task: Task) -> None:
        """memory.py evicted idle prefix blocks for `task`: count and trace it."""
        self._counters.evictions += pages
        self._host.emit("evict", task, f"{pages} idle prefix pages, least recently used first, for pid {task.pid}; "
                                       f"{len(self._kv.caches[gpu])} blocks cached", gpu)
