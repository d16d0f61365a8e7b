"""/sched/{policy,runqueue,stat}: the scheduler's policy knob, its entities and counters."""
from ..kernel.counters import Counters, TenantCounts
from ..kernel.events import SetPolicy
from .ctl import run_lines


def policy(kernel) -> str:
    return kernel.runq.name + "\n"


def set_policy(rt):
    """Writes mirror reads: `echo vtc > /sched/policy`."""
    return lambda lines, caller: run_lines(
        rt, lines, caller,
        lambda line, c: SetPolicy(policy=line.strip(), uid=c.uid, caller_pid=c.pid, caller_tenant=c.tenant))


def runqueue(kernel, view: str | None = None) -> str:
    """Tenants, then active agents: entity, counter, weight, state (running | queued | idle); of tenant `view`
    only, unless None (an admin's: every tenant's). An active agent has live tasks: a tenant's are read off the
    index of its live pids."""
    accounts = kernel.accounts
    live = kernel.tasks.live_pids.by_tenant
    agents = None if view is None else {kernel.tasks[pid].agent for pid in live.get(view, ())}
    rows = [(f"tenant/{t.name}", t) for t in accounts.tenants.values() if view in (None, t.name)]
    rows += [(f"agent/{a.name}", a) for pid, a in accounts.agents.items()
             if a.active and (agents is None or pid in agents)]
    return "entity counter weight state\n" + "".join(
        f"{name} {e.counter:.1f} {e.weight} {e.state}\n" for name, e in rows)


def stat(kernel, view: str | None = None) -> str:
    """Flat keyed, cgroup style: the policy, then the counts of tenant `view`'s tasks and scheduling acts only,
    unless None (an admin's: every tenant's); "" (a caller of no role) counts none."""
    queued, running, acts = _counts(kernel, view)
    rows = [("policy", kernel.runq.name), ("queued", queued), ("running", running), ("decisions", acts.dispatched),
            ("preemptions", acts.preempted), ("fair_preemptions", acts.fair_preemptions),
            ("lifts", acts.lifts), ("deadline_boosts", acts.boosts)]
    return "".join(f"{k} {v}\n" for k, v in rows)


def _counts(kernel, view: str | None) -> tuple[int, int, Counters | TenantCounts]:
    """(tasks in the run queue, tasks running, scheduling acts) of tenant `view`, or of all if None."""
    if view is None:
        return len(kernel.runq), sum(len(g.running) for g in kernel.gpus), kernel.counters
    tenant = kernel.accounts.tenants.get(view)
    running = tenant.running if tenant is not None else 0
    return kernel.runq.queued_of(view), running, kernel.counters.share(view)
