"""The kernel: routes each event to the components that own what it changes.

`check(event)` says whether an event would be refused (raising the errno'd error);
`apply(event, now_us)` changes state and never refuses. The daemon journals between the
two. Given the same events with the same times, the same state and trace result: no
clock, randomness or I/O inside. Each part owns its state (docs/architecture.md has the
table): the task table (tasktable.py), the run queue and accounts (runqueue.py, sched.py),
the KV books (memory.py), tenancy (tenancy.py), models (models.py), engine outages
(engines.py), preemption and the OOM killer (reclaim.py), the reaping of exited tasks
(retention.py), the checks of a submit (submits.py), a cluster node's place in the
settings log (sharedlog.py), the trace, audit log, bills and counters. `Kernel` holds
them, moves a task between them (queue, GPU, exit) and is the `Host` (seams.py) they call
back through.
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from typing import Any

from . import events as ev
from .audit import AuditLog
from .billing import BillBook
from .config import MIB, KernelConfig
from .counters import Counters
from .endpoints import redacted
from .engines import EngineWatch
from .errors import ApeinxError, Busy, Invalid
from .gpus import Gpu
from .invariants import check_invariants
from .kvmem import COUNT_ENGINE, estimate_prompt_tokens
from .memory import KVManager
from .models import Models
from .moves import Moves
from .reclaim import Reclaim
from .rejects import apply_rejected
from .retention import Reaper
from .runqueue import RunQueue
from .sched import POLICIES, Accounts, prio_weight
from .sharedlog import SharedLog
from .submits import SubmitChecks, adoption_words
from .task import State, Task
from .tasktable import TaskTable
from .tenancy import Elsewhere, Tenancy
from .trace import TraceLog

Handler = tuple[Callable[[Any], object], Callable[[Any], Any]]


class Kernel:
    """One node's kernel: its components, and the events that move tasks between them."""

    def __init__(self, config: KernelConfig):
        self.config, self.version = config, 0  # version: events applied
        self.changed: set[object] = set()
        self._trace_seen = 0  # the trace seq take_changed() last reported
        self.tasks = TaskTable(self.changed, config.pid_blocks)
        self.models = Models(config.models, len(config.gpus))
        self.kv = KVManager(config, self._evicted)
        self.gpus = [Gpu(g, pool) for g, pool in zip(config.gpus, self.kv.pools)]
        self.trace = TraceLog(config.node, self.tasks, config.retention.trace_lines)
        self.audit, self.bills, self.counters = AuditLog(config.retention.audit_lines), BillBook(config.billing_period_s), Counters()
        self.accounts = Accounts({t.name: t.weight for t in config.tenants})
        self.moves = moves = Moves(self.tasks, self.kv, self.gpus, self.counters, self.trace, self.changed)
        self.runq = RunQueue(config.sched, self.accounts, self.counters, moves)
        self.tenancy = Tenancy(config, self.models, self.kv, self.accounts, self.gpus, self.tasks,
                               (self.audit, self.bills), moves)
        self.engines = EngineWatch(self.models, self.tasks, moves, self.kv)
        self.reclaim = Reclaim(config.sched, self.accounts, self.gpus, self.kv, self.tasks, self.counters, moves)
        moves.attach(self.runq, self.tenancy, self.engines, self.reclaim)
        self.reaper = Reaper(config.retention, self.tasks, self.accounts, self.engines, self.counters)
        self.submits = SubmitChecks(self.models, self.tasks, self.tenancy, self.kv)
        self.emit = moves.emit
        self.shared = SharedLog(self.emit)  # the cluster's settings log applied here (sharedlog.py)
        self.handlers = self._handlers()

    def _evicted(self, gpu: int, pages: int, task: Task) -> None:
        self.reclaim.evicted(gpu, pages, task)

    @property
    def now_us(self) -> int:
        """The time of the latest event applied."""
        return self.moves.now_us

    def _handlers(self) -> dict[type, Handler]:
        """{event type: (its check, its apply)}, one entry per kind of events.py (a test says so)."""
        accept, tenancy, models = self._accept, self.tenancy, self.models
        return {
            ev.Submit: (self.submits.check_submit, self._apply_submit),
            ev.Kill: (lambda e: self.moves.live(e.pid), self._apply_kill),
            ev.Control: (self._check_control, self._apply_control),
            ev.Step: (lambda e: _check_gpu(len(self.gpus), e.gpu, "to step"), self.moves.step),
            ev.Failed: (accept, self._apply_failed), ev.Fence: (accept, self.moves.fence),
            ev.Interrupted: (accept, self.engines.interrupted),
            ev.EngineHealth: (accept, self.engines.health),
            ev.EngineKV: (self.engines.kv_reports.check, self.engines.kv_reports.record),
            ev.Rejected: (accept, lambda e: apply_rejected(self, e)),
            ev.SetPolicy: (self._check_setpolicy, self._apply_setpolicy),
            ev.SetTenant: (tenancy.check_set, tenancy.set),
            ev.RemoveTenant: (tenancy.check_remove, tenancy.remove),
            ev.SetModel: (lambda e: models.check_add(e.model), self._apply_setmodel),
            ev.RemoveModel: (lambda e: models.check_remove(e.name, self.tasks.values()), self._apply_removemodel),
            ev.SetRules: (tenancy.check_rules, tenancy.set_rules),
            ev.GpuMemory: (self._check_gpumemory, self._apply_gpumemory),
            ev.PidBlock: (self.tasks.check_grant, self.moves.grant_pids), ev.Placed: (accept, self.moves.placed),
            ev.Adopt: (self.submits.check_adopt, self._apply_adopt),
            ev.MovedAway: (lambda e: self.tasks.live(e.pid), self.moves.moved_away),
            ev.Shared: (self.shared.check, self.shared.apply),
            ev.Tick: (accept, accept),  # nothing but time: apply() expires deadlines and schedules
            ev.Restart: (accept, self.moves.restart), ev.Migrated: (accept, self.moves.migrated),
            ev.JournalFailed: (accept, lambda e: self.emit("degraded", None, f"{e.reason}; state changes are "
                                                           "refused and running tasks paused until it can be written")),
            ev.JournalRecovered: (accept, self._apply_journalrecovered),
        }

    # -- refusals -----------------------------------------------------------------

    def check(self, event: object) -> None:
        """Raise the error that refuses `event`, or return if it would be accepted; an object
        that is no kind of event is refused with EINVAL."""
        handler = self.handlers.get(type(event))
        if handler is None:
            raise Invalid(f"{type(event).__name__} is not a kernel event: one of {', '.join(ev.KINDS)}")
        handler[0](event)

    def _accept(self, event: Any) -> None:
        """The check of an event that reports what happened (an engine's step, a failure, time): never refused."""

    def admit(self, event: ev.Event, now_us: int, batch: dict[str, tuple[int, int]] | None = None,
              elsewhere: Mapping[str, Elsewhere] | None = None) -> ev.Event:
        """check(event), and for a submit the policy, sandbox, quota and budget (with the tenants' use on the
        cluster's other nodes, `elsewhere`); returns the event to journal."""
        self.check(event)
        if isinstance(event, ev.Submit):
            self.tasks.check_room(batch, self.config)
        return self.tenancy.admit(event, now_us, batch, elsewhere or {})

    def _check_setpolicy(self, event: ev.SetPolicy) -> None:
        if event.policy not in POLICIES:
            raise Invalid(f"unknown policy {event.policy!r}: one of {', '.join(POLICIES)}")

    def _check_gpumemory(self, event: ev.GpuMemory) -> None:
        if not 0 <= event.gpu < len(self.gpus) or self.gpus[event.gpu].config.simulated or event.free_mib < 0:
            raise Invalid(f"no real GPU {event.gpu} to read {event.free_mib} MiB free on")

    def _check_control(self, event: ev.Control) -> None:
        task, verb = self.moves.live(event.pid), event.command.verb
        if verb == "stop" and task.state is State.STOPPED:
            raise Busy(f"task {task.pid} is already stopped")
        if verb == "cont" and task.state is not State.STOPPED:
            raise Busy(f"task {task.pid} is not stopped (state {task.state})")

    # -- applying events ------------------------------------------------------------

    def apply(self, event: ev.Event, now_us: int) -> int | None:
        """Apply one accepted event at time `now_us`; a Submit returns the new pid.

        A kill or control made moot by an earlier event of the same commit (a second
        `cont`, a kill of a task that has exited since its check) changes nothing.
        """
        self.moves.now_us = max(self.moves.now_us, now_us)
        self.version += 1
        result = None if self._moot(event) else self.handlers[type(event)][1](event)
        for expire in () if self.moves.fenced else (self.moves.expire_deadlines, self.engines.expire):
            expire()  # none while the cluster holds this node (Fence): what falls due ends at the release
        self.moves.schedule()
        self.engines.count_stalls()
        self.reaper.reap(self.now_us)
        return result

    def _moot(self, event: ev.Event) -> bool:
        try:
            if isinstance(event, (ev.Kill, ev.Control)):
                self.check(event)
        except ApeinxError:
            return True
        return False

    def _apply_submit(self, event: ev.Submit) -> int:
        task = self._add_task(event, self.tasks.next_pid, event.note, adopted=False)
        return task.pid

    def _apply_adopt(self, event: ev.Adopt) -> None:
        task = self._add_task(event, event.pid, "", True, event.output, event.tokens)
        self.emit("failover", task, adoption_words(event))

    def _add_task(self, event: ev.Submit | ev.Adopt, pid: int, note: str, adopted: bool, output: str = "",
                  out: int = 0) -> Task:
        """A new task `pid` of the event's spec by its uid, with its `submit` line, queued; an adopted one
        with the `out` tokens of `output` it had made elsewhere. Its prompt is counted as the event says."""
        now, spec, uid, name = self.now_us, event.spec, event.uid, self.models.name_of(event.spec)
        counted_later = event.counting == COUNT_ENGINE  # the engine's count replaces the estimate
        parent = self.tasks.get(spec.parent) if spec.parent is not None else None
        task = Task(pid=pid, spec=spec, model=name, uid=uid,
                    tenant=self.tenancy.tenant_of(spec, parent), submitted_us=now,
                    tokens_in=(estimate := estimate_prompt_tokens(spec.prompt, event.counting)),
                    placed_prompt=self.kv.placed_prompt(spec, name, estimate) if counted_later else None,
                    weight=prio_weight(spec.prio),
                    deadline_at_us=now + spec.deadline_us if spec.deadline_us else None,
                    parent=spec.parent, agent=parent.agent if parent else pid,
                    output=bytearray(output.encode()), tokens_out=out,
                    prompt_estimated=counted_later)
        if parent:
            parent.children.append(pid)
        self.tasks.add(task, adopted)
        self.counters.submitted += 1
        self.emit("submit", task, f"name={spec.name} max_tokens={spec.max_tokens} prio={spec.prio} uid={uid}")
        for deadline in (self.tenancy.admitted(task, note), task.deadline_at_us):
            if deadline is not None:
                self.tasks.add_deadline(deadline, pid)
        self.moves.enqueue(task)
        return task

    def _apply_kill(self, event: ev.Kill) -> None:
        self._audit_others(event, self.tasks[event.pid], "kill")
        self.moves.exit(self.tasks[event.pid], "killed", f"by uid {event.uid}")

    def _audit_others(self, event: ev.Kill | ev.Control, task: Task, what: str) -> None:
        """Acting on another user's task is an administrative act."""
        if event.uid != task.uid:
            self.audit.record(self.now_us, event, what, "ok", f"task {task.pid} of uid {task.uid}, tenant {task.tenant}")

    def _apply_control(self, event: ev.Control) -> None:
        task, command = self.tasks[event.pid], event.command
        self._audit_others(event, task, command.verb)
        if command.verb == "kill":
            self.moves.exit(task, "killed", f"by uid {event.uid}")
        elif command.verb == "stop":
            task.prefill_owed = task.prefill_owed or (event.uid == task.uid and task.gpu is not None)
            self.moves.leave(task)
            self.tasks.set_state(task, State.STOPPED)
            self.emit("stop", task, f"by uid {event.uid}")
        elif command.verb == "cont":
            self.emit("cont", task, f"by uid {event.uid}")
            self.moves.enqueue(task)
        else:
            self.runq.reprioritise(task, int(command.arg or 0))
            self.emit("prio", task, f"prio={task.spec.prio} weight={task.weight}")

    def _apply_failed(self, event: ev.Failed) -> None:
        task, reason = self.tasks.get(event.pid), redacted(event.reason)  # an old row's reason may hold a password
        if task is not None and not task.done:
            self.moves.exit(task, f"failed: {reason}", reason)

    def _apply_gpumemory(self, event: ev.GpuMemory) -> None:
        pages = self.kv.set_real_free(event.gpu, event.free_mib * MIB)
        self.emit("gpu-memory", None, f"{event.free_mib} MiB free: new tasks may take {pages} pages here", event.gpu)

    def _apply_journalrecovered(self, event: ev.JournalRecovered) -> None:
        down_s, name = (self.now_us - event.since_us) / 1e6, errno.errorcode.get(event.errno, event.errno)
        self.emit("recovered", None, f"the journal can be written again after {down_s:.3f}s of {name}; running tasks resume")

    def _apply_setpolicy(self, event: ev.SetPolicy) -> None:
        """Switch policy live: the same runnable tasks, re-queued in pid order."""
        old = self.runq.set_policy(event.policy)
        self.emit("policy", None, f"{old} -> {event.policy} by uid {event.uid}")
        self.audit.record(self.now_us, event, "sched/policy", "ok", f"{old} -> {event.policy}")

    def _apply_setmodel(self, event: ev.SetModel) -> None:
        self.models.add(event.model)
        self.kv.add_model(event.model)
        self._model_changed(event, redacted(event.what))  # journaled hidden (nodes/addremove.py); old rows are not

    def _apply_removemodel(self, event: ev.RemoveModel) -> None:
        self.models.remove(event.name)
        self.kv.remove_model(event.name)
        self.engines.forget_model(event.name)
        self._model_changed(event, f"remove {event.name}")

    def _model_changed(self, event: ev.SetModel | ev.RemoveModel, what: str) -> None:
        self.audit.record(self.now_us, event, "models", "ok", what)
        self.emit("model", None, f"{what} by uid {event.uid}")
        self.changed.add("models")

    # -- views for drivers and the tree -----------------------------------------------------

    def check_invariants(self) -> None:
        """Raise InvariantError naming every redundant index that disagrees with its source (invariants.py)."""
        check_invariants(self)

    def batch(self, gpu: int) -> list[Task]:
        """The tasks running on GPU `gpu`, in dispatch order; none while the cluster holds this node (Fence)."""
        return [] if self.moves.fenced else list(self.gpus[gpu].running.values())

    def next_deadline_us(self) -> int | None:
        own, wait = (None, None) if self.moves.fenced else (self.tasks.next_deadline_us(), self.engines.book.next_wait_us())
        return min((at for at in (own, wait, self.reaper.next_us()) if at is not None), default=None)

    def take_changed(self) -> set[object]:
        """What changed since the last call: pids, 'trace' (if it has new lines), ('gpu', N)."""
        changed = set(self.changed)
        self.changed.clear()
        self.tasks.changes_taken()
        if self.trace.seq != self._trace_seen:
            self._trace_seen = self.trace.seq
            changed.add("trace")
        return changed


def _check_gpu(gpus: int, gpu: int, what: str) -> None:
    if not 0 <= gpu < gpus:
        raise Invalid(f"no GPU {gpu} {what}: there are {gpus}")
