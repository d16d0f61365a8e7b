"""Tier 1-2: Kernel.check_invariants (kernel/invariants.py), the removed-tenant drift, and the
daemon's `daemon.check_invariants` key.

Each invariant is shown able to fail: a kernel mid-workload passes, then one redundant index
is corrupted by hand and the check names it. (The suite itself runs the check after every
event: see conftest.py's kernel_invariants.)
"""
import pytest

from apeinxfs import config as config_mod
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Control, RemoveTenant, SetTenant, Submit
from apeinxfs.kernel.invariants import InvariantError
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.task import State
from apeinxfs.kernel.tenant_config import Quota, TenantConfig
from apeinxfs.nodes import sched
from test_journal_runtime import open_runtime
from test_kernel import step

PROMPT = "one two three four five six seven eight nine ten eleven twelve"  # two shared blocks of 8 tokens


def busy_kernel() -> Kernel:
    """Two tenants, a parent with children, tasks running (with shared prefix blocks) and queued."""
    kernel = Kernel(KernelConfig(models=[ModelConfig(name="sim")], page_mib=1,
                                 gpus=[GpuConfig(index=0, kv_mib=64, slots=2)],
                                 tenants=[TenantConfig("default"), TenantConfig("b", weight=300)]))
    root = submit(kernel, prompt=PROMPT)
    for tenant in ("default", "b", "b"):
        submit(kernel, tenant=tenant, prompt=PROMPT, deadline_us=60_000_000)
    submit(kernel, parent=root)
    step(kernel, 20_000)
    return kernel


def submit(kernel, tenant=None, **spec) -> int:
    event = Submit(spec=TaskSpec(name="job", max_tokens=8, tenant=tenant, **spec), uid=1000)
    kernel.check(event)
    return kernel.apply(event, 0)


def queued(kernel):
    return next(t for t in kernel.tasks.values() if t.state is State.QUEUED)


def running(kernel):
    return next(t for t in kernel.tasks.values() if t.state is State.RUNNING)


CORRUPTIONS = {
    "state counts": lambda k: k.tasks.state_counts.__setitem__(State.QUEUED, 99),
    "run queue": lambda k: k.runq.remove(queued(k)),
    "GPU batches": lambda k: k.gpus[0].running.pop(running(k).pid),
    "preemptible": lambda k: k.reclaim.preemptible.__setitem__(queued(k).pid, queued(k)),
    "pages used": lambda k: k.kv.pools[0].alloc(1),
    "prefix block refcounts": lambda k: k.kv.caches[0].hold(running(k).kv_blocks[0]),
    "tenant counts": lambda k: setattr(k.accounts.tenants["b"], "runnable", 7),
    "active weight": lambda k: setattr(k.accounts, "active_weight", 1),
    "reserved": lambda k: setattr(k.tenancy.usage["b"], "reserved", 0),
    "child": lambda k: k.tasks[1].children.append(3),
    "deadline heap": lambda k: k.tasks._deadlines.clear(),
    "scheduler tenants": lambda k: k.accounts.set_tenant("ghost", 100),
}


def test_a_busy_kernel_keeps_its_books():
    """A kernel with running, queued, child and deadline tasks over two tenants passes the check."""
    kernel = busy_kernel()
    assert {State.RUNNING, State.QUEUED} <= {t.state for t in kernel.tasks.values()}
    kernel.check_invariants()


@pytest.mark.parametrize("broken", sorted(CORRUPTIONS))
def test_each_corrupted_index_is_named(broken):
    """One redundant index corrupted by hand makes check_invariants raise, naming it."""
    kernel = busy_kernel()
    CORRUPTIONS[broken](kernel)
    with pytest.raises(InvariantError, match=broken):
        kernel.check_invariants()


def test_a_removed_tenant_is_gone_from_the_runqueue():
    """RemoveTenant takes the tenant out of the scheduler's accounts, so /sched/runqueue no longer lists it."""
    kernel = busy_kernel()
    kernel.apply(SetTenant(tenant=TenantConfig("gone", weight=50), what="add gone weight=50"), 1)
    assert "tenant/gone " in sched.runqueue(kernel)
    kernel.apply(RemoveTenant(name="gone"), 2)
    assert "tenant/gone " not in sched.runqueue(kernel)
    kernel.apply(SetTenant(tenant=TenantConfig("gone", weight=70), what="add gone weight=70"), 3)
    assert "tenant/gone 0.0 70 idle\n" in sched.runqueue(kernel)


def test_config_key_is_a_boolean(tmp_path):
    """daemon.check_invariants defaults to false, takes true, and refuses anything but a boolean."""
    path = tmp_path / "c.toml"
    assert not config_mod.load(None, str(tmp_path), use_nvml=False).check_invariants
    path.write_text("[daemon]\ncheck_invariants = true\n")
    assert config_mod.load(str(path), str(tmp_path), use_nvml=False).check_invariants
    path.write_text('[daemon]\ncheck_invariants = "yes"\n')
    with pytest.raises(ApeinxError, match="daemon.check_invariants must be true or false"):
        config_mod.load(str(path), str(tmp_path), use_nvml=False)


@pytest.mark.invariants_every(0)  # the books are corrupted on purpose: only the daemon's own check may run
@pytest.mark.parametrize("flag", ["false", "true"])
def test_daemon_with_the_key_checks_after_every_commit(tmp_path, flag):
    """With check_invariants = true a commit over corrupted books raises InvariantError; with false it goes through."""
    with open_runtime(tmp_path, f"[daemon]\ncheck_invariants = {flag}\n") as rt:
        rt.kernel.tasks.state_counts[State.STOPPED] = 5
        if flag == "true":
            with pytest.raises(InvariantError, match="state counts"):
                rt.commit([SetTenant(tenant=TenantConfig("t"), what="add t")])
        else:
            rt.commit([SetTenant(tenant=TenantConfig("t"), what="add t")])
            assert "t" in rt.kernel.tenancy.tenants


def test_a_held_task_reprioritised_is_held_again():
    """Found by the soak: a task held at its tenant's gpu quota, given a new prio, returns to the run queue
    with a stale held entry; the books still agree and the hold is made again, so it does not run."""
    kernel = Kernel(KernelConfig(models=[ModelConfig(name="sim")], page_mib=1,
                                 gpus=[GpuConfig(index=0, kv_mib=64, slots=4)],
                                 tenants=[TenantConfig("default", quota=Quota(gpu=25))]))
    first, second = submit(kernel), submit(kernel)
    assert kernel.tenancy.usage["default"].held == [kernel.tasks[second]]
    kernel.apply(Control(pid=second, command=TaskCommand("prio", 9), uid=1000), 1)
    kernel.check_invariants()
    assert kernel.tasks[second].state is State.QUEUED and kernel.tasks[first].state is State.RUNNING
    assert len(kernel.runq) == 0
