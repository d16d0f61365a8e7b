"""Tier 2: what a cluster node's record reads off its kernel (cluster/daemon.py `Cluster.record`): the whole
kernel (the task table scanned for live pids) at most once a PUBLISH_S; a record published sooner, because
its tenants' use changed, carries that use as it stands and the rest as last read."""
from apeinxfs.cluster.member import PUBLISH_S
from apeinxfs.kernel.events import PidBlock, Submit
from apeinxfs.kernel.spec import TaskSpec
from test_shared_settings import node

PUBLISH_US = int(PUBLISH_S * 1_000_000)
LIMITED = '[[tenants]]\nname = "default"\n[[tenants]]\nname = "t"\n[tenants.quota]\ntasks = 100\n'


class StillClock:
    """A clock that moves only when told."""

    def __init__(self):
        self.us = 1_000_000_000

    def now_us(self) -> int:
        return self.us


def test_the_kernel_is_read_whole_at_most_once_a_publish_period(tmp_path):
    """A second submit half a PUBLISH_S after a read: the record counts 2 live tasks of tenant t but lists
    the pids read before (1); once PUBLISH_S has passed since that read, it lists both."""
    clock = StillClock()
    rt = node(tmp_path, LIMITED, clock)
    rt.commit([PidBlock(first=1, count=100)])
    rt.commit([Submit(spec=TaskSpec(name="j", tenant="t"))])
    first = rt.cluster.record(1)
    assert (first.usage["t"][0], first.tasks, first.tenants) == (1, "1", {"t": "1"})
    rt.commit([Submit(spec=TaskSpec(name="j", tenant="t"))])
    clock.us += PUBLISH_US // 2
    early = rt.cluster.record(1)
    assert (early.usage["t"][0], early.tasks, early.tenants) == (2, "1", {"t": "1"})
    assert early.seen_us == clock.us
    clock.us += PUBLISH_US // 2
    read = rt.cluster.record(2)
    assert (read.usage["t"][0], read.tasks, read.tenants, read.epoch) == (2, "1-2", {"t": "1-2"}, 2)
