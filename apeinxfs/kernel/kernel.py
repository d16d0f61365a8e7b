"""The kernel: applies events to tasks, the run queue, the GPUs' KV pools and the trace.

`check(event)` says whether an event would be refused (raising the errno'd error);
`apply(event, now_us)` changes state and never refuses. The daemon journals between the
two. Given the same events with the same times, the same state and trace result: no
clock, randomness or I/O inside. Who runs next is sched.py's; taking slots and pages back
(fair preemption, KV reclaim, the OOM killer) is reclaim.py's; KV books are memory.py's;
tenants are tenancy.py's, models added at runtime modeladmin.py's and engine outages
engines.py's.
"""
import errno
import heapq
from collections.abc import Callable
from typing import Any

import attrs

from . import events as ev
from .audit import AuditLog
from .billing import BillBook
from .config import MIB, KernelConfig
from .engines import EngineBook, EngineWatch
from .errors import ApeinxError, Busy, Invalid, NoSpace, NotFound
from .invariants import check_invariants
from .kvmem import KVPool, estimate_prompt_tokens
from .memory import KVManager
from .modeladmin import ModelAdmin
from .pressure import StallClock
from .reclaim import Reclaim
from .sched import POLICIES, Accounts, make_queue, prio_weight, vruntime_delta
from .task import State, Task
from .tenancy import Tenancy
from .trace import TraceLog


@attrs.define
class Gpu:
    """A GPU as the kernel sees it: its config, KV pool and the tasks in its batch."""

    config: object
    pool: KVPool
    running: dict = attrs.Factory(dict)
    key: tuple = attrs.field(init=False)  # ("gpu", N): what take_changed() reports when its batch changes

    @key.default
    def _key(self) -> tuple:
        return ("gpu", self.config.index)


@attrs.define
class Counters:
    """Monotonic totals for /metrics."""

    submitted: int = 0
    rejected: int = 0
    dispatched: int = 0
    preempted: int = 0
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    evictions: int = 0
    oom_kills: int = 0
    fair_preemptions: int = 0
    lifts: int = 0
    boosts: int = 0
    exits: dict = attrs.Factory(dict)

    @property
    def decisions(self) -> int:
        """Scheduling decisions made: each is a dispatch (sched/stat's name for it)."""
        return self.dispatched


