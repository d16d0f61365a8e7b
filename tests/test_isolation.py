"""Tiers 1-2: no cross-tenant glimpses: trace views name no other tenant, and the kernel may not
cache another tenant's task for a caller.

A fair preemption's line names the tenant and pid it made room for; in the preempted
task's and its tenant's views those read "another tenant". Through FUSE, a node that only
some callers see is answered with entry and attribute timeouts of 0. The same on a live
mount, as two tenants' Unix users, is test_isolation_mount.py.
"""
import csv
import io

from apeinxfs.kernel.task import State
from apeinxfs.kernel.trace import TraceLog
from test_fairness_kernel import kernel, submit
from test_fs_ops import ctx, inode_of, ops  # noqa: F401 (ops is a fixture)
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


async def test_tenant_nodes_are_never_cached_by_the_kernel(ops):
    """A task's directory and files, seen by some callers only, get entry and attr timeouts of 0."""
    pid = submit_task(ops.rt)
    tasks = await inode_of(ops, "/tasks")
    task = await ops.lookup(tasks, str(pid).encode(), ctx())
    status = await ops.lookup(task.st_ino, b"status", ctx())
    again = await ops.getattr(task.st_ino, ctx())
    assert task.entry_timeout == task.attr_timeout == status.entry_timeout == status.attr_timeout == 0
    assert again.attr_timeout == 0
    listing = await ops.lookup(await inode_of(ops, "/tenants"), b"default", ctx())
    assert listing.entry_timeout == listing.attr_timeout == 0
