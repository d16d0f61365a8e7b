"""LazyHeap: a priority map (key -> priority tuple) that peeks its least key in O(log n).

The run queues and the scheduler's active-entity sets (sched.py) are built of these. Not a
dict: the priorities are private, so every change goes through `set` and `discard`, and the
heap beside them can never miss one.
"""
from __future__ import annotations

import collections
import heapq
from collections.abc import Hashable, Iterator
from typing import Any

Prio = tuple[Any, ...]


class LazyHeap:
    """Keys with priorities; `set` and `discard` change them, leaving stale entries that `peek` skips.

    A priority is a tuple ending with its key, so no two keys tie. Priorities are kept as
    the tuples themselves (flat, so cheap to compare), in a heap or, when one is set no lower
    than the last set (arrivals in order, an entity served to the back of a fair queue), at
    the end of a sorted run beside it, which takes no comparisons to push or pop. An entry is
    current while it is the very tuple last set for its key."""

    __slots__ = ("_prio", "_heap", "_run")

    def __init__(self) -> None:
        self._prio: dict[Hashable, Prio] = {}
        self._heap: list[Prio] = []
        self._run: collections.deque[Prio] = collections.deque()  # non-decreasing priorities

    def __len__(self) -> int:
        return len(self._prio)

    def __contains__(self, key: object) -> bool:
        return key in self._prio

    def __iter__(self) -> Iterator[Any]:
        return iter(self._prio)

    def prio(self, key: Hashable) -> Prio:
        """The priority of `key` (KeyError if it has none)."""
        return self._prio[key]

    def set(self, key: Hashable, prio: Prio) -> None:
        """Give `key` the priority `prio` (a tuple ending with `key`)."""
        if self._prio.get(key) != prio:
            self._prio[key] = prio
            run = self._run
            if not run or prio >= run[-1]:
                run.append(prio)
            else:
                heapq.heappush(self._heap, prio)
            if len(self._heap) + len(run) > 2 * len(self._prio) + 64:
                self._compact()

    def discard(self, key: Hashable) -> None:
        """Forget `key`, if it is here; its heap entry goes stale."""
        self._prio.pop(key, None)

    def _compact(self) -> None:
        """Drop stale entries (amortised O(1) per set), so a heap that is rarely peeked stays small."""
        self._heap = list(self._prio.values())
        heapq.heapify(self._heap)
        self._run.clear()

    def stale_entries(self) -> int:
        """Entries in the heap and run beyond the current ones (bounded by the compaction)."""
        return len(self._heap) + len(self._run) - len(self._prio)

    def peek(self) -> Any:
        """The key of least priority, or None if empty."""
        prio, run, heap = self._prio, self._run, self._heap
        least = None
        while run:  # the run's first current priority
            if prio.get(run[0][-1]) is run[0]:
                least = run[0]
                break
            run.popleft()
        while heap:  # the heap's, if less
            top = heap[0]
            if prio.get(top[-1]) is top:
                if least is None or top < least:
                    least = top
                break
            heapq.heappop(heap)
        return None if least is None else least[-1]

    def least(self, count: int) -> list[Any]:
        """The `count` keys of least priority (fewer if there are fewer), least first, in O(count log n): the
        stale entries among them are dropped for good on the way (not a sort of all)."""
        prio, heap, run = self._prio, self._heap, self._run
        keys, from_heap, from_run = list[Any](), list[Prio](), list[Prio]()
        while len(keys) < count and (heap or run):
            if run and (not heap or run[0] < heap[0]):
                entry, taken = run.popleft(), from_run
            else:
                entry, taken = heapq.heappop(heap), from_heap
            if prio.get(entry[-1]) is entry:
                taken.append(entry)
                keys.append(entry[-1])
        run.extendleft(reversed(from_run))  # the run's least current entries back at its front, in order
        for entry in from_heap:
            heapq.heappush(heap, entry)
        return keys

    def ordered(self) -> list[Any]:
        """The keys, least priority first."""
        return sorted(self._prio, key=self._prio.__getitem__)
