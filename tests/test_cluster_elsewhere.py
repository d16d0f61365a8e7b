"""Tier 1-2: the other nodes' use by tenant kept one node at a time (cluster/usage.Elsewheres) is the sum
over every up node but this one, whatever order records, ups and downs come in; the follower
(daemon.Cluster.followed) keeps Runtime.elsewhere current from the watch's events."""
from hypothesis import given, settings, strategies as st

from apeinxfs.cluster.etcd_records import Event, KeyValue
from apeinxfs.cluster.records import NodeRecord, NodeView
from apeinxfs.cluster.usage import Elsewheres
from apeinxfs.kernel.tenancy import Elsewhere
from test_shared_settings import node

NAMES = ["a", "b", "c", "d"]
row = st.lists(st.integers(0, 5), min_size=6, max_size=6)
usage = st.dictionaries(st.sampled_from(["t", "u", "v"]), row, max_size=3)
change = st.tuples(st.sampled_from(NAMES), st.booleans(), usage)  # (node, up, its record's usage)


def summed(nodes: dict[str, NodeView], here: str) -> dict[str, Elsewhere]:
    """The reference: every up node's rows but `here`'s added up, windows and tenants of nothing left out."""
    totals: dict[str, list] = {}
    for name, view in nodes.items():
        for tenant, (live, reserved, qw, qu, bw, bu) in (view.record.usage.items() if view.up and name != here else ()):
            total = totals.setdefault(tenant, [0, 0, {}, {}])
            total[0], total[1] = total[0] + live, total[1] + reserved
            total[2][qw], total[3][bw] = total[2].get(qw, 0) + qu, total[3].get(bw, 0) + bu
    found = {tenant: Elsewhere(live, reserved, used_only(quota), used_only(budget))
             for tenant, (live, reserved, quota, budget) in totals.items()}
    return {tenant: use for tenant, use in found.items() if use != Elsewhere()}


def used_only(windows: dict[int, int]) -> dict[int, int]:
    return {window: used for window, used in windows.items() if used}


def view(name: str, up: bool, rows: dict) -> NodeView:
    return NodeView(NodeRecord(name=name, epoch=1, seen_us=0, usage=rows), up=up, leader=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(change, max_size=30))
def test_sums_kept_one_node_at_a_time_equal_the_sum_over_every_node(changes):
    """After any sequence of records and ups/downs, each applied to the one node it changes, the sums are
    those of adding up every up node but this one afresh."""
    nodes: dict[str, NodeView] = {}
    kept = Elsewheres("a")
    sums = kept.load(nodes)
    for name, up, rows in changes:
        nodes[name] = view(name, up, rows)
        kept.update(name, nodes[name])
    assert sums == summed(nodes, "a")


def test_the_follower_counts_a_records_use_while_its_node_is_up(tmp_path):
    """A record's use counts once its node's `up` key comes, changes with its next record, and is taken away
    when the `up` key goes; this node's own record never counts."""
    rt = node(tmp_path)
    cluster = rt.cluster
    cluster.view.load([], 1)
    rt.elsewhere = cluster.elsewheres.load(cluster.view.nodes())
    revision = 1

    def seen(kind: str, key: str, value: bytes = b"") -> dict:
        nonlocal revision
        revision += 1
        event = Event(kind, KeyValue(f"t/{key}".encode(), value, revision, revision, 1), None)
        cluster.view.apply(event)
        cluster.followed(event)
        return {tenant: (use.live, use.reserved) for tenant, use in rt.elsewhere.items()}

    def record(name: str, live: int) -> bytes:
        return NodeRecord(name=name, epoch=1, seen_us=0, usage={"t": [live, 10 * live, 7, 0, 0, 0]}).to_json()

    assert seen("PUT", "nodes/n2", record("n2", 2)) == {}  # not up yet
    assert seen("PUT", "up/n2", b"1") == {"t": (2, 20)}
    assert seen("PUT", "nodes/n1", record("n1", 5)) == {"t": (2, 20)}  # n1 is this node
    assert seen("PUT", "up/n1", b"1") == {"t": (2, 20)}
    assert seen("PUT", "nodes/n2", record("n2", 3)) == {"t": (3, 30)}
    assert seen("DELETE", "up/n2") == {}
