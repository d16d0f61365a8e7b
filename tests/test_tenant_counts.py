"""Tiers 1-2: the counts of sched/stat and memory/gpuN/pool, and the pids of nodes/NAME/tasks, a non-admin reads
are its own tenant's.

Tenant a holds both slots of one GPU until b's task arrives and one of a's is fair-preempted
(test_isolation.preempted_for_another_tenant): each tenant's view counts its own tasks and
scheduling acts, an admin's all of them, a caller of no role none. Through FUSE each view is
a file at an inode of its own (views.py), as sched/runqueue's are; a cluster node's tasks file reads the
tenant's live key of that node. The same on a live mount, as Unix users, is in test_tenants_mount.py.
"""
import os
import typing

import attrs
import pytest

from apeinxfs.cluster.etcd_records import Event
from apeinxfs.cluster.records import MAX_RANGES, live_ranges, scan, tenant_live_ranges
from apeinxfs.kernel.counters import Act, Counters, TenantCounts
from apeinxfs.kernel.events import Kill, RemoveTenant, SetTenant
from apeinxfs.kernel.invariants import InvariantError
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.nodes import memory, sched
from apeinxfs.nodes.members import tasks as tasks_text
from apeinxfs.nodes.tree import Tree
from test_cluster_view import kv, record
from test_journal_runtime import open_runtime, submit
from test_fs_ops import ROOT_CTX, add_tenant, ctx, inode_of, open_path, ops, read_all  # noqa: F401 (ops is a fixture)
from test_fairness_kernel import kernel, submit as submit_to
from test_isolation import preempted_for_another_tenant
from test_nodes import resolve
from test_shared_settings import node


def keyed(text: str) -> dict[str, str]:
    return dict(line.split() for line in text.splitlines())


def test_each_tenant_reads_its_own_scheduling_counts_and_an_admin_all():
    """a (two dispatches, one fair preemption, one task queued again) and b (one dispatch) each read their own
    counts in sched/stat; an admin reads their sums."""
    k, _victim, _late = preempted_for_another_tenant()
    a, b, every = keyed(sched.stat(k, "a")), keyed(sched.stat(k, "b")), keyed(sched.stat(k))
    acts = ("running", "queued", "decisions", "preemptions", "fair_preemptions")
    assert [a[key] for key in acts] == ["1", "1", "2", "1", "1"]
    assert [b[key] for key in acts] == ["1", "0", "1", "0", "0"]
    for key in ("running", "queued", "decisions", "preemptions", "fair_preemptions", "lifts", "deadline_boosts"):
        assert int(every[key]) == int(a[key]) + int(b[key]), key
    assert a["policy"] == b["policy"] == every["policy"] == "fair"


def test_a_caller_of_no_role_reads_the_policy_and_zeros():
    """The view of no tenant ("") keeps the policy and counts nothing, whatever runs."""
    k, _victim, _late = preempted_for_another_tenant()
    none = keyed(sched.stat(k, ""))
    assert none.pop("policy") == "fair" and set(none.values()) == {"0"} and len(none) == 7


def test_a_removed_tenants_counts_are_forgotten():
    """Once tenant b is removed (its tasks gone) its share moves to the unshared counts, the shares and those
    still adding up to the totals; added again, its view counts from zero."""
    k, _victim, late = preempted_for_another_tenant()
    k.apply(Kill(pid=late, uid=0), 1)
    k.apply(RemoveTenant(name="b"), 2)
    assert "b" not in k.counters.tenants and k.counters.unshared == TenantCounts(dispatched=1)
    k.check_invariants()
    k.apply(SetTenant(tenant=TenantConfig("b"), what="add b"), 3)
    assert keyed(sched.stat(k, "b"))["decisions"] == "0"


def test_an_act_counted_is_in_the_total_and_the_tenants_share_at_once():
    """Counters.count adds one to the total and to the tenant's share, made at its first act."""
    counters = Counters()
    counters.count("a", "lifts")
    counters.count("a", "lifts")
    counters.count("b", "boosts")
    assert (counters.lifts, counters.boosts) == (2, 1) and counters.index_problems() == []
    assert counters.tenants == {"a": TenantCounts(lifts=2), "b": TenantCounts(boosts=1)}


def test_every_act_is_a_field_of_the_totals_and_of_a_tenants_share():
    """Each name Counters.count takes (Act) is a counter of both Counters and TenantCounts."""
    acts = set(typing.get_args(Act))
    assert acts <= {f.name for f in attrs.fields(Counters)} and acts == {f.name for f in attrs.fields(TenantCounts)}


def test_counts_that_do_not_add_up_are_an_invariant_broken():
    """A dispatch counted in a tenant's share but not in the total, or in the total but in no share, is named."""
    k, _victim, _late = preempted_for_another_tenant()
    assert k.counters.index_problems() == []
    k.counters.tenants["a"].dispatched += 1
    assert k.counters.index_problems() == ["counters: the tenants' dispatched and the unshared add up to 4, "
                                           "the total is 3"]
    k.counters.tenants["a"].dispatched -= 2
    with pytest.raises(InvariantError, match="add up to 2, the total is 3"):
        k.check_invariants()


def test_the_queued_tasks_counted_by_tenant_are_checked():
    """sched/stat's queued count of a tenant is the run queue's count by tenant, kept as tasks come and go and
    checked against the queue: a wrong count is an invariant broken."""
    k, _victim, _late = preempted_for_another_tenant()
    assert k.runq._tenants == {"a": 1} and keyed(sched.stat(k, "a"))["queued"] == "1"
    k.runq._tenants["b"] = 1
    with pytest.raises(InvariantError, match=r"by tenant \{'a': 1, 'b': 1\} are not the queue's \{'a': 1\}"):
        k.check_invariants()


