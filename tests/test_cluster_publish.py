"""Tier 2: what a cluster node's record reads off its kernel (cluster/daemon.py `Cluster.record`): the live
pids looked at at most once a PUBLISH_S; a record made sooner (a join's) finds the live pids as last looked at
and carries every other field (live count, free slots, queue, pid_next: what other nodes'
placement and routing read) as it stands."""
import attrs

from apeinxfs.cluster.member import PUBLISH_S
from apeinxfs.cluster.placement import rank
from apeinxfs.cluster.records import NodeView, record_of
from apeinxfs.enginehost import CannotRun
from apeinxfs.kernel.events import PidBlock, Submit
from apeinxfs.kernel.spec import TaskSpec
from test_placement import SIM, nodes, view
from test_shared_settings import node

PUBLISH_US = int(PUBLISH_S * 1_000_000)
LIMITED = '[[tenants]]\nname = "default"\n[[tenants]]\nname = "t"\n[tenants.quota]\ntasks = 100\n'


class StillClock:
    """A clock that moves only when told."""

    def __init__(self):
        self.us = 1_000_000_000

    def now_us(self) -> int:
        return self.us


def test_the_live_pids_are_looked_at_at_most_once_a_publish_period_and_the_record_is_current(tmp_path):
    """A second submit half a PUBLISH_S after a look: the record (which lists no pids: they are in live keys)
    counts 2 live tasks, gives pid_next 3 and the queue as they stand, while live_pids gives the pids looked
    at before (1); once PUBLISH_S has passed since that look, it gives both."""
    clock = StillClock()
    rt = node(tmp_path, LIMITED, clock)
    rt.commit([PidBlock(first=1, count=100)])
    rt.commit([Submit(spec=TaskSpec(name="j", tenant="t"))])
    first = rt.cluster.record(1)
    assert (first.live, first.tasks, first.tenants, rt.cluster.live_pids()) == (1, "", {}, {"t": "1"})
    rt.commit([Submit(spec=TaskSpec(name="j", tenant="t"))])
    clock.us += PUBLISH_US // 2
    early = rt.cluster.record(1)
    assert (early.live, rt.cluster.live_pids()) == (2, {"t": "1"})
    assert early.seen_us == clock.us
    assert (early.pid_next, early.live, early.queued) == (3, 2, len(rt.kernel.runq))
    assert early == attrs.evolve(record_of(rt.kernel, 1, clock.us, None), tasks="", tenants={})
    clock.us += PUBLISH_US // 2
    read = rt.cluster.record(2)
    assert (read.live, rt.cluster.live_pids(), read.epoch) == (2, {"t": "1-2"}, 2)


def test_the_first_change_after_an_idle_spell_is_looked_at_at_once(tmp_path):
    """A submit at 0 s looked at, an idle look at 1.5 PUBLISH_S (no change), a second submit at 1.6: the look
    then gives both pids, since only a look that found a change waits PUBLISH_S for the next."""
    clock = StillClock()
    rt = node(tmp_path, LIMITED, clock)
    rt.commit([PidBlock(first=1, count=100)])
    rt.commit([Submit(spec=TaskSpec(name="j", tenant="t"))])
    assert rt.cluster.live_pids() == {"t": "1"}
    clock.us += PUBLISH_US * 15 // 10
    assert rt.cluster.live_pids() == {"t": "1"}
    clock.us += PUBLISH_US // 10
    rt.commit([Submit(spec=TaskSpec(name="j", tenant="t"))])
    assert rt.cluster.live_pids() == {"t": "1-2"}


def test_a_model_whose_driver_cannot_be_built_here_is_left_out_of_the_record_and_placement_passes_the_node_over(
        tmp_path):
    """n1 runs sim until its driver cannot be built (runtime.cannot_run): its record then lists no sim, so a write
    of sim goes to node b (which holds it), not to the node that would refuse it (ENXIO), though n1's slots are free."""
    rt = node(tmp_path, clock=StillClock())
    ranked = []
    for cannot_run in [{}, {"sim": CannotRun("the driver cannot be built: refused")}]:
        rt.cannot_run = cannot_run
        record = rt.cluster.record(1)
        ranked.append((record.models, [choice.node for choice in rank(
            nodes(NodeView(record, up=True, leader=True), view("b", slots_free=0, queued=5)), SIM, "n1", {})]))
    assert ranked == [(("sim",), ["n1", "b"]), ((), ["b"])]
