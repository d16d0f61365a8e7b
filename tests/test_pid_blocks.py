"""Tier 1: pids in blocks the cluster grants (kernel/tasktable.py, events.PidBlock), replayed the same.

A cluster node's kernel (`pid_blocks`) gives no pid before a block is granted, gives the
block's pids in order, moves to the next block granted once one is used up, refuses a
submit (EAGAIN) when none is left, counting a write's earlier lines, and a replay of
the journal gives every task the same pid. A single node ignores blocks: 1, 2, 3...
"""
import errno

import pytest

from apeinxfs import config as config_mod
from apeinxfs.journal import Journal
from apeinxfs.kernel import Kernel
from apeinxfs.kernel import events as ev
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import PidBlock, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.runtime import Runtime


def make_kernel(pid_blocks: bool = True) -> Kernel:
    return Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0)], node="n1",
                               pid_blocks=pid_blocks))


def replayed(events: list) -> Kernel:
    """A fresh make_kernel() that has applied `events` as journal rows (encoded and decoded), at time 0."""
    kernel = make_kernel()
    for event in events:
        kernel.apply(ev.from_row(*ev.to_row(event)), 0)
    return kernel


def submit(kernel: Kernel, batch: dict | None = None) -> int:
    """Admit and apply one submit, as the runtime does; its pid."""
    event = kernel.admit(Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000), kernel.now_us, batch)
    return kernel.apply(event, kernel.now_us)


def grant(kernel: Kernel, first: int, count: int) -> None:
    event = PidBlock(first=first, count=count)
    kernel.check(event)
    kernel.apply(event, kernel.now_us)


def refusal(call) -> ApeinxError:
    with pytest.raises(ApeinxError) as refused:
        call()
    return refused.value


def test_a_cluster_node_gives_no_pid_before_its_first_block():
    """Before any grant a submit is refused with EAGAIN and a reason naming the node and the cluster."""
    kernel = make_kernel()
    refused = refusal(lambda: submit(kernel))
    assert refused.errno == errno.EAGAIN and "node n1 has used up its pids" in refused.reason
    assert kernel.tasks.pids_left() == 0 and len(kernel.tasks) == 0


def test_pids_come_from_the_blocks_in_order_then_run_out():
    """A block's pids are given in order, then the next block's (granted early), then EAGAIN."""
    kernel = make_kernel()
    grant(kernel, 101, 2)
    grant(kernel, 201, 2)
    assert kernel.tasks.pids_left() == 4
    assert [submit(kernel) for _ in range(4)] == [101, 102, 201, 202]
    assert refusal(lambda: submit(kernel)).errno == errno.EAGAIN
    kernel.check_invariants()


def test_a_block_granted_after_the_last_is_used_up_is_used_at_once():
    """Once the block is used up, the next grant's first pid is the next pid."""
    kernel = make_kernel()
    grant(kernel, 1, 1)
    assert submit(kernel) == 1 and kernel.tasks.pids_left() == 0
    grant(kernel, 9, 3)
    assert submit(kernel) == 9 and kernel.tasks.pids_left() == 2


def test_one_write_cannot_take_more_pids_than_are_left():
    """Submits admitted in one batch count the pids the ones before them take."""
    kernel = make_kernel()
    grant(kernel, 1, 2)
    batch: dict = {}
    for _ in range(2):
        kernel.admit(Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000), 0, batch)
    refused = refusal(lambda: kernel.admit(Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000), 0, batch))
    assert refused.errno == errno.EAGAIN and "only 2 pids left for this write's lines" in refused.reason


def test_a_line_refused_after_the_pid_check_takes_no_pid_of_the_write():
    """A line the tenant's sandbox refuses takes no pid: the next line of the write gets the last one."""
    kernel = Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0)], node="n1",
                                 pid_blocks=True, tenants=[TenantConfig("default", sandbox={"max_tokens": 5})]))
    grant(kernel, 1, 1)
    batch: dict = {}
    too_long = refusal(lambda: kernel.admit(Submit(spec=TaskSpec(name="j", max_tokens=10), uid=1000), 0, batch))
    assert too_long.errno == errno.EINVAL and "sandbox limit" in too_long.reason
    event = kernel.admit(Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000), 0, batch)
    assert kernel.apply(event, 0) == 1


def test_a_block_must_lie_past_every_pid_given_or_granted():
    """A block overlapping the pids known is refused with EINVAL; an empty one too."""
    kernel = make_kernel()
    grant(kernel, 10, 5)
    assert submit(kernel) == 10
    for first, count in ((12, 5), (14, 1), (15, 0)):
        assert refusal(lambda: kernel.check(PidBlock(first=first, count=count))).errno == errno.EINVAL
    kernel.check(PidBlock(first=15, count=1))


def test_a_single_node_counts_pids_from_one_and_refuses_blocks():
    """Without pid blocks pids are 1, 2, 3; a PidBlock is refused, and ignored when replayed."""
    kernel = make_kernel(pid_blocks=False)
    assert [submit(kernel) for _ in range(3)] == [1, 2, 3] and kernel.tasks.pids_left() is None
    assert refusal(lambda: kernel.check(PidBlock(first=100, count=5))).errno == errno.EINVAL
    kernel.apply(PidBlock(first=100, count=5), kernel.now_us)
    assert submit(kernel) == 4


def test_a_replay_of_the_journal_gives_the_same_pids(tmp_path):
    """Grants are journaled: a runtime recovering the journal has the same tasks and pids left."""
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\nnode = "n1"\n[cluster]\netcd = ["http://127.0.0.1:1"]\n[gpus]\nsimulated = 1\n')
    config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
    assert config.kernel.pid_blocks and config.cluster.etcd == ("http://127.0.0.1:1",)
    runtime = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")))
    runtime.commit([PidBlock(first=1001, count=3)])
    pids = runtime.commit([Submit(spec=TaskSpec(name="j", max_tokens=2)) for _ in range(2)])
    runtime.journal.close()
    again = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")))
    again.recover()
    assert pids == [1001, 1002] and sorted(again.kernel.tasks) == pids and again.kernel.tasks.pids_left() == 1
    again.journal.close()


def test_a_node_that_ran_alone_keeps_its_pids_and_its_blocks_start_past_them():
    """A single node's journal replayed into a cluster node's kernel keeps pids 1..3; none is left, and
    the first block granted starts past them."""
    kernel = make_kernel()
    for _ in range(3):  # replay applies without checking, as recovery does
        kernel.apply(Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000), kernel.now_us)
    assert sorted(kernel.tasks) == [1, 2, 3] and kernel.tasks.pids_left() == 0 and kernel.tasks.pid_floor() == 4
    assert refusal(lambda: kernel.check(PidBlock(first=3, count=10))).errno == errno.EINVAL
    grant(kernel, 4, 10)
    assert submit(kernel) == 4
