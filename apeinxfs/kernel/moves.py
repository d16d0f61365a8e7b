"""Moves: a task's way between the run queue, the GPUs' batches and its exit.

`Moves` owns the GPUs' batches and the KV stall clocks, and the kernel's time and set of
what changed; it queues, dispatches, serves, preempts, requeues and ends tasks, calling
the components that keep books of each move (the task table, run queue, KV manager,
tenancy, reclaim, engine outages, the trace). It is the `Host` (seams.py) those components
call back through; and it gives new tasks the pid blocks a cluster grants. Which task runs next is the run queue's; whom to preempt, reclaim's.

Backfill: a head none of whose GPUs has an open slot (all full, or their endpoint down) cannot use the
open ones, so dispatch looks past it, up to BACKFILL_WINDOW heads a pass, to later tasks that can (while
the queue holds a task of a model that may run on an open GPU, and not for BACKFILL_REST_US after a pass
that filled the window); a head stopped by KV still stops the pass. A head looked past leaves the queue and is pushed back at the end
of the pass, to the very place it had: every queue orders by keys a pass does not change (pid, arrival,
prio, vruntime, deadline; the tenants' and agents' counters, charged only by a step, which re-keys them).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import events as ev
from .counters import Counters
from .endpoints import gpus_text
from .errors import TryAgain
from .gpus import Gpu
from .memory import KVManager
from .pressure import StallClock
from .runqueue import RunQueue
from .task import State, Task
from .tasktable import TaskTable
from .trace import TraceLog

if TYPE_CHECKING:
    from .engines import EngineWatch
    from .reclaim import Reclaim
    from .tenancy import Tenancy

BACKFILL_WINDOW = 64  # heads a pass may look past (as Slurm's bf_max_job_test): tasks deeper wait as before
BACKFILL_REST_US = 100_000  # after a pass looked past the whole window, no pass looks past a head for this long


class ServeBug(Exception):
    """A bug raised while a step served task `pid`'s chunk (the bug is its __cause__): the step is that task's to
    fail (runtime.py `progress`), where a bug raised elsewhere in the step is no one task's."""

    def __init__(self, pid: int):
        super().__init__(f"a bug serving task {pid}'s chunk")
        self.pid = pid


