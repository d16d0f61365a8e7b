"""Tier 1: each tenant's live pids kept beside the task table (kernel/livepids.py), and the live keys' rows read
off them by what changed since the last look (cluster/records.py LiveRanges), on a real kernel (no FUSE).

Submits and exits move a tenant's pids in the index and its mark; a tenant whose last task exits is no longer
listed; the invariant check names an index that disagrees with the tasks, or marks past the changes, missing
or of a tenant not listed; each look's rows are `scan`'s (the pids of the whole index, sorted again), through
submits, exits, a tenant gone and a kernel rebuilt.
"""
import pytest

from apeinxfs.cluster.records import LiveRanges, scan
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.events import Kill, Submit
from apeinxfs.kernel.invariants import InvariantError
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenant_config import TenantConfig

CONFIG = KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0, slots=1)],
                      tenants=[TenantConfig(name) for name in ("a", "b", "c")])


def submit(kernel: Kernel, tenant: str) -> int:
    pid = kernel.apply(Submit(spec=TaskSpec(name="job", tenant=tenant), uid=0), kernel.now_us + 1)
    kernel.check_invariants()
    return pid


def kill(kernel: Kernel, pid: int) -> None:
    kernel.apply(Kill(pid=pid, uid=0), kernel.now_us + 1)
    kernel.check_invariants()


def test_submits_and_exits_move_a_tenants_live_pids_and_its_mark():
    """Three submits of a and one of b list them; killing b's task drops b; killing a's second leaves a's
    others, a's mark moved to that change and b's gone with it."""
    kernel = Kernel(CONFIG)
    pids = [submit(kernel, tenant) for tenant in "aab"] + [submit(kernel, "a")]
    index = kernel.tasks.live_pids
    assert index.by_tenant == {"a": {pids[0], pids[1], pids[3]}, "b": {pids[2]}} and index.changes == 4
    kill(kernel, pids[2])
    kill(kernel, pids[1])
    assert index.by_tenant == {"a": {pids[0], pids[3]}} and index.marks == {"a": 6} and index.changes == 6
    assert list(index.changed_since(5)) == ["a"] and list(index.changed_since(6)) == []


def test_an_index_that_disagrees_with_the_tasks_is_named_by_the_invariant_check():
    """A pid taken out of a's live pids by hand (a's task still live): the check names tenant a."""
    kernel = Kernel(CONFIG)
    submit(kernel, "a")
    kernel.tasks.live_pids.by_tenant["a"].clear()
    with pytest.raises(InvariantError, match=r"live pids of tenants \['a'\]"):
        kernel.check_invariants()


@pytest.mark.parametrize("broken", ["past changes", "missing", "unlisted"])
def test_a_mark_past_the_changes_missing_or_of_an_unlisted_tenant_is_named_by_the_invariant_check(broken):
    """a's mark set past `changes`, a's mark dropped, or a mark of b (which has no live task): the check names
    the marks."""
    kernel = Kernel(CONFIG)
    submit(kernel, "a")
    index = kernel.tasks.live_pids
    if broken == "past changes":
        index.marks["a"] = index.changes + 1
    elif broken == "missing":
        del index.marks["a"]
    else:
        index.marks["b"] = index.changes
    with pytest.raises(InvariantError, match=r"live pids' marks .* are not one per tenant listed"):
        kernel.check_invariants()


def test_each_look_gives_scans_rows_through_submits_exits_and_a_kernel_rebuilt():
    """LiveRanges' rows after each change equal scan's of the same kernel: submits of three tenants, exits that
    split a's ranges, b's last exit (b no longer listed), a look with nothing changed, and another kernel."""
    kernel, ranges = Kernel(CONFIG), LiveRanges()
    assert ranges.of(kernel.tasks) == {}
    pids = [submit(kernel, tenant) for tenant in "aabacaa"]
    assert ranges.of(kernel.tasks) == scan(kernel)[1] == {"a": "1-2,4,6-7", "b": "3", "c": "5"}
    for pid in (2, 3):
        kill(kernel, pid)
    assert ranges.of(kernel.tasks) == ranges.of(kernel.tasks) == scan(kernel)[1] == {"a": "1,4,6-7", "c": "5"}
    other = Kernel(CONFIG)
    submit(other, "b")
    assert ranges.of(other.tasks) == {"b": "1"} and pids[-1] == 7
