"""Tiers 1-2: no cross-tenant glimpses: trace views name no other tenant, and the kernel may not
cache another tenant's task for a caller.

A fair preemption's line names the tenant and pid it made room for; in the preempted
task's and its tenant's views those read "another tenant". Through FUSE, once not every
caller sees every task, a task's names are answered with an entry timeout of 0. The same
on a live mount, as two tenants' Unix users, is test_isolation_mount.py.
"""
import csv
import io

import attrs

from apeinxfs import fs
from apeinxfs.kernel.config import AccessConfig
from apeinxfs.kernel.events import SetTenant
from apeinxfs.kernel.task import State
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.kernel.trace import TraceLog
from test_fairness_kernel import kernel, submit
from test_fs_ops import ROOT, ctx, inode_of, ops  # noqa: F401 (ops is a fixture)
from test_fs_ops import submit as submit_task
from test_kernel import STEP_US, step


def details(view: bytes) -> list[str]:
    return [row["detail"] for row in csv.DictReader(io.StringIO(view.decode()))]


def preempted_for_another_tenant():
    """Tenant a holds both slots until b's task arrives and one of a's is preempted: (kernel, a's victim, b's pid)."""
    k = kernel(slots=2, min_run=2)
    first, second = submit(k, "a", tokens=100), submit(k, "a", tokens=100)
    late = submit(k, "b", tokens=100)
    now = STEP_US
    while k.tasks[late].state is not State.RUNNING:
        step(k, now)
        now += STEP_US
    victim = first if k.tasks[first].state is State.PREEMPTED else second
    return k, victim, late


def test_a_fair_preemption_names_the_other_tenant_only_in_the_whole_trace():
    """The whole trace says `ahead of b ... pid N`; the victim's and tenant a's views say "another tenant"."""
    k, victim, late = preempted_for_another_tenant()
    whole = [d for d in details(k.trace.buffer) if "is ahead of" in d]
    assert len(whole) == 1 and "tenant a " in whole[0] and " b (" in whole[0] and f"pid {late}" in whole[0]
    for view in (k.trace.of_task(k.tasks[victim]), k.trace.of_tenant("a")):
        line = next(d for d in details(view) if "is ahead of" in d)
        assert "tenant a " in line and "ahead of another tenant (" in line
        assert "waiting with another tenant's task" in line
        assert " b " not in line and " b (" not in line and str(late) not in line.split(";")[0]


def test_own_pids_and_tenant_stay_named_in_a_tenants_view():
    """A kv-full line about a pid of the same tenant keeps the pid; the tenant's own name stays."""
    trace = TraceLog("n", tasks={})
    own = _Task(1, "a")
    other = _Task(2, "b")
    trace.tasks.update({1: own, 2: other})
    trace.emit(0, "submit", other, "name=x")
    trace.emit(0, "preempt", own, "kv-full: pid 1 needs a page; tenant a; pid 2 of b; pid=2 and bobby and (b)")
    line = details(trace.of_task(own))[0]
    assert line == ("kv-full: pid 1 needs a page; tenant a; another tenant's task of another tenant; "
                    "another tenant's task and bobby and (another tenant)")


class _Task:
    """What the trace reads of a task."""

    def __init__(self, pid: int, tenant: str):
        self.pid, self.tenant, self.model, self.trace_last = pid, tenant, "sim", 0


async def test_with_two_tenants_a_tasks_names_are_never_cached_by_the_kernel(ops):
    """A task's directory and files, seen by some callers only, get entry timeout 0 once a second tenant exists."""
    pid = submit_task(ops.rt)
    tasks = await inode_of(ops, "/tasks")
    assert (await ops.lookup(tasks, str(pid).encode(), ctx())).entry_timeout == fs.ATTR_TIMEOUT_S  # all see all
    ops.rt.commit([SetTenant(tenant=TenantConfig("b", members={"uids": (1002,)}), what="add b")])
    task = await ops.lookup(tasks, str(pid).encode(), ctx())
    status = await ops.lookup(task.st_ino, b"status", ctx())
    tenant = await ops.lookup(await inode_of(ops, "/tenants"), b"default", ctx())
    assert task.entry_timeout == status.entry_timeout == tenant.entry_timeout == 0
    assert (await ops.lookup(ROOT, b"ctl", ctx())).entry_timeout == fs.STATIC_S  # seen by all: cached


def test_only_one_tenant_everyone_may_see_lets_the_kernel_cache_task_names(ops):
    """One tenant, default, shared by unmapped users or viewers: all see all; not so with role none or two tenants."""
    assert ops.all_see_all()
    ops.rt.kernel.config = attrs.evolve(ops.rt.kernel.config, access=AccessConfig(unmapped="none"))
    assert not ops.all_see_all()
