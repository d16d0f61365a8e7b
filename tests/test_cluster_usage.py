"""Tier 1: quotas and budgets across the cluster (cluster/usage.py, kernel/tenancy.Elsewhere): what a node
publishes of its tenants' use, the sum of the other up nodes', and admission counting it."""
import errno

import attrs
import pytest

from apeinxfs.cluster.records import NodeRecord, NodeView, record_of
from apeinxfs.cluster.usage import Elsewheres, published
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import OverQuota
from apeinxfs.kernel.events import Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenancy import Elsewhere
from apeinxfs.kernel.tenant_config import Budget, Quota, TenantConfig

NOW_US = 1_000 * 60_000_000  # the start of a minute: quota window 1000


def kernel_with(tenant: TenantConfig) -> Kernel:
    return Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0)], node="a",
                               tenants=(TenantConfig("default"), tenant)))


def submit(kernel: Kernel, away: dict, max_tokens: int = 10, batch: dict | None = None) -> int:
    """Admit (with the use `away` elsewhere) and apply a submit in tenant t; its pid."""
    event = kernel.admit(Submit(spec=TaskSpec(name="j", max_tokens=max_tokens, tenant="t")), NOW_US, batch, away)
    return kernel.apply(event, NOW_US)


def test_live_tasks_on_other_nodes_count_against_the_task_quota():
    """quota tasks 4 with 3 live elsewhere: one submit passes here, the next is EDQUOT saying so."""
    kernel = kernel_with(TenantConfig("t", quota=Quota(tasks=4)))
    away = {"t": Elsewhere(live=3)}
    submit(kernel, away)
    with pytest.raises(OverQuota) as refused:
        submit(kernel, away)
    assert refused.value.errno == errno.EDQUOT and "has 4 live tasks (3 on other nodes)" in refused.value.reason
    submit(kernel, {})  # alone, the node has room


def test_tokens_used_elsewhere_count_in_their_window_only():
    """quota tokens 1000: 900 used elsewhere in this window refuse a task wanting 200; the same 900 in
    the last window, or in the budget's ledger of another window, do not."""
    kernel = kernel_with(TenantConfig("t", quota=Quota(tokens=1000, window=60), budget=Budget(tokens=5000)))
    with pytest.raises(OverQuota) as refused:
        submit(kernel, {"t": Elsewhere(quota={1000: 900})}, max_tokens=200)
    assert "900 are used or reserved on other nodes" in refused.value.reason
    submit(kernel, {"t": Elsewhere(quota={999: 900}, budget={0: 4000})}, max_tokens=200)
    with pytest.raises(OverQuota) as over_budget:
        submit(kernel, {"t": Elsewhere(budget={NOW_US // 86_400_000_000: 5200})}, max_tokens=200)
    assert "token budget" in over_budget.value.reason


def test_published_use_leaves_the_record_and_the_others_are_summed_over_up_nodes_but_this_one():
    """published() lists tenants with a limit and live tasks or tokens used (for the usage keys: the record
    carries none; an older version's record carries them, and they read back); Elsewheres adds up the up
    nodes' rows by window, leaving out down nodes and this node."""
    kernel = kernel_with(TenantConfig("t", quota=Quota(tasks=9)))
    submit(kernel, {}, max_tokens=10)
    kernel.apply(Submit(spec=TaskSpec(name="j", max_tokens=10)), NOW_US)  # default: no limit, not published
    row = published(kernel)["t"]
    assert row[:2] == [1, 10] and list(published(kernel)) == ["t"]
    record = record_of(kernel, 1, 0, None)
    assert NodeRecord.from_json(record.to_json()).usage == {}
    assert NodeRecord.from_json(attrs.evolve(record, usage={"t": row}).to_json()).usage == {"t": row}

    def view(name, up, rows):
        return NodeView(NodeRecord(name=name, epoch=1, seen_us=0, usage=rows), up=up, leader=False)
    nodes = {"a": view("a", True, {"t": [5, 50, 7, 70, 0, 70]}), "b": view("b", True, {"t": [1, 10, 7, 5, 0, 5]}),
             "c": view("c", True, {"t": [2, 20, 8, 3, 0, 3], "u": [1, 1, -1, 0, -1, 0]}),
             "d": view("d", False, {"t": [9, 90, 7, 9, 0, 9]})}
    seen = Elsewheres("a").load(nodes)
    assert seen["t"] == Elsewhere(live=3, reserved=30, quota={7: 5, 8: 3}, budget={0: 8})
    assert seen["u"].live == 1 and set(seen) == {"t", "u"}
