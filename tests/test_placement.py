"""Tier 1: the placement policy (cluster/placement.py) over nodes' records, and where cluster/routing.py
finds a pid; pure, no etcd."""
import types

from hypothesis import given, strategies as st

from apeinxfs.cluster.etcd_records import Event, KeyValue
from apeinxfs.cluster.placement import pressure, rank
from apeinxfs.cluster.records import MAX_RANGES, Keys, NodeRecord, NodeView, pid_ranges, scan
from apeinxfs.kernel.livepids import LivePids
from apeinxfs.kernel.task import State
from apeinxfs.cluster.routing import Router, holds
from apeinxfs.cluster.view import ClusterView

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


def router_over(records: dict, blocks: dict, local_pids=()) -> Router:
    """A Router of node a over a view holding `records` and `blocks` (no etcd, no peers)."""
    view = ClusterView(Keys("t/"))
    view.records, view.blocks, view.up = records, blocks, dict.fromkeys(records, 1)
    rt = types.SimpleNamespace(kernel=types.SimpleNamespace(tasks=set(local_pids)))
    settings = types.SimpleNamespace(tokens=None)
    return Router(types.SimpleNamespace(rt=rt, name="a", settings=settings, view=view))


def test_a_reply_counts_only_the_tasks_its_nodes_record_does_not():
    """Node b's reply of pids 10-11 counts both against its record of pid_next 10; once its next record
    (pid_next 12, counting them) came before a reply of 12-13 and the late one of 10-11, b has 2 pending."""
    router = router_over({"b": NodeRecord("b", 1, 1, pid_next=10)}, {})
    router.count("b", [10, 11])
    assert router.pending() == {"b": 2}
    router.cluster.view.records["b"] = NodeRecord("b", 1, 2, queued=2, pid_next=12)
    router.count("b", [12, 13])
    router.count("b", [10, 11])
    assert router.pending() == {"b": 2}


def test_a_pid_is_found_on_its_blocks_holder_once_given_or_where_it_is_published_live():
    """Block holders answer for pids their record says they gave (exited too); a pid not given yet, or a
    local one, has no remote owner; a pid from before the cluster is found by the records' live ranges;
    a live remote task is its published tenant's, an exited one nobody's in particular."""
    b = NodeRecord("b", 1, 0, pid_next=110, tasks="3,105", tenants={"default": "3", "t2": "105"})
    records = {"a": NodeRecord("a", 1, 0, pid_next=15), "b": b, "c": NodeRecord("c", 1, 0, pid_next=0)}
    router = router_over(records, {11: (10, "a"), 101: (10, "b"), 201: (10, "c")}, local_pids=[12])
    assert router.owner(105) == "b" and router.owner(102) == "b" and router.owner(110) is None
    assert router.owner(12) is None and router.owner(13) is None and router.owner(201) is None
    assert router.owner(3) == "b" and router.remote_tasks() == [(3, "b", "default"), (105, "b", "t2")]
    assert router.task_dir(105).tenant == "t2" and router.task_dir(102).tenant is None
    router.count("c", [201])
    assert router.owner(201) == "c" and router.pending() == {"c": 1}


def test_remote_tasks_are_the_up_nodes_live_keys_or_an_older_versions_record():
    """Up node b's live keys (t 4-5, u 7; its record lists none), up node c's older record (v 9), not down
    node d's record (w 11) nor this node a's live key: the remote tasks, each of its key's tenant."""
    records = {name: NodeRecord(name, 1, 0, tenants=tenants)
               for name, tenants in [("a", {}), ("b", {}), ("c", {"v": "9"}), ("d", {"w": "11"})]}
    router = router_over(records, {})
    view = router.cluster.view
    del view.up["d"]
    for node, tenant, pids in [("b", "t", b"4-5"), ("b", "u", b"7"), ("a", "x", b"1")]:
        view.apply(Event("PUT", KeyValue(view.keys.live(node, tenant), pids, 1, 1, 1), None))
    assert router.remote_tasks() == [(4, "b", "t"), (5, "b", "t"), (7, "b", "u"), (9, "c", "v")]
    assert router.task_dir(7, "b").tenant == "u"


def test_each_tenants_live_pids_are_published_within_one_cap_for_all():
    """Live pids by tenant, exited ones left out; scattered pids of many tenants stop at MAX_RANGES runs in all."""
    def task(pid, tenant, state=State.RUNNING):
        return types.SimpleNamespace(pid=pid, tenant=tenant, state=state)
    def kernel(tasks):
        return types.SimpleNamespace(tasks=types.SimpleNamespace(live_pids=LivePids.of(tasks)))
    small = [task(1, "a"), task(2, "a"), task(3, "b"), task(4, "a", State.EXITED), task(5, "a")]
    assert scan(kernel(small)) == ("1-3,5", {"a": "1-2,5", "b": "3"})
    ranges = scan(kernel([task(pid, f"t{pid % 3}") for pid in range(1, 4 * MAX_RANGES, 2)]))[1]
    assert sum(text.count(",") + 1 for text in ranges.values()) == MAX_RANGES and sorted(ranges) == ["t0", "t1"]
