"""The run queue and its policies: Token Fair (CFS-like vruntime in tokens) and greedy.

A policy only orders runnable tasks; the kernel decides when and where they run. Adding
a policy means one class with `place` (where a task enters the queue) and `key` (its
order). The queue is a min-heap with lazy deletion, so push, remove and pop are O(log n).
"""
import heapq

from .task import Task

NICE_0_WEIGHT = 1024
VSCALE = 1024
SLICE_TOKENS = 64


def prio_weight(prio: int) -> int:
    """CFS-style geometric weight: prio 5 is 1024 and each step is worth 1.25x."""
    return round(NICE_0_WEIGHT * 1.25 ** (prio - 5))


def vruntime_delta(tokens: int, weight: int) -> int:
    """Virtual runtime for `tokens` served at `weight`, in 1/1024 of a nice-0 token."""
    return tokens * VSCALE * NICE_0_WEIGHT // weight


class FairPolicy:
    """Token Fair: least virtual tokens first; newcomers start one weighted slice late."""

    name = "fair"

    def place(self, task: Task, min_vruntime: int, new: bool) -> None:
        lag = vruntime_delta(SLICE_TOKENS, task.weight)
        floor = min_vruntime + lag if new else min_vruntime - lag
        task.vruntime = max(task.vruntime, floor)

    def key(self, task: Task) -> tuple:
        return (task.vruntime, task.pid)


class GreedyPolicy:
    """The seed's baseline: highest priority first, then first come."""

    name = "greedy"

    def place(self, task: Task, min_vruntime: int, new: bool) -> None:
        task.vruntime = max(task.vruntime, min_vruntime)

    def key(self, task: Task) -> tuple:
        return (-task.spec.prio, task.pid)


POLICIES = {cls.name: cls for cls in (FairPolicy, GreedyPolicy)}


class RunQueue:
    """Runnable tasks ordered by the policy's key; min_vruntime only moves forward."""

    def __init__(self, policy):
        self.policy = policy
        self.min_vruntime = 0
        self._heap: list[tuple] = []
        self._keys: dict[int, tuple] = {}
        self._tasks: dict[int, Task] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def push(self, task: Task, new: bool = False) -> None:
        self.policy.place(task, self.min_vruntime, new)
        key = self.policy.key(task)
        self._keys[task.pid], self._tasks[task.pid] = key, task
        heapq.heappush(self._heap, key + (task.pid,))

    def remove(self, task: Task) -> None:
        self._keys.pop(task.pid, None)
        self._tasks.pop(task.pid, None)

    def peek(self) -> Task | None:
        while self._heap:
            entry = self._heap[0]
            if self._keys.get(entry[-1]) == entry[:-1]:
                return self._tasks[entry[-1]]
            heapq.heappop(self._heap)
        return None

    def pop(self) -> Task:
        task = self.peek()
        heapq.heappop(self._heap)
        self.remove(task)
        return task

    def advance(self, running_vruntimes) -> None:
        """Move min_vruntime up to the least vruntime of running and queued tasks."""
        head = self.peek()
        candidates = list(running_vruntimes) + ([head.vruntime] if head else [])
        if candidates:
            self.min_vruntime = max(self.min_vruntime, min(candidates))

    def tasks(self) -> list[Task]:
        """Queued tasks in the order they would run."""
        return sorted(self._tasks.values(), key=self.policy.key)