class Moves:
    """A task's moves, and filling free batch slots from the queue."""

    # The components built after it, given it as their Host (attach).
    runq: RunQueue
    tenancy: Tenancy
    engines: EngineWatch
    reclaim: Reclaim

    def __init__(self, tasks: TaskTable, kv: KVManager, gpus: Sequence[Gpu],
                 counters: Counters, trace: TraceLog, changed: set[object]):
        self.tasks, self.kv, self.gpus = tasks, kv, gpus
        self.counters, self.trace, self.changed = counters, trace, changed
        self.now_us = 0
        self.fenced = False  # the cluster holds this node's engines (events.Fence)
        self.kv_some, self.kv_full = StallClock(), StallClock()  # KV blocked a dispatch: some / all GPUs idle
        self.backfill_after_us = 0  # backfill rests until then (a pass looked past the whole window)

    def attach(self, runq: RunQueue, tenancy: Tenancy, engines: EngineWatch, reclaim: Reclaim) -> None:
        """The components that call back through this one (built after it)."""
        self.runq, self.tenancy, self.engines, self.reclaim = runq, tenancy, engines, reclaim

    def live(self, pid: int) -> Task:
        """Task `pid` for a kill or a control: NotFound or Busy if it is not live (TaskTable.live), and
        TryAgain while the cluster holds this node (it may have been moved: its exit is not this node's)."""
        task = self.tasks.live(pid)
        if self.fenced:
            raise TryAgain(f"task {pid} cannot be killed or controlled now: this node may have lost its cluster "
                           f"lease and the task may have been moved; try again in a few seconds")
        return task

    def expire_deadlines(self) -> None:
        """End the live tasks whose own deadline or tenant's sandbox max_wall has passed."""
        for task in self.tasks.due(self.now_us):
            own = task.deadline_at_us is not None and task.deadline_at_us <= self.now_us
            self.exit(task, "expired", "deadline passed" if own else f"tenant {task.tenant}'s sandbox max_wall passed")

    def emit(self, kind: str, task: Task | None, detail: str, gpu: int | None = None) -> None:
        """A trace line at the current time."""
        self.trace.emit(self.now_us, kind, task, detail, gpu)

    def forget_tenant(self, name: str) -> None:
        """Tenant `name` was removed: the trace forgets it once its lines are gone (TraceLog.forget), the counters
        its share."""
        self.trace.forget(name)
        self.counters.forget(name)

    def enqueue(self, task: Task) -> None:
        """A new or continued task becomes runnable (a preempted one stays so) and joins the queue."""
        self.tasks.set_state(task, State.PREEMPTED if task.state is State.PREEMPTED else State.QUEUED)
        self.runq.enqueue(task)

    def unqueue(self, task: Task) -> None:
        """Out of the queue, still runnable and counted (held back, or stalled for its engine)."""
        self.runq.remove(task)

    def queue(self, task: Task) -> None:
        """Back in the queue, as counted already (released, or its engine is up)."""
        self.runq.push(task)

    def leave(self, task: Task) -> None:
        """Take the task off its GPU (freeing its KV) or out of the queue."""
        if task.runnable:
            self.runq.remove(task)
            self.runq.count(task, "runnable", -1)
        if task.state is State.RUNNING:
            self.runq.count(task, "running", -1)
        if task.gpu is not None:
            if task.meter is not None:
                self.tenancy.meter_end(task)
            gpu = self.gpus[task.gpu]
            gpu.running.pop(task.pid, None)
            self.reclaim.left(task)
            self.kv.release(task)
            self.changed.add(gpu.key)
            task.gpu, task.prefilled = None, False
            self.tenancy.release_held(task.tenant)

    def exit(self, task: Task, how: str, detail: str) -> None:
        """End a live task (`how`: its wait line); a kill also ends its live descendants."""
        self._end(task, how, detail)
        if how == "killed":
            for child in self.tasks.live_descendants(task):
                self._end(child, "killed", f"its parent {child.parent} was killed")

    def moved_away(self, event: ev.MovedAway) -> None:
        """The cluster moved the task to another node: it ends here with a `failover` line, no `exit` line."""
        self._end(self.tasks[event.pid], "moved", f"moved to node {event.node} while this node had lost its lease; "
                                                  f"stopped here, its exit is that node's", line="failover")

    def _end(self, task: Task, how: str, detail: str, line: str = "exit") -> None:
        self.leave(task)
        task.exit, task.exited_us = how, self.now_us
        self.tenancy.gone(task)
        self.tasks.set_state(task, State.EXITED)
        kind = how.split(":")[0]
        self.counters.exits[kind] = self.counters.exits.get(kind, 0) + 1
        self.counters.tokens_in += task.tokens_in
        self.emit(line, task, f"{how}; {detail}")
        self.tasks.wake_ancestors(task)

    def preempt(self, task: Task, reason: str) -> None:
        """A running task back to the queue, preempted, with a `preempt` trace line."""
        self.counters.count(task.tenant, "preempted")
        self.emit("preempt", task, reason, task.gpu)
        self.requeue(task, State.PREEMPTED)

    def requeue(self, task: Task, state: State) -> None:
        """From a GPU back to the queue without its tenant or agent going idle (so no lift); a task that could
        never fit in a GPU pool ends instead (reclaim.ended_misfit): every requeue passes here."""
        if self.reclaim.ended_misfit(task):
            return
        self.runq.count(task, "runnable", +1)
        self.leave(task)
        self.tasks.set_state(task, state)
        self.runq.push(task)

    # -- dispatch -------------------------------------------------------------------------------

    def schedule(self) -> None:
        """Fill free batch slots from the queue (again after a fair preemption); keep the KV stall clocks."""
        kv_blocked = self._fill_slots()
        if self.runq.preempts and self.reclaim.rebalance(lambda: self.runq.peek(self.now_us), self.engines.where):
            kv_blocked = self._fill_slots()
        self.kv_some.set(self.now_us, kv_blocked)
        self.kv_full.set(self.now_us, kv_blocked and not any(g.running for g in self.gpus))

    def _fill_slots(self) -> bool:
        """Dispatch from the queue while the head fits, looking past heads none of whose GPUs has an open
        slot (backfill); say whether KV (not slots) stopped it."""
        passed: list[Task] = []  # heads looked past, out of the queue until the end of this pass
        try:
            return self._fill(passed)
        finally:
            for task in passed:  # back in their places: a queue orders by keys no dispatch changes (see above)
                self.runq.push(task)

    def _fill(self, passed: list[Task]) -> bool:
        open_gpus = [] if self.fenced else [g.config.index for g in self.gpus if g.open]  # a dispatch fills one
        past = ""  # why the first head looked past could not use the open GPUs
        while open_gpus and (task := self.runq.peek(self.now_us)) is not None:  # no peek once the slots are full
            if self._waits_out(task):
                continue
            gpus = self.engines.where(task.model, open_gpus)  # its endpoints' GPUs that are up (engines.py)
            if not gpus:  # every GPU it may run on is full or down: the open ones are no use to it
                if len(passed) == BACKFILL_WINDOW:  # a full window rests backfill (see _may_look_past)
                    self.backfill_after_us = self.now_us + BACKFILL_REST_US
                    return False
                if not self._may_look_past(open_gpus):
                    return False
                past = past or self._why_looked_past(task, open_gpus)
                self.runq.remove(task)
                passed.append(task)
                continue
            index = self.kv.seat(task, gpus)  # KV pages where most prefix hits, then most room
            if index is None:
                return True  # KV stopped it: looking past it would starve large tasks
            gpu = self.gpus[index]
            self._dispatch(task, gpu, passed, past)
            if not gpu.open:
                open_gpus.remove(index)
        return False

    def _waits_out(self, task: Task) -> bool:
        """Whether the head leaves the queue to wait: its tenant is at a gpu or kv_pages quota (held back),
        or its model's engine is down (stalled: engines.py)."""
        if self.tenancy.held_back(task):
            return True
        if self.engines.is_down(task.model):
            self.engines.stall(task)
            return True
        return False

    def _may_look_past(self, open_gpus: list[int]) -> bool:
        """Whether the pass may look past one more head (the window having room): backfill is not resting,
        and the queue holds a task of a model that may run on an open GPU. A pass that fills the window rests
        backfill for BACKFILL_REST_US: a backlog of a full model deeper than the window would otherwise
        take out and push back the window's heads at every event, for nothing."""
        return self.now_us >= self.backfill_after_us and any(
            self.engines.where(model, open_gpus) for model in self.runq.queued_models())

    def _why_looked_past(self, task: Task, open_gpus: list[int]) -> str:
        """Why the head cannot use any of the open GPUs, in a dispatch line's words: none is its model's (its
        GPUs are full), or those that are have their endpoint down."""
        down = self.engines.down_at(task.model, open_gpus)
        return f"its engine at gpus={gpus_text(down)} is down" if down else "its GPUs are full"

    def _dispatch(self, task: Task, gpu: Gpu, passed: list[Task], past: str) -> None:
        """Seat the task on `gpu`; `passed`: the heads looked past to reach it, still waiting; `past`: why the
        first of them was."""
        reason = self.runq.why(passed)
        self.runq.start(task)
        self.counters.count(task.tenant, "dispatched")
        if reason == "deadline boost":
            self.counters.count(task.tenant, "boosts")
        if passed:
            reason = f"backfill past pid {passed[0].pid} ({past}), then {reason}"
        task.gpu, task.run_tokens = gpu.config.index, 0
        self.reclaim.ran(task, 0)
        gpu.running[task.pid] = task
        task.prefilled = task.cached_tokens >= task.tokens_in + task.tokens_out  # seated with nothing to prefill
        self.tenancy.meter_start(task)
        self.tasks.set_state(task, State.RUNNING)
        self.changed.add(gpu.key)
        counter = self.runq.accounts.tenant(task).counter
        self.emit("dispatch", task, f"{self.runq.name}: {reason}; tenant counter={counter:.1f} "
                                    f"vruntime={task.vruntime} queued={len(self.runq) + len(passed)}", gpu.config.index)

    def step(self, event: ev.Step) -> None:
        """Serve each chunk whose task is still in that GPU's batch; then re-order the served tenants. A bug
        raised serving a chunk comes out as a ServeBug naming its task, the changes made so far left as they are
        (the runtime rolls the kernel back)."""
        if self.fenced:  # made before the hold, delivered after it: its tokens may be another node's now
            return
        gpu = self.gpus[event.gpu]
        self.counters.steps += 1
        served = {}
        for chunk in event.chunks:
            task = gpu.running.get(chunk.pid)
            if task is not None:
                try:
                    self._serve(task, gpu, chunk)
                except Exception as exc:
                    raise ServeBug(chunk.pid) from exc
                served[task.tenant, task.agent] = task
        for task in served.values():  # once per tenant and agent, not per token
            self.runq.rekey(task)

    def _serve(self, task: Task, gpu: Gpu, chunk: ev.Chunk) -> None:
        if chunk.prefill:
            task.prefilled = True
        if chunk.tokens and task.first_token_us is None:
            task.first_token_us = self.now_us
            self.emit("first_token", task, f"ttft_us={self.now_us - task.submitted_us}", gpu.config.index)
        task.output += chunk.text.encode()
        task.tokens_out += chunk.tokens
        self.counters.tokens_out += chunk.tokens
        estimated = task.prompt_estimated
        self.tenancy.meter_serve(task, chunk)
        self.runq.charge(task, gpu, chunk)
        self.reclaim.ran(task, chunk.tokens)
        self.changed.add(task.pid)
        if task.tokens_out >= task.spec.max_tokens or chunk.final:
            self.exit(task, "done", f"tokens_out={task.tokens_out}")
        elif not (estimated and not task.prompt_estimated and self.reclaim.ended_misfit(task)):  # counted past all
            self.reclaim.grow_kv(task, gpu)

    def grant_pids(self, event: ev.PidBlock) -> None:
        """Give new tasks the pids of a block the cluster granted; on a single node (a cluster node's
        journal booted alone) the block is ignored and pids go on as they are."""
        if self.tasks.pid_end is not None:
            self.tasks.grant(event.first, event.count)
            self.emit("pid-block", None, f"pids {event.first}..{event.first + event.count - 1} granted by the cluster")

    def fence(self, event: ev.Fence) -> None:
        """The cluster holds this node's engines (no batch, no dispatch, steps change nothing), or releases them."""
        self.fenced = event.held
        self.emit("fence", None, ("held: " if event.held else "released: ") + event.reason)
        self.changed.update([("gpu", gpu.config.index) for gpu in self.gpus] + ["deadline"])  # drivers, timer look again

    def placed(self, event: ev.Placed) -> None:
        """The cluster placed a write's tasks on a node (a trace line only: the tasks run there)."""
        self.emit("place", None, f"pids {event.pids} on node {event.node}: {event.reason}")

    def migrated(self, event: ev.Migrated) -> None:
        """The daemon started from a snapshot of older code, migrated: one trace line says so."""
        self.emit("migrate", None, f"{event.snapshot} was written by an older apeinxfs; migrated: {event.classes}")

    def restart(self, event: ev.Restart) -> None:
        """The daemon restarted: what was running goes back to the queue, billed up to its last token."""
        self.emit("restart", None, f"daemon restarted with {len(self.tasks)} tasks")
        for gpu in self.gpus:
            for task in list(gpu.running.values()):
                assert task.meter is not None, "a task on a GPU is metered"
                self.tenancy.meter_end(task, task.meter.last_us)  # the time the daemon was down is not billed
                self.emit("requeue", task, f"was running on gpu {gpu.config.index} when the daemon stopped; "
                                           f"resumes after token {task.tokens_out}")
                self.requeue(task, State.QUEUED)
