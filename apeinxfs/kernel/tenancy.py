"""Tenancy: admission by policy, sandbox, quota and budget; holds; metering; tenant admin.

- Admission (`admit`): the policy rules decide first (deny: EACCES naming the rule; limit:
  the submit is clamped and says so); then the tenant's sandbox (allowed models EACCES,
  max_tokens EINVAL), then its quota (live tasks, tokens per window, KV pages) and budget
  (tokens per window plus overdraw), all EDQUOT with the numbers; on a cluster node the
  live tasks, reserved tokens and window's tokens of the tenant on other nodes count too
  (`Elsewhere`, an input of the check). A write of many lines is admitted as a whole:
  each line counts the ones before it (`batch`). A child (`parent=`) is admitted in its
  parent's tenant. A task's prio change is held to the rules as a submit
  asking for that prio would be, but refused (EACCES naming the rule), not clamped: the
  caller asked for one value. A task's model and tenant never change after its submit.
- Holds: a tenant at its GPU-slot or KV-page quota has its queued tasks held back (out of
  the run queue, still queued) until one of its running tasks leaves a GPU.
- Metering: ledgers are charged as tokens are served; billing.py books each GPU segment.
- Admin events: SetTenant, RemoveTenant, SetRules; each is audited.
`Tenancy` owns the tenants' configs, their usage records and the policy rules; the kernel
asks it at a submit, a dispatch, a step and an exit, and it moves held tasks and writes
the trace through the kernel's `Host` seam (seams.py).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from . import events as ev
from .audit import AuditLog
from .billing import BillBook, Meter, segment_usage
from .config import KernelConfig
from .errors import Busy, Denied, Exists, Invalid, NotFound, OverQuota
from .kvmem import estimate_prompt_tokens
from .ledger import Limit, TokenLedger
from .memory import KVManager
from .models import Models
from .policy import Decision, Request, Rule, evaluate, parse_rule
from .sampling import Sampling, number_text
from .sched import Accounts
from .seams import Host
from .spec import TaskSpec
from .task import Task
from .tenant_config import Quota, TenantConfig, check_new_name

if TYPE_CHECKING:
    from .gpus import Gpu

MINUTE_US = 60_000_000


@attrs.define
class TenantUsage:
    """What a tenant holds and has used: live tasks, reserved tokens, ledgers, held tasks."""

    live: int = 0
    reserved: int = 0  # tokens its live tasks may still be charged (prompts not yet run + max_tokens - out)
    tokens_in: int = 0
    tokens_out: int = 0
    overdraws: int = 0
    quota: TokenLedger = attrs.Factory(TokenLedger)
    budget: TokenLedger = attrs.Factory(TokenLedger)
    held: list[Task] = attrs.Factory(list)


@attrs.frozen
class Elsewhere:
    """A tenant's use on the cluster's other up nodes, as they last published it (cluster/usage.py): its
    live tasks, their reserved tokens, and the tokens used by quota and budget window index. Admission
    counts it beside this node's own; it is an input of the check only, never applied, so replay is
    unchanged."""

    live: int = 0
    reserved: int = 0
    quota: Mapping[int, int] = attrs.field(factory=dict)  # window index -> tokens used in it
    budget: Mapping[int, int] = attrs.field(factory=dict)

    def used(self, ledger: str, limit: Limit, now_us: int) -> int:
        """Tokens used elsewhere in the window of `now_us` of the `ledger` ("quota" or "budget")."""
        return getattr(self, ledger).get(limit.index(now_us), 0) if limit.tokens is not None else 0


def _shown_temperature(value: float | None) -> str:
    return "unset" if value is None else number_text(value)


def quota_limit(tenant: TenantConfig) -> Limit:
    return tenant.quota.limit


def budget_limit(tenant: TenantConfig) -> Limit:
    return tenant.budget.limit


class Tenancy:
    """Tenants' configs, usage and policy rules: admission, holds, metering and administration."""

    def __init__(self, config: KernelConfig, models: Models, kv: KVManager, accounts: Accounts,
                 gpus: Sequence[Gpu], tasks: Mapping[int, Task], records: tuple[AuditLog, BillBook], host: Host):
        self.tenants: dict[str, TenantConfig] = {}
        self.usage: dict[str, TenantUsage] = {}
        self.rules: list[Rule] = []
        self._config, self._models, self._kv, self._accounts = config, models, kv, accounts
        self._gpus, self._tasks, self._host = gpus, tasks, host
        self._audit, self._bills = records
        for tenant in config.tenants:
            self.install(tenant)

    def config_of(self, name: str) -> TenantConfig | None:
        """Tenant `name`'s config, or None if there is no such tenant."""
        return self.tenants.get(name)

    def usage_of(self, name: str) -> TenantUsage:
        """What tenant `name` holds and has used."""
        return self.usage[name]

    def tenant_of(self, spec: TaskSpec, parent: Task | None) -> str:
        """The tenant a submit runs in: its parent's, else its own, else `default`."""
        return parent.tenant if parent else spec.tenant or "default"

    # -- admission ----------------------------------------------------------------------

    def admit(self, event: ev.Event, now_us: int, batch: dict[str, tuple[int, int]] | None,
              elsewhere: Mapping[str, Elsewhere], on_this_node: bool = True) -> ev.Event:
        """For a submit, the policy, sandbox, quota and budget (counting the tenant's use `elsewhere` in the
        cluster; its KV-page quota, in this node's pages, only `on_this_node`); for a prio change, the policy;
        the event to journal."""
        if isinstance(event, ev.Control) and event.command.verb == "prio":
            self._check_prio_policy(event, now_us)
        if not isinstance(event, ev.Submit):
            return event
        event = self._apply_policy(event, now_us)
        tenant = self.tenants[self.tenant_of(event.spec, self._tasks.get(event.spec.parent or 0))]
        held = self._check_sandbox_and_quota(event.spec, tenant, now_us, batch or {},
                                             elsewhere.get(tenant.name) or Elsewhere())
        if on_this_node:
            self._check_kv_quota(event.spec, tenant)
        if batch is not None:
            batch[tenant.name] = held
        return event

    def _apply_policy(self, event: ev.Submit, now_us: int) -> ev.Submit:
        spec = event.spec
        temperature = spec.sampling.temperature if spec.sampling else None
        decision = self._decide(self.tenant_of(spec, self._tasks.get(spec.parent or 0)), self._models.name_of(spec),
                                spec.max_tokens, spec.prio, event.uid, now_us, temperature)
        if not decision.allowed:
            raise Denied(decision.reason)
        if (decision.max_tokens, decision.prio, decision.temperature) == (spec.max_tokens, spec.prio, temperature):
            return event
        note = (f"policy rule {decision.rule} ({decision.text}): max_tokens {spec.max_tokens} -> "
                f"{decision.max_tokens}, prio {spec.prio} -> {decision.prio}")
        if decision.temperature != temperature:
            note += f", temperature {_shown_temperature(temperature)} -> {_shown_temperature(decision.temperature)}"
            spec = attrs.evolve(spec, sampling=attrs.evolve(spec.sampling or Sampling(), temperature=decision.temperature))
        return attrs.evolve(event, spec=attrs.evolve(spec, max_tokens=decision.max_tokens, prio=decision.prio),
                            note=note)

    def _check_prio_policy(self, event: ev.Control, now_us: int) -> None:
        """Refuse a prio change that a deny rule matches or that is over a limit rule's max_prio."""
        task, prio = self._tasks[event.pid], int(event.command.arg or 0)
        decision = self._decide(task.tenant, task.model, task.spec.max_tokens, prio, event.uid, now_us)
        if not decision.allowed:
            raise Denied(f"prio {prio} {decision.reason}")
        if decision.prio < prio:
            raise Denied(f"prio {prio} is over max_prio={decision.prio} of policy rule {decision.rule}: {decision.text}")

    def _decide(self, tenant: str, model: str, tokens: int, prio: int, uid: int, now_us: int,
                temperature: float | None = None) -> Decision:
        """The policy's Decision on a request with these values, at `now_us`."""
        return evaluate(self.rules, Request(tenant=tenant, model=model, tokens=tokens, prio=prio, uid=uid,
                                            minute=self._minute(now_us), temperature=temperature))

    def _minute(self, now_us: int) -> int:
        return (now_us // MINUTE_US + self._config.utc_offset_s // 60) % 1440

    def _check_sandbox_and_quota(self, spec: TaskSpec, tenant: TenantConfig, now_us: int,
                                 batch: dict[str, tuple[int, int]], other: Elsewhere) -> tuple[int, int]:
        """Refuse what the tenant's sandbox or its quotas of tasks and tokens and its budget forbid, here and on
        `other` nodes; (tasks, tokens) this batch then holds."""
        box, model = tenant.sandbox, self._models.name_of(spec)
        if box.models and model not in box.models:
            raise Denied(f"tenant {tenant.name}'s sandbox allows models {', '.join(box.models)}, not {model}")
        if box.max_tokens is not None and spec.max_tokens > box.max_tokens:
            raise Invalid(f"max_tokens {spec.max_tokens} is over tenant {tenant.name}'s sandbox limit {box.max_tokens}")
        tasks, tokens = batch.get(tenant.name, (0, 0))
        usage, want = self.usage[tenant.name], estimate_prompt_tokens(spec.prompt) + spec.max_tokens
        live, there = usage.live + tasks + other.live, f" ({other.live} on other nodes)" if other.live else ""
        if tenant.quota.tasks is not None and live >= tenant.quota.tasks:
            raise OverQuota(f"tenant {tenant.name} has {live} live tasks{there}; its quota allows {tenant.quota.tasks}")
        for name, ledger, limit in (("quota", usage.quota, quota_limit(tenant)),
                                    ("budget", usage.budget, budget_limit(tenant))):
            away = other.reserved + other.used(name, limit, now_us)
            why = ledger.refusal(limit, now_us, usage.reserved + tokens + away, want)
            if why:
                there = f" (of the reserved, {away} are used or reserved on other nodes)" if away else ""
                raise OverQuota(f"tenant {tenant.name} token {name}: {why}{there}")
        return tasks + 1, tokens + want

    def _check_kv_quota(self, spec: TaskSpec, tenant: TenantConfig) -> None:
        need, limit = self._kv.admit_pages(spec, self._models[self._models.name_of(spec)]), tenant.quota.kv_pages
        if limit is not None and need > limit:
            raise OverQuota(f"the task may need {need} KV pages; tenant {tenant.name}'s kv_pages quota is {limit}")

    # -- what admission leaves behind ------------------------------------------------------

    def admitted(self, task: Task, note: str) -> int | None:
        """Count the new task against its tenant, saying so if it borrows against the budget;
        the deadline its tenant's sandbox max_wall sets, if any."""
        if task.tenant not in self.tenants:
            self._restore_tenant(task.tenant)
        tenant, usage, host = self.tenants[task.tenant], self.usage[task.tenant], self._host
        want = task.tokens_in + task.spec.max_tokens - task.tokens_out  # an adopted task may have some already
        self._borrowing(task, usage, want, f"{want} asked")
        usage.live += 1
        usage.reserved += want
        if note:
            host.emit("limit", task, note)
        return None if tenant.sandbox.max_wall is None else host.now_us + tenant.sandbox.max_wall * 1_000_000

    def _borrowing(self, task: Task, usage: TenantUsage, want: int, why: str) -> None:
        """An `overdraw` line, counted, if the task's tenant borrows against its budget with `want` more."""
        limit = budget_limit(self.tenants[task.tenant])
        if want > 0 and usage.budget.overdrawn(limit, self._host.now_us, usage.reserved, want):
            usage.overdraws += 1
            self._host.emit("overdraw", task, f"tenant {task.tenant} borrows against its budget: "
                                              f"{usage.budget.used} used, {usage.reserved} reserved, {why}")

    def _restore_tenant(self, name: str) -> None:
        """A journaled task's tenant that the config no longer has (a restart after the config
        changed): it comes back with default settings, so no task is lost, and the trace says so."""
        self.install(TenantConfig(name=name))
        self._accounts.set_tenant(name, self.tenants[name].weight)
        self._host.emit("tenant", None, f"{name}: restored with default settings: the journal has its tasks, the config not")

    def install(self, tenant: TenantConfig) -> None:
        """Make `tenant` the config of its name; its usage record is kept, or made."""
        self.tenants[tenant.name] = tenant
        self.usage.setdefault(tenant.name, TenantUsage())

    def gone(self, task: Task) -> None:
        """An exited task releases what it had reserved and no longer counts as live."""
        usage = self.usage[task.tenant]
        unserved = task.spec.max_tokens - task.tokens_out + (task.tokens_in if task.started_us is None else 0)
        usage.reserved -= unserved
        usage.live -= 1

    # -- holds (GPU-slot and KV-page quotas) ----------------------------------------------------

    def held_back(self, task: Task) -> bool:
        """Hold the queue's head back if its tenant is at its gpu or kv_pages quota."""
        quota = self.tenants[task.tenant].quota
        if quota.gpu is None and quota.kv_pages is None:
            return False
        why = self._hold_reason(task, quota)
        if why is None:
            return False
        self._host.unqueue(task)
        held = self.usage[task.tenant].held
        if not held:
            self._host.emit("hold", task, why)
        held.append(task)
        return True

    def _hold_reason(self, task: Task, quota: Quota) -> str | None:
        running = self._accounts.tenants[task.tenant].running
        if quota.gpu is not None:
            cap = max(1, sum(g.config.slots for g in self._gpus) * quota.gpu // 100)
            if running >= cap:
                return f"tenant {task.tenant} runs {running} of the {cap} batch slots its gpu quota ({quota.gpu}%) allows"
        if quota.kv_pages is not None and running:
            held = sum(t.kv_pages for g in self._gpus for t in g.running.values() if t.tenant == task.tenant)
            need = self._kv.admit_pages(task.spec, self._models[task.model])
            if held + need > quota.kv_pages:
                return f"tenant {task.tenant} holds {held} KV pages, the task may need {need}; its quota is {quota.kv_pages}"
        return None

    def release_held(self, tenant: str) -> None:
        """Its held tasks back to the run queue: one of its tasks left a GPU, or its quota changed."""
        usage = self.usage.get(tenant)
        if usage is None or not usage.held:
            return
        held, usage.held = usage.held, []
        for task in held:
            if task.runnable:
                self._host.queue(task)

    # -- metering --------------------------------------------------------------------------------

    def meter_start(self, task: Task) -> None:
        """A segment begins; the first one charges the prompt's tokens."""
        now = self._host.now_us
        task.meter = meter = Meter(now, now, now)  # start, mark, last
        if task.started_us is None:
            task.started_us, meter.tokens_in = now, task.tokens_in
            self._charge_tokens(task, task.tokens_in).tokens_in += task.tokens_in

    def meter_serve(self, task: Task, chunk: ev.Chunk) -> None:
        """Charge a chunk's tokens (task.tokens_out counts them already), and the prompt if the engine counts it."""
        meter, now = task.meter, self._host.now_us
        assert meter is not None, "a served task is metered from its dispatch"
        meter.advance(now, task.kv_pages)
        meter.last_us = now
        meter.tokens_out += chunk.tokens
        self._charge_tokens(task, chunk.tokens).tokens_out += chunk.tokens
        if chunk.prefill and task.prompt_estimated:  # the engine's first count of the task's prompt
            self._count_prompt(task, meter, chunk.prefill - (task.tokens_out - meter.tokens_out))

    def _count_prompt(self, task: Task, meter: Meter, counted: int) -> None:
        """Bill and charge in this segment the engine's count of the prompt less the estimate charged (or refund)."""
        counted, task.prompt_estimated, task.placed_prompt = max(1, counted), False, None  # at least 1: BOS
        more, task.tokens_in = counted - task.tokens_in, counted
        self._borrowing(task, self.usage[task.tenant], more, f"the engine counted {more} prompt tokens more")
        meter.tokens_in += more
        self._charge_tokens(task, more, reserved=0).tokens_in += more

    def _charge_tokens(self, task: Task, tokens: int, reserved: int | None = None) -> TenantUsage:
        """Charge the quota and budget ledgers `tokens` (below 0: give back a prompt's estimate, charged at the
        task's first dispatch, in the windows of that charge only), `reserved` of them (default all) reserved."""
        usage, tenant, now = self.usage[task.tenant], self.tenants[task.tenant], self._host.now_us
        usage.quota.charge(quota_limit(tenant), now, tokens, task.started_us)
        usage.budget.charge(budget_limit(tenant), now, tokens, task.started_us)
        usage.reserved -= tokens if reserved is None else reserved
        return usage

    def meter_end(self, task: Task, end_us: int | None = None) -> None:
        """Book the segment (up to `end_us`, default now) and trace its `bill` line."""
        meter, task.meter, now = task.meter, None, self._host.now_us
        assert meter is not None, "a task on a GPU is metered"
        end = now if end_us is None else end_us
        meter.advance(end, task.kv_pages)
        usage = segment_usage(meter, end)
        self._bills.book(now, task.tenant, task.model, usage)
        self._host.emit("bill", task, usage.detail(), task.gpu)

    # -- tenant administration -------------------------------------------------------------------

    def check_set(self, event: ev.SetTenant) -> None:
        name, adding = event.tenant.name, event.what.startswith("add ")
        if adding:
            check_new_name(name)
            if name in self.tenants:
                raise Exists(f"tenant {name} exists: change it through /tenants/{name}/")
        elif name not in self.tenants:
            raise NotFound(f"unknown tenant {name!r}")

    def check_remove(self, event: ev.RemoveTenant) -> None:
        if event.name not in self.tenants:
            raise NotFound(f"unknown tenant {event.name!r}")
        if event.name == "default":
            raise Busy("tenant default cannot be removed (callers in no tenant land there)")
        if self.usage[event.name].live:
            raise Busy(f"tenant {event.name} has {self.usage[event.name].live} live tasks; kill them first")

    def check_rules(self, event: ev.SetRules) -> None:
        for number, text in enumerate(event.rules, 1):
            try:
                parse_rule(text)
            except Invalid as exc:
                raise Invalid(f"rule {number}: {exc.reason}") from None

    def set(self, event: ev.SetTenant) -> None:
        tenant = event.tenant
        self.install(tenant)
        self._accounts.set_tenant(tenant.name, tenant.weight)
        self._audit.record(self._host.now_us, event, "tenant", "ok", f"{tenant.name}: {event.what}")
        self._host.emit("tenant", None, f"{tenant.name}: {event.what} by uid {event.uid}")
        self.release_held(tenant.name)

    def remove(self, event: ev.RemoveTenant) -> None:
        del self.tenants[event.name]
        self._accounts.remove_tenant(event.name)
        self._audit.record(self._host.now_us, event, "tenant", "ok", f"remove {event.name}")
        self._host.emit("tenant", None, f"remove {event.name} by uid {event.uid}")
        self._host.forget_tenant(event.name)

    def set_rules(self, event: ev.SetRules) -> None:
        rules = [parse_rule(text) for text in event.rules]
        if event.replace or not isinstance(self.rules, list):  # a snapshot of an older layout holds a tuple
            self.rules = [] if event.replace else list(self.rules)
        self.rules.extend(rules)  # in place: a write of N rules, one SetRules per line, costs O(N), not O(N^2)
        verb = "replace with" if event.replace else "append"
        detail = f"{verb} {len(rules)} rule(s): " + "; ".join(r.text for r in rules)
        self._audit.record(self._host.now_us, event, "policy", "ok", detail)
        self._host.emit("policy_rules", None, f"{detail} by uid {event.uid}")

    def index_problems(self, live: list[Task]) -> Iterator[str]:
        """What disagrees between the usage records and the tasks (for invariants.py): a tenant's live count and reserved tokens are its live tasks'; held tasks are its own."""
        tenants, usages = self.tenants, self.usage
        want = {name: [0, 0] for name in usages}
        for task in live:
            unserved = task.spec.max_tokens - task.tokens_out + (task.tokens_in if task.started_us is None else 0)
            tenant = want.setdefault(task.tenant, [0, 0])
            tenant[0], tenant[1] = tenant[0] + 1, tenant[1] + unserved
            if task.tenant not in tenants or task.tenant not in usages:
                yield f"task {task.pid}: live in tenant {task.tenant}, which does not exist or has no usage"
        for name, usage in usages.items():
            if [usage.live, usage.reserved] != want[name]:
                yield f"tenant {name}: live {usage.live}, reserved {usage.reserved}; its tasks' are {want[name]}"
            if any(task.tenant != name for task in usage.held):
                yield f"tenant {name}: holds another tenant's task"
