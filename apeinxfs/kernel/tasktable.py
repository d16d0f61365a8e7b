"""The task table: every task by pid, their state counts, trees, deadlines and wake-ups.

`TaskTable` is a read-only mapping pid -> Task (exited tasks stay, for `wait` and /tasks);
it owns the next pid (in a cluster, from the pid blocks the cluster granted), the count
of tasks in each state (changed only by `set_state`), each tenant's live pids
(livepids.py), the order its exited tasks are reaped in (reaporder.py), the heap of
deadlines and the walk of a task tree (a kill's descendants, whether a tree is done, the
ancestors a `wait` wakes). Trees can be as deep as a user
makes them, so every walk keeps its own stack. What a task does on a GPU or in the queue is not here.
"""
from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from .errors import Busy, Invalid, NotFound, TryAgain
from .events import PidBlock
from .livepids import LivePids
from .reaporder import ReapOrder
from .task import State, Task

if TYPE_CHECKING:
    from .config import KernelConfig


class TaskTable(Mapping[int, Task]):
    """Tasks by pid, with the books kept beside them."""

    def __init__(self, changed: set[object], pid_blocks: bool = False):
        self._tasks: dict[int, Task] = {}
        self._changed = changed  # the kernel's: what take_changed() reports
        self._woken: set[int] = set()  # pids wake_ancestors added to `changed`, with all their ancestors
        self._deadlines: list[tuple[int, int]] = []  # heap of (time µs, pid)
        self.reap_order = ReapOrder()  # the exited tasks without children left, by tenant (reaporder.py)
        self.next_pid = 1
        self.pid_end: int | None = 1 if pid_blocks else None  # the end of the current pid block; None: no blocks
        self._blocks: list[tuple[int, int]] = []  # granted blocks (first, end) after the current one
        self.state_counts: dict[State, int] = dict.fromkeys(State, 0)
        self.live_pids = LivePids()  # each tenant's live pids (kept by `add` and `set_state`), for the cluster

    def __getitem__(self, pid: int) -> Task:
        return self._tasks[pid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, pid: int, default: Task | None = None) -> Task | None:  # type: ignore[override]
        return self._tasks.get(pid, default)

    def add(self, task: Task, adopted: bool = False) -> None:
        """A new task, in state NEW, with the next pid (or, `adopted`, a pid of another node's block)."""
        self._tasks[task.pid] = task
        self.state_counts[task.state] += 1
        self.live_pids.add(task.tenant, task.pid)
        if adopted:
            return
        self.next_pid = task.pid + 1
        if self._blocks and self.next_pid >= self.pid_end:  # type: ignore[operator]
            self.next_pid, self.pid_end = self._blocks.pop(0)

    def pids_left(self) -> int | None:
        """Pids this node may still give without a new block; None where pids are not in blocks."""
        if self.pid_end is None:
            return None
        return max(0, self.pid_end - self.next_pid) + sum(end - first for first, end in self._blocks)

    def pid_floor(self) -> int:
        """The lowest first pid a new block may have: past every pid given or granted."""
        return max([self.next_pid, self.pid_end or 0] + [end for _, end in self._blocks])

    def foreign(self, pid: int) -> bool:
        """Whether `pid` may be adopted: pids are in blocks, and it is no task here nor in this node's
        blocks (given, in use or to come; blocks are granted once cluster-wide)."""
        return self.pid_end is not None and pid not in self._tasks and pid >= 1 and not self._to_give(pid)

    def _to_give(self, pid: int) -> bool:
        """Whether `pid` is in this node's blocks and not given yet (pids in blocks only)."""
        return any(first <= pid < end for first, end in [(self.next_pid, self.pid_end or 0), *self._blocks])

    def check_room(self, batch: dict[str, tuple[int, int]] | None, config: KernelConfig) -> None:
        """TryAgain unless a new task, after those the submits admitted before it in `batch` add, finds a pid
        left (check_pid_left) and stays within limits.live_tasks (check_live_limit)."""
        self.check_pid_left(batch, config.node)
        self.check_live_limit(batch, config.limits.live_tasks)

    def check_pid_left(self, batch: dict[str, tuple[int, int]] | None, node: str) -> None:
        """TryAgain if a new task would find no pid left in the node's blocks, after those the submits
        admitted before it in `batch` take (admit's: tenant -> the tasks and tokens its submits hold)."""
        taken = sum(tasks for tasks, _ in (batch or {}).values())
        left = self.pids_left()
        if left is not None and taken >= left:
            short = f"only {left} pids left for this write's lines" if taken else "used up its pids"
            raise TryAgain(f"node {node} has {short} and the cluster has not granted it the next block yet "
                           f"(etcd unreachable or without a quorum?): try again{', with fewer lines' if taken else ''}")

    def check_live_limit(self, batch: dict[str, tuple[int, int]] | None, limit: int) -> None:
        """TryAgain, as fork(2) past cgroup pids.max, if a new task would make more than `limit` live (not
        exited) tasks on this node, counting those the submits admitted before it in `batch` add."""
        live = self.live_count() + sum(tasks for tasks, _ in (batch or {}).values())
        if live >= limit:
            raise TryAgain(f"{live} tasks are live on this node, the most limits.live_tasks allows: try again "
                           f"when some have exited")

    def live_count(self) -> int:
        """The tasks not exited."""
        return len(self._tasks) - self.state_counts[State.EXITED]

    def check_grant(self, event: PidBlock) -> None:
        """Invalid unless pids are in blocks and the block lies past every pid given or granted."""
        if self.pid_end is None:
            raise Invalid("pids are not given in blocks on a single node")
        if event.count < 1 or event.first < self.pid_floor():
            raise Invalid(f"a pid block must start past pid {self.pid_floor() - 1}, "
                          f"not at {event.first} ({event.count} pids)")

    def grant(self, first: int, count: int) -> None:
        """Pids first..first+count-1 are this node's: used at once if the current block is used up."""
        if self.pid_end is not None and self.next_pid >= self.pid_end:
            self.next_pid, self.pid_end = first, first + count
        else:
            self._blocks.append((first, first + count))

    def reap(self, pid: int) -> Task:
        """Forget its tenant's oldest reapable task (retention reaps in that order, `reap_order`; its pid is not
        used again, the trace archive still has its lines): it leaves its parent's children, and a parent
        left without any once it has exited may be reaped next. Its pid and its parent's are in `changed`
        (their readers wake)."""
        task = self._tasks[pid]
        assert task.done and not task.children, f"task {pid} is live or has children"
        self.reap_order.take(task)
        del self._tasks[pid]
        self.state_counts[State.EXITED] -= 1
        self._changed.add(pid)
        parent = self._tasks.get(task.parent) if task.parent is not None else None
        if parent is not None:
            parent.children.remove(pid)
            self._changed.add(parent.pid)
            self._may_reap(parent)
        return task

    def oldest_reapable(self) -> Task | None:
        """The exited task without children left that exited first (pid order among equals), if any."""
        return self._task_of(self.reap_order.oldest())

    def fullest_tenants_reapable(self) -> Task | None:
        """The oldest reapable task of the tenant keeping the most exited tasks (reaporder.py), if any."""
        return self._task_of(self.reap_order.fullest())

    def _task_of(self, entry: tuple[int, int] | None) -> Task | None:
        """The task of a reap order's entry (exit time µs, pid), if one."""
        return None if entry is None else self._tasks[entry[1]]

    def _may_reap(self, task: Task) -> None:
        """List an exited task without children as reapable; as the oldest, it is the reaper's next
        deadline (the timer of an idle daemon must hear of it)."""
        if task.done and not task.children and self.reap_order.add(task):
            self._changed.add("deadline")

    def live(self, pid: int) -> Task:
        """The task `pid` if it has not exited; NotFound or Busy saying why not."""
        task = self._tasks.get(pid)
        if task is None:
            raise NotFound(f"no task {pid}")
        if task.done:
            raise Busy(f"task {pid} has already exited ({task.exit})")
        return task

    def count(self, state: State) -> int:
        """Tasks in `state` now."""
        return self.state_counts[state]

    def set_state(self, task: Task, state: State) -> None:
        self.state_counts[task.state] -= 1
        self.state_counts[state] += 1
        task.state = state
        self._changed.add(task.pid)
        if state is State.EXITED:
            self.live_pids.discard(task.tenant, task.pid)
            if self.reap_order.exit(task):
                self._changed.add("deadline")

    # -- deadlines ------------------------------------------------------------------------

    def add_deadline(self, at_us: int, pid: int) -> None:
        """Add an entry; past two per live task (and some), drop those of ended tasks, which would
        otherwise stay until their time (a tenant's max_wall) when their tasks end early."""
        heapq.heappush(self._deadlines, (at_us, pid))
        self._changed.add("deadline")
        if len(self._deadlines) > 2 * self.live_count() + 64:
            self._deadlines = [entry for entry in self._deadlines if not self._ended(entry[1])]
            heapq.heapify(self._deadlines)

    def due(self, now_us: int) -> Iterator[Task]:
        """The live tasks whose deadline entry has come, taken off the heap one at a time."""
        while self._deadlines and self._deadlines[0][0] <= now_us:
            task = self._tasks.get(heapq.heappop(self._deadlines)[1])
            if task is not None and not task.done:
                yield task

    def next_deadline_us(self) -> int | None:
        """The earliest deadline of a live task, if any (entries of exited or reaped tasks are dropped here)."""
        while self._deadlines and self._ended(self._deadlines[0][1]):
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def _ended(self, pid: int) -> bool:
        task = self._tasks.get(pid)
        return task is None or task.done

    # -- trees ------------------------------------------------------------------------------

    def live_descendants(self, root: Task) -> Iterator[Task]:
        """The live tasks below `root`, parents first and in submit order, found as they are
        yielded: a depth-first walk with its own stack that does not enter a subtree whose root
        has exited by the time it is reached (a killer ends each before asking for the next)."""
        stack = list(reversed(root.children))
        while stack:
            task = self._tasks[stack.pop()]
            if not task.done:
                yield task
                stack.extend(reversed(task.children))

    def wake_ancestors(self, task: Task) -> None:
        """A parent's `wait` covers its tree: wake every ancestor's readers. The walk stops at an
        ancestor woken since the last `changes_taken` (its own ancestors were woken with it), so
        the exits of a deep chain cost O(1) each, not O(depth)."""
        while task.parent is not None and task.parent not in self._woken:
            self._woken.add(task.parent)
            self._changed.add(task.parent)
            task = self._tasks[task.parent]

    def changes_taken(self) -> None:
        """The kernel reported what changed: ancestors may be woken again."""
        self._woken.clear()

    def tree_done(self, task: Task) -> bool:
        """Whether the task and all its descendants have exited."""
        return task.pid in self.trees_done([task.pid])

    def trees_done(self, pids: Iterable[int]) -> set[int]:
        """Those of `pids` whose task and all its descendants have exited: tree_done of each, with
        every subtree walked at most once however many of the pids share it (a kill of a deep
        chain changes every pid of it at once)."""
        pids, done = list(pids), dict[int, bool]()
        for root in pids:
            stack = [(root, False)]
            while stack:
                pid, children_known = stack.pop()
                task = self._tasks[pid]
                if children_known:
                    done[pid] = all(done[child] for child in task.children)
                elif pid not in done:
                    if task.done:
                        stack.append((pid, True))
                        stack.extend((child, False) for child in task.children if child not in done)
                    else:
                        done[pid] = False
        return {pid for pid in pids if done[pid]}

    # -- invariants ---------------------------------------------------------------------------

    def index_problems(self, live: list[Task]) -> Iterator[str]:
        """What disagrees among the books kept beside the tasks (for invariants.py): state counts are
        the tasks' states; pids are below next_pid (in blocks: none is still to be given); a task has an exit line once
        it has exited, and a GPU while it runs. (Exited tasks never change: only live ones are read.)"""
        counts = collections.Counter(task.state for task in live)
        counts[State.EXITED] = len(self._tasks) - len(live)
        table = self
        if {state: n for state, n in table.state_counts.items() if n} != {state: n for state, n in counts.items() if n}:
            yield f"state counts {table.state_counts} are not the tasks' {dict(counts)}"
        if self.pid_end is None and table and max(table) >= table.next_pid:
            yield f"next pid {table.next_pid} is not past the largest, {max(table)}"
        if self.pid_end is not None and (ahead := [pid for pid in table if self._to_give(pid)]):
            yield f"pids {ahead[:5]} are tasks but still to be given from this node's blocks"
        for task in live:
            if task.exit is not None or (task.gpu is not None) != (task.state is State.RUNNING):
                yield f"task {task.pid}: state {task.state} but exit {task.exit!r} and gpu {task.gpu}"
        yield from self._tree_problems(live)
        yield from self._deadline_problems(live)
        yield from self.live_pids.problems(live)
        yield from self.reap_order.problems(self._tasks.values())

    def _tree_problems(self, live: list[Task]) -> Iterator[str]:
        """Parent and children links agree; a child is in its parent's tenant and agent; a root is its
        own agent; woken ancestors are in `changed`. (A link is made when a live task is submitted.)"""
        tasks = self._tasks
        for task in live:
            parent = tasks.get(task.parent) if task.parent is not None else None
            if task.parent is None and task.agent != task.pid:
                yield f"task {task.pid}: a root task but agent {task.agent}"
            if task.parent is not None and (parent is None or task.pid not in parent.children):
                yield f"task {task.pid}: parent {task.parent} does not list it as a child"
            if parent is not None and (task.agent, task.tenant) != (parent.agent, parent.tenant):
                yield (f"task {task.pid}: agent/tenant {task.agent}/{task.tenant}, "
                       f"its parent's {parent.agent}/{parent.tenant}")
            for child in task.children:
                if child not in tasks or tasks[child].parent != task.pid:
                    yield f"task {task.pid}: child {child} does not name it as parent"
        if unreported := self._woken - self._changed:
            yield f"tasks {sorted(unreported)}: ancestors woken, but not in `changed` themselves"

    def _deadline_problems(self, live: list[Task]) -> Iterator[str]:
        """Every live task with a deadline has it in the deadline heap."""
        due = set(self._deadlines)
        for task in live:
            if task.deadline_at_us is not None and (task.deadline_at_us, task.pid) not in due:
                yield f"task {task.pid}: deadline {task.deadline_at_us} is not in the deadline heap"