def test_each_tenant_reads_its_own_tasks_on_a_gpu_pool_and_its_kv_totals_as_all():
    """gpu0/pool's `tasks` counts the reader's tenant's running tasks (none for no role), every other field
    (pages, capacity, engine figures) is the same for every caller."""
    k, _victim, _late = preempted_for_another_tenant()
    views = {view: keyed(memory.pool(k, 0, view)) for view in (None, "a", "b", "")}
    assert [views[view]["tasks"] for view in (None, "a", "b", "")] == ["2", "1", "1", "0"]
    for view in views.values():
        del view["tasks"]
    assert views["a"] == views["b"] == views[""] == views[None]


@pytest.mark.parametrize("path", ["/sched/stat", "/memory/gpu0/pool", "/nodes/local/tasks"])
async def test_a_users_view_of_the_counts_is_its_own_file(ops, path):
    """A user of tenant a and an admin reach `path` at different inodes; with a task of tenant default running,
    the admin's counts (or lists) it, a's view does not, and getattr of each gives its own view's size."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR, caller=ROOT_CTX)
    await ops.write(fh, 0, b"job 10 5\n")
    await ops.release(fh)
    admin_inode, user_inode = await inode_of(ops, path, ROOT_CTX), await inode_of(ops, path)
    assert admin_inode != user_inode
    admin_fh, user_fh = await open_path(ops, path, caller=ROOT_CTX), await open_path(ops, path)
    every, own = (await read_all(ops, admin_fh)).decode(), (await read_all(ops, user_fh)).decode()
    if path.endswith("/tasks"):
        assert (every, own) == ("1\n", "")
    else:
        busy = "tasks" if path.endswith("pool") else "running"
        assert keyed(every)[busy] == "1" and keyed(own)[busy] == "0"
    for inode, fh in ((admin_inode, admin_fh), (user_inode, user_fh)):
        assert (await ops.getattr(inode, ROOT_CTX)).st_size == len(await read_all(ops, fh))
        await ops.release(fh)


def test_a_single_nodes_tasks_file_shows_a_tenant_its_own_live_pids(tmp_path):
    """/nodes/local/tasks of a single node lists to tenant a its own live pids, to b (none live) and to a
    caller of no role nothing, to an admin every tenant's."""
    with open_runtime(tmp_path) as rt:
        rt.commit([SetTenant(tenant=TenantConfig(name), what=f"add {name}") for name in "ab"])
        mine, others = submit(rt, tenant="a"), submit(rt)
        tasks = resolve(Tree(rt), "/nodes/local/tasks")
        assert [render(tasks, view) for view in (None, "a", "b", "")] == [f"{mine}\n{others}\n", f"{mine}\n", "", ""]


@pytest.mark.invariants_every(0)  # 20,001 submits: checked once, at the end
def test_a_tenants_live_pids_on_a_single_node_are_not_cut_by_another_tenants():
    """Tenant a's MAX_RANGES scattered pids (every other pid, b's MAX_RANGES between) fill the ranges the tenants
    share (a cluster's live keys, `scan`), b's and c's listed not at all, though an admin's lists every pid (all of
    them one range); on a single node (tasks_seen with a tenant) b reads all its own, and c its one task."""
    k = kernel(slots=2)
    k.apply(SetTenant(tenant=TenantConfig("c"), what="add c"), 0)
    theirs = [submit_to(k, "ab"[i % 2], tokens=5) for i in range(2 * MAX_RANGES)]
    mine = submit_to(k, "c", tokens=5)
    assert set(scan(k)[1]) == {"a"} and tasks_text(live_ranges(k)).split()[-1] == str(mine)
    assert tenant_live_ranges(k, "c") == str(mine)
    assert tasks_text(tenant_live_ranges(k, "b")).split() == [str(pid) for pid in theirs[1::2]]
    k.check_invariants()


def test_a_cluster_nodes_tasks_file_shows_a_tenant_its_own_live_key(tmp_path):
    """/nodes/b/tasks of tenant u lists the pids of b's live key of u, of a caller of no role none, an admin's
    every tenant's; tenant t, with no live key on b, reads none, and once b has no live key, nor b's older
    record's tenant t's pids, as that record splits them by tenant."""
    rt = node(tmp_path)
    view = rt.cluster.view
    view.apply(Event("PUT", kv(view.keys.node("b"), record("b", tasks="3,5", tenants={"t": "3"}).to_json(), 2), None))
    for tenant, pids in [("u", b"8-9"), ("v", b"7,10")]:
        view.apply(Event("PUT", kv(view.keys.live("b", tenant), pids, 3), None))
    tasks = resolve(Tree(rt), "/nodes/b/tasks")
    assert [render(tasks, view) for view in (None, "u", "t", "")] == ["7\n8\n9\n10\n", "8\n9\n", "", ""]
    for tenant in "uv":
        view.apply(Event("DELETE", kv(view.keys.live("b", tenant), b"", 4), None))
    assert [render(tasks, view) for view in (None, "u", "t", "")] == ["3\n5\n", "", "3\n", ""]


def render(file, view: str | None) -> str:
    """`file` as the view of tenant `view` renders it (None: an admin's)."""
    return attrs.evolve(file, view=view).render().decode()
