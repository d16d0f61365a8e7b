"""Tier 1: the placement policy (cluster/placement.py) over nodes' records, and the pid-range lookup of
cluster/routing.py; pure, no etcd."""
from hypothesis import given, strategies as st

from apeinxfs.cluster.placement import pressure, rank
from apeinxfs.cluster.records import NodeRecord, NodeView, pid_ranges
from apeinxfs.cluster.routing import holds

SIM = frozenset({"sim"})


def view(name: str, up: bool = True, models=("sim",), slots_free: int = 16, queued: int = 0, kv: int = 768,
         advertise: str | None = "127.0.0.1:1") -> NodeView:
    record = NodeRecord(name=name, epoch=1, seen_us=0, slots_free=slots_free, queued=queued, kv_pages_free=kv,
                        models=models, advertise=advertise)
    return NodeView(record, up=up, leader=False)


def nodes(*views: NodeView) -> dict:
    return {v.record.name: v for v in views}


def test_least_pressure_wins_and_the_reason_says_why():
    """A node with free slots beats one with a queue; the reason names its numbers."""
    order = rank(nodes(view("a", slots_free=0, queued=3), view("b", slots_free=4)), SIM, "a", {})
    assert [c.node for c in order] == ["b", "a"]
    assert "slots free 4" in order[0].reason and "2 nodes up with the model" in order[0].reason


def test_down_nodes_nodes_without_the_model_or_an_address_are_not_candidates():
    """Only up nodes holding every model the write names, reachable as peers (or this node), are ranked."""
    order = rank(nodes(view("a", advertise=None), view("b", up=False), view("c", models=("other",)),
                       view("d", advertise=None), view("e")), SIM, "a", {})
    assert [c.node for c in order] == ["a", "e"]
    assert rank(nodes(view("a")), frozenset({"sim", "other"}), "a", {}) == []


def test_ties_go_to_more_kv_then_this_node_then_the_name():
    """Equal pressure: most free KV pages first, then this node, then by name, the same on every call."""
    tied = nodes(view("c"), view("b"), view("a"), view("d", kv=900))
    assert [c.node for c in rank(tied, SIM, "b", {})] == ["d", "b", "a", "c"]


def test_tasks_placed_since_a_record_count_against_their_node():
    """Pending placements take a node's free slots, so a burst spreads round the nodes."""
    order = rank(nodes(view("a"), view("b"), view("c")), SIM, "a", {"a": 1, "b": 1})
    assert order[0].node == "c" and "placed since its record 1" in order[1].reason


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
def test_pressure_grows_with_each_pending_task(slots_free, queued, pending):
    """One more task placed on a node never makes it look less loaded."""
    v = view("a", slots_free=slots_free, queued=queued)
    assert pressure(v, pending + 1) == pressure(v, pending) + 1


@given(st.sets(st.integers(1, 300)), st.integers(0, 310))
def test_a_pid_is_held_exactly_when_its_ranges_list_it(pids, pid):
    """routing.holds over pid_ranges' text agrees with membership of the pid set."""
    assert holds(pid_ranges(sorted(pids)), pid) == (pid in pids)