class Kernel(Reclaim, Tenancy, ModelAdmin, EngineWatch):
    """One node's kernel state."""

    def __init__(self, config: KernelConfig):
        self.config = config
        self.models = {m.name: m for m in config.models}
        self.tenants, self.usage = {}, {}
        self.kv = KVManager(config, self._evicted)
        self.gpus = [Gpu(g, pool) for g, pool in zip(config.gpus, self.kv.pools)]
        self._open_gpus = {g.index for g in config.gpus}  # those with a free batch slot
        self._preemptible: dict[int, Task] = {}  # running tasks past min_run_tokens: fair preemption's candidates
        self._fair_preempt_step = -1  # counters.steps at the last fair preemption: one per step at most
        self.tasks: dict[int, Task] = {}
        self.accounts = Accounts({t.name: t.weight for t in config.tenants})
        self.runq = self._make_queue(config.sched.policy)
        self.trace = TraceLog(config.node, self.tasks)
        self.counters = Counters()
        self.kv_some, self.kv_full = StallClock(), StallClock()
        self.engines = EngineBook()  # down engines, stalled tasks, resumes (engines.py)
        self.now_us = 0
        self.next_pid = 1
        self.version = 0  # events applied: what a rendered file depends on, unless it reads the clock
        self._deadlines: list[tuple[int, int]] = []
        self.changed: set = set()
        self._woken: set[int] = set()  # pids _wake_ancestors added to `changed`, with all their ancestors
        self._trace_seen = 0  # the trace seq take_changed() last reported
        self.state_counts: dict = dict.fromkeys(State, 0)
        for tenant in config.tenants:
            self._install(tenant)
        self.rules: tuple = ()
        self.bills = BillBook(config.billing_period_s)
        self.audit = AuditLog()
        self.handlers = self._handlers()

    def _handlers(self) -> dict[type, tuple[Callable[[Any], None], Callable[[Any], Any]]]:
        """{event type: (its check, its apply)}, one entry per kind of events.py (a test says so)."""
        accept = self._accept
        return {
            ev.Submit: (self._check_submit, self._apply_submit),
            ev.Kill: (self._check_kill, self._apply_kill),
            ev.Control: (self._check_control, self._apply_control),
            ev.Step: (self._check_step, self._apply_step),
            ev.Failed: (accept, self._apply_failed),
            ev.Interrupted: (accept, self._apply_interrupted),
            ev.EngineHealth: (accept, self._apply_enginehealth),
            ev.Rejected: (accept, self._apply_rejected),
            ev.SetPolicy: (self._check_setpolicy, self._apply_setpolicy),
            ev.SetTenant: (self._check_settenant, self._apply_settenant),
            ev.RemoveTenant: (self._check_removetenant, self._apply_removetenant),
            ev.SetModel: (self._check_setmodel, self._apply_setmodel),
            ev.RemoveModel: (self._check_removemodel, self._apply_removemodel),
            ev.SetRules: (self._check_setrules, self._apply_setrules),
            ev.GpuMemory: (self._check_gpumemory, self._apply_gpumemory),
            ev.Tick: (accept, self._apply_tick),
            ev.Restart: (accept, self._apply_restart),
            ev.JournalFailed: (accept, self._apply_journalfailed),
            ev.JournalRecovered: (accept, self._apply_journalrecovered),
        }

    # -- refusals -----------------------------------------------------------------

    def check(self, event) -> None:
        """Raise the error that refuses `event`, or return if it would be accepted; an object
        that is no kind of event is refused with EINVAL."""
        handler = self.handlers.get(type(event))
        if handler is None:
            raise Invalid(f"{type(event).__name__} is not a kernel event: one of {', '.join(ev.KINDS)}")
        handler[0](event)

    def _accept(self, event: Any) -> None:
        """The check of an event that reports what happened (an engine's step, a failure, time): never refused."""

    def _check_submit(self, event: ev.Submit) -> None:
        spec = event.spec
        model = self.models.get(spec.model or self.config.models[0].name)
        if model is None:
            raise NotFound(f"unknown model {spec.model!r}: see /models")
        parent = self._check_parent(spec)
        tenant = self._tenant_of(spec, parent)
        if tenant not in self.tenants:
            raise NotFound(f"unknown tenant {tenant!r}")
        context = estimate_prompt_tokens(spec.prompt) + spec.max_tokens
        if context > model.context:
            raise Invalid(f"prompt plus max_tokens ({context}) exceeds the context of {model.name} ({model.context})")
        need = self.kv.admit_pages(spec, model)
        largest = max(g.pool.pages_total for g in self.gpus)
        if need > largest:
            raise NoSpace(f"needs {need} KV pages of {self.config.page_mib} MiB; the largest GPU pool has {largest}")

    def _check_parent(self, spec) -> Task | None:
        if spec.parent is None:
            return None
        parent = self._live_task(spec.parent)
        if spec.tenant is not None and spec.tenant != parent.tenant:
            raise Invalid(f"a child runs in its parent's tenant {parent.tenant!r}, not {spec.tenant!r}")
        return parent

    def _tenant_of(self, spec, parent: Task | None) -> str:
        """The task's tenant, as the tenant's own name object where it has one: the many lookups
        by it then match by identity, not by comparing a string parsed for this one task."""
        name = parent.tenant if parent else spec.tenant or "default"
        known = self.tenants.get(name)
        return known.name if known is not None else name

    def _check_setpolicy(self, event: ev.SetPolicy) -> None:
        if event.policy not in POLICIES:
            raise Invalid(f"unknown policy {event.policy!r}: one of {', '.join(POLICIES)}")

    def _check_step(self, event: ev.Step) -> None:
        if not 0 <= event.gpu < len(self.gpus):
            raise Invalid(f"no GPU {event.gpu} to step: there are {len(self.gpus)}")

    def _check_gpumemory(self, event: ev.GpuMemory) -> None:
        if not 0 <= event.gpu < len(self.gpus) or self.gpus[event.gpu].config.simulated or event.free_mib < 0:
            raise Invalid(f"no real GPU {event.gpu} to read {event.free_mib} MiB free on")

    def _check_kill(self, event: ev.Kill) -> None:
        self._live_task(event.pid)

    def _check_control(self, event: ev.Control) -> None:
        task = self._live_task(event.pid)
        verb = event.command.verb
        if verb == "stop" and task.state is State.STOPPED:
            raise Busy(f"task {task.pid} is already stopped")
        if verb == "cont" and task.state is not State.STOPPED:
            raise Busy(f"task {task.pid} is not stopped (state {task.state})")

    def _live_task(self, pid: int) -> Task:
        task = self.tasks.get(pid)
        if task is None:
            raise NotFound(f"no task {pid}")
        if task.done:
            raise Busy(f"task {pid} has already exited ({task.exit})")
        return task

    # -- applying events ------------------------------------------------------------

    def apply(self, event, now_us: int):
        """Apply one accepted event at time `now_us`; a Submit returns the new pid.

        A kill or control made moot by an earlier event of the same commit (a second
        `cont`, a kill of a task that has exited since its check) changes nothing.
        """
        self.now_us = max(self.now_us, now_us)
        self.version += 1
        result = None if self._moot(event) else self.handlers[type(event)][1](event)
        self._expire_deadlines()
        self._expire_engine_waits()
        self._schedule()
        self._count_engine_stalls()
        return result

    def _moot(self, event) -> bool:
        if not isinstance(event, (ev.Kill, ev.Control)):
            return False
        try:
            self.check(event)
        except ApeinxError:
            return True
        return False

    def _apply_submit(self, event: ev.Submit) -> int:
        spec, pid = event.spec, self.next_pid
        self.next_pid += 1
        deadline = self.now_us + spec.deadline_us if spec.deadline_us else None
        parent = self.tasks.get(spec.parent)
        task = Task(pid=pid, spec=spec, model=spec.model or self.config.models[0].name, uid=event.uid,
                    tenant=self._tenant_of(spec, parent), submitted_us=self.now_us,
                    tokens_in=estimate_prompt_tokens(spec.prompt), weight=prio_weight(spec.prio),
                    deadline_at_us=deadline, parent=spec.parent, agent=parent.agent if parent else pid)
        if parent:
            parent.children.append(pid)
        self.tasks[pid] = task
        self.state_counts[State.NEW] += 1
        self.counters.submitted += 1
        self._emit("submit", task, f"name={spec.name} max_tokens={spec.max_tokens} prio={spec.prio} uid={event.uid}")
        self._admitted(task, event)
        if deadline:
            self._add_deadline(deadline, pid)
        self._enqueue(task)
        return pid

    def _add_deadline(self, at_us: int, pid: int) -> None:
        heapq.heappush(self._deadlines, (at_us, pid))
        self.changed.add("deadline")

    def _apply_kill(self, event: ev.Kill) -> None:
        self._audit_others(event, self.tasks[event.pid], "kill")
        self._exit(self.tasks[event.pid], "killed", f"by uid {event.uid}")

    def _audit_others(self, event, task: Task, what: str) -> None:
        """Acting on another user's task is an administrative act."""
        if event.uid != task.uid:
            self.audit.record(self.now_us, event, what, "ok", f"task {task.pid} of uid {task.uid}, tenant {task.tenant}")

    def _apply_control(self, event: ev.Control) -> None:
        task, command = self.tasks[event.pid], event.command
        self._audit_others(event, task, command.verb)
        if command.verb == "kill":
            self._exit(task, "killed", f"by uid {event.uid}")
        elif command.verb == "stop":
            self._leave(task)
            self._set_state(task, State.STOPPED)
            self._emit("stop", task, f"by uid {event.uid}")
        elif command.verb == "cont":
            self._emit("cont", task, f"by uid {event.uid}")
            self._enqueue(task)
        else:
            self._reprioritise(task, command.arg)

    def _reprioritise(self, task: Task, prio: int) -> None:
        self.runq.remove(task)
        task.spec = attrs.evolve(task.spec, prio=prio)
        task.weight = prio_weight(prio)
        if task.runnable:
            self.runq.push(task)
        self._emit("prio", task, f"prio={prio} weight={task.weight}")

    def _apply_step(self, event: ev.Step) -> None:
        gpu = self.gpus[event.gpu]
        self.counters.steps += 1
        served = {}
        for chunk in event.chunks:
            task = gpu.running.get(chunk.pid)
            if task is not None:
                self._serve(task, gpu, chunk)
                served[task.tenant, task.agent] = task
        for task in served.values():  # once per tenant and agent, not per token
            self.runq.rekey(task)

    def _serve(self, task: Task, gpu: Gpu, chunk: ev.Chunk) -> None:
        if chunk.prefill:
            task.prefilled = True
        if chunk.tokens and task.first_token_us is None:
            task.first_token_us = self.now_us
            self._emit("first_token", task, f"ttft_us={self.now_us - task.submitted_us}", gpu.config.index)
        task.output += chunk.text.encode()
        task.tokens_out += chunk.tokens
        self.counters.tokens_out += chunk.tokens
        self._meter_serve(task, chunk.tokens)
        self._charge(task, gpu, chunk)
        self._touch(task)
        if task.tokens_out >= task.spec.max_tokens or chunk.final:
            self._exit(task, "done", f"tokens_out={task.tokens_out}")
        else:
            self._grow_kv(task, gpu)

    def _apply_failed(self, event: ev.Failed) -> None:
        task = self.tasks.get(event.pid)
        if task is not None and not task.done:
            self._exit(task, f"failed: {event.reason}", event.reason)

    def _apply_rejected(self, event: ev.Rejected) -> None:
        self.counters.rejected += 1
        if event.denial:
            self.audit.record(self.now_us, event, event.path, "denied", event.reason)
        self._emit("reject", None, f"{event.path}: {event.reason} (uid {event.uid})")

    def _apply_tick(self, event: ev.Tick) -> None:
        """Nothing but time: apply() expires deadlines and schedules."""

    def _apply_gpumemory(self, event: ev.GpuMemory) -> None:
        pages = self.kv.set_real_free(event.gpu, event.free_mib * MIB)
        self._emit("gpu-memory", None, f"{event.free_mib} MiB free: new tasks may take {pages} pages here", event.gpu)

    def _apply_restart(self, event: ev.Restart) -> None:
        self._emit("restart", None, f"daemon restarted with {len(self.tasks)} tasks")
        for gpu in self.gpus:
            for task in list(gpu.running.values()):
                self._meter_end(task, task.meter.last_us)  # the time the daemon was down is not billed
                self._emit("requeue", task, f"was running on gpu {gpu.config.index} when the daemon stopped; "
                                            f"resumes after token {task.tokens_out}")
                self._requeue(task, State.QUEUED)

    def _apply_journalfailed(self, event: ev.JournalFailed) -> None:
        self._emit("degraded", None, f"{event.reason}; state changes are refused and running tasks paused "
                                     "until it can be written")

    def _apply_journalrecovered(self, event: ev.JournalRecovered) -> None:
        self._emit("recovered", None, f"the journal can be written again after "
                                      f"{(self.now_us - event.since_us) / 1e6:.3f}s of "
                                      f"{errno.errorcode.get(event.errno, event.errno)}; running tasks resume")

    # -- mechanisms ---------------------------------------------------------------------

    def _enqueue(self, task: Task) -> None:
        self._set_state(task, State.PREEMPTED if task.state is State.PREEMPTED else State.QUEUED)
        self._count(task, "runnable", +1)
        self.runq.push(task)

    def _count(self, task: Task, field: str, delta: int) -> None:
        for entity, before in self.accounts.count(task, field, delta):
            self.counters.lifts += 1
            self._emit("lift", task, f"{entity.name} counter {before:.1f} -> {entity.counter:.1f}: "
                                     "active again, raised to the least active counter")

    def _leave(self, task: Task) -> None:
        """Take the task off its GPU (freeing its KV) or out of the queue."""
        if task.runnable:
            self.runq.remove(task)
            self._count(task, "runnable", -1)
        if task.state is State.RUNNING:
            self._count(task, "running", -1)
        if task.gpu is not None:
            if task.meter is not None:
                self._meter_end(task)
            gpu = self.gpus[task.gpu]
            gpu.running.pop(task.pid, None)
            self._preemptible.pop(task.pid, None)
            self._open_gpus.add(task.gpu)
            self.kv.release(task)
            self.changed.add(gpu.key)
            task.gpu, task.prefilled = None, False
            self._release_held(task.tenant)

    def _exit(self, task: Task, how: str, detail: str) -> None:
        self._end(task, how, detail)
        if how == "killed":
            self._kill_children(task)

    def _kill_children(self, root: Task) -> None:
        """Kill the live children of a killed task, and theirs, parents first and in submit order:
        a depth-first walk with its own stack, as a user can make a tree as deep as they like."""
        stack = list(reversed(root.children))
        while stack:
            task = self.tasks[stack.pop()]
            if not task.done:
                self._end(task, "killed", f"its parent {task.parent} was killed")
                stack.extend(reversed(task.children))

    def _end(self, task: Task, how: str, detail: str) -> None:
        self._leave(task)
        task.exit, task.exited_us = how, self.now_us
        self._gone(task)
        self._set_state(task, State.EXITED)
        kind = how.split(":")[0]
        self.counters.exits[kind] = self.counters.exits.get(kind, 0) + 1
        self.counters.tokens_in += task.tokens_in
        self._emit("exit", task, f"{how}; {detail}")
        self._wake_ancestors(task)

    def _preempt(self, task: Task, reason: str) -> None:
        self.counters.preempted += 1
        self._emit("preempt", task, reason, task.gpu)
        self._requeue(task, State.PREEMPTED)

    def _requeue(self, task: Task, state: State) -> None:
        """From a GPU back to the queue without its tenant or agent going idle (so no lift)."""
        self._count(task, "runnable", +1)
        self._leave(task)
        self._set_state(task, state)
        self.runq.push(task)

    def _expire_deadlines(self) -> None:
        while self._deadlines and self._deadlines[0][0] <= self.now_us:
            _, pid = heapq.heappop(self._deadlines)
            task = self.tasks[pid]
            if not task.done:
                own = task.deadline_at_us is not None and task.deadline_at_us <= self.now_us
                self._exit(task, "expired", "deadline passed" if own else f"tenant {task.tenant}'s sandbox max_wall passed")

    def _schedule(self) -> None:
        kv_blocked = self._fill_slots()
        if self.runq.preempts and self._rebalance():
            kv_blocked = self._fill_slots()
        self.kv_some.set(self.now_us, kv_blocked)
        self.kv_full.set(self.now_us, kv_blocked and not any(g.running for g in self.gpus))

    def _fill_slots(self) -> bool:
        """Dispatch from the queue while the head fits; say whether KV (not slots) stopped it."""
        runq, now_us, open_gpus = self.runq, self.now_us, self._open_gpus
        while open_gpus and (task := runq.peek(now_us)) is not None:  # no peek once the slots are full
            if self.usage[task.tenant].capped and self._held_back(task):  # only a capped tenant may be held
                continue
            if task.model in self.engines.down:  # its engine is down: it waits out of the queue (engines.py)
                self._stall(task)
                continue
            gpu = self.kv.seat(task, open_gpus)  # KV pages where most prefix hits, then most room
            if gpu is None:
                return True
            self._dispatch(task, self.gpus[gpu], runq.reason)
        return False

    def _dispatch(self, task: Task, gpu: Gpu, reason: str) -> None:
        runq, index = self.runq, gpu.config.index
        runq.remove(task)
        self.accounts.start(task)
        self.counters.dispatched += 1
        if reason == "deadline boost":
            self.counters.boosts += 1
        task.gpu, task.run_tokens = index, 0
        if not self.config.sched.min_run_tokens:  # _count_run(task, 0), without the call
            self._preemptible[task.pid] = task
        gpu.running[task.pid] = task
        if len(gpu.running) == gpu.config.slots:
            self._open_gpus.discard(index)
        task.prefilled = task.cached_tokens >= task.tokens_in + task.tokens_out  # seated with nothing to prefill
        self._meter_start(task)
        self._set_state(task, State.RUNNING)
        self.changed.add(gpu.key)
        counter = self.accounts.tenants[task.tenant].counter
        self.trace.emit(self.now_us, "dispatch", task, f"{runq.name}: {reason}; tenant counter={counter:.1f} "
                        f"vruntime={task.vruntime} queued={len(runq)}", index, plain=True)  # _emit, without the call

    def _charge(self, task: Task, gpu: Gpu, chunk: ev.Chunk) -> None:
        """VTC cost of what was served: input and output tokens apart, output dearer under KV pressure.

        Only the prompt's prefill is charged: a prefill after the task's first token recomputes
        a context dropped by a preemption the task did not ask for, and was paid for once."""
        sched = self.config.sched
        pressure = 1 + sched.pressure_cost * task.kv_pages / max(1, gpu.pool.pages_total)
        prefill = chunk.prefill if task.tokens_out == chunk.tokens else 0  # nothing generated before this chunk
        self.accounts.charge(task, sched.input_cost * prefill + sched.output_cost * chunk.tokens * pressure)
        task.vruntime += vruntime_delta(chunk.tokens, task.weight)
        self._count_run(task, chunk.tokens)

    def _count_run(self, task: Task, tokens: int) -> None:
        """Tokens served since the task's dispatch; past min_run_tokens it may be preempted for fairness."""
        task.run_tokens += tokens
        if task.run_tokens >= self.config.sched.min_run_tokens:
            self._preemptible[task.pid] = task

    def _make_queue(self, policy: str):
        return make_queue(policy, self.accounts, int(self.config.sched.deadline_boost_s * 1e6))

    def _apply_setpolicy(self, event: ev.SetPolicy) -> None:
        """Switch policy live: the same runnable tasks, re-queued in pid order."""
        old, self.runq = self.runq, self._make_queue(event.policy)
        for task in sorted(old.tasks(), key=lambda t: t.pid):
            self.runq.push(task)
        self._emit("policy", None, f"{old.name} -> {event.policy} by uid {event.uid}")
        self.audit.record(self.now_us, event, "sched/policy", "ok", f"{old.name} -> {event.policy}")

    def _wake_ancestors(self, task: Task) -> None:
        """A parent's `wait` covers its tree: wake every ancestor's readers. The walk stops at an
        ancestor woken since the last take_changed (its own ancestors were woken with it), so
        the exits of a deep chain cost O(1) each, not O(depth)."""
        while task.parent is not None and task.parent not in self._woken:
            self._woken.add(task.parent)
            self.changed.add(task.parent)
            task = self.tasks[task.parent]

    def tree_done(self, task: Task) -> bool:
        """Whether the task and all its descendants have exited."""
        return task.pid in self.trees_done([task.pid])

    def trees_done(self, pids) -> set[int]:
        """Those of `pids` whose task and all its descendants have exited: tree_done of each, with
        every subtree walked at most once however many of the pids share it (a kill of a deep
        chain changes every pid of it at once)."""
        done: dict[int, bool] = {}
        for root in pids:
            stack = [(root, False)]
            while stack:
                pid, children_known = stack.pop()
                task = self.tasks[pid]
                if children_known:
                    done[pid] = all(done[child] for child in task.children)
                elif pid not in done:
                    if task.done:
                        stack.append((pid, True))
                        stack.extend((child, False) for child in task.children if child not in done)
                    else:
                        done[pid] = False
        return {pid for pid in pids if done[pid]}

    def _set_state(self, task: Task, state: State) -> None:
        self.state_counts[task.state] -= 1
        self.state_counts[state] += 1
        task.state = state
        self.changed.add(task.pid)  # _touch, inline: every dispatch and exit passes here

    def _touch(self, task: Task) -> None:
        self.changed.add(task.pid)

    def _emit(self, kind: str, task: Task | None, detail: str, gpu=None) -> None:
        self.trace.emit(self.now_us, kind, task, detail, gpu)

    def check_invariants(self) -> None:
        """Raise InvariantError naming every redundant index that disagrees with its source (invariants.py)."""
        check_invariants(self)

    # -- views for drivers and the tree -----------------------------------------------------

    def batch(self, gpu: int) -> list[Task]:
        """The tasks running on GPU `gpu`, in dispatch order."""
        return list(self.gpus[gpu].running.values())

    def next_deadline_us(self) -> int | None:
        while self._deadlines and self.tasks[self._deadlines[0][1]].done:
            heapq.heappop(self._deadlines)
        own, engine_wait = self._deadlines[0][0] if self._deadlines else None, self.engines.next_wait_us()
        return min((at for at in (own, engine_wait) if at is not None), default=None)

    def take_changed(self) -> set:
        """What changed since the last call: pids, 'trace' (if it has new lines), ('gpu', N)."""
        changed, self.changed, self._woken = self.changed, set(), set()
        if self.trace.seq != self._trace_seen:
            self._trace_seen = self.trace.seq
            changed.add("trace")
        return changed
