"""Tier 1-2: the other nodes' use by tenant kept one node at a time (cluster/usage.Elsewheres) is the sum
over every up node but this one of the rows a record can count, whatever order records (read from their JSON,
with all-zero, negative, misshapen or missing rows), deletions, ups and downs come in; the follower
(daemon.Cluster.followed) keeps Runtime.elsewhere current from the watch's events; a node's usage writer
(usagekeys.UsageKeys) deletes before it puts and notes its failures and its recovery, not each write."""
import json
import logging

import attrs
import pytest
import trio
from hypothesis import example, given, settings, strategies as st

from apeinxfs.cluster.etcd import RangeResult
from apeinxfs.cluster.etcd_records import Event, KeyValue, Lease, Unavailable
from apeinxfs.cluster.records import Keys, NodeRecord, NodeView
from apeinxfs.cluster.usage import MAX_TENANTS, Elsewheres
from apeinxfs.cluster.usagekeys import UsageKeys, encode
from apeinxfs.kernel.tenancy import Elsewhere
from test_shared_settings import node

NAMES = ["a", "b", "c", "d"]
ZERO = [0, 0, 3, 0, 3, 0]
count = st.integers(0, 2)
good = st.one_of(st.just(ZERO), st.lists(count, min_size=6, max_size=6),
                 st.tuples(count, count, st.integers(-1, 4), count, st.integers(-1, 4), count).map(list))
bad = st.one_of(st.lists(count, max_size=8).filter(lambda row: len(row) != 6),  # misshapen
                st.lists(st.integers(-2, 2), min_size=6, max_size=6).filter(lambda row: min(row) < -1),
                st.just([1, 0, 3, "x", 3, 0]), st.just([1.0, 0, 3, 0, 3, 0]), st.just(7), st.none())
usage = st.dictionaries(st.sampled_from(["t", "u", "v"]), st.one_of(good, good, good, bad), max_size=3)
state = st.sampled_from(["up", "down", "deleted"])  # deleted: its nodes/ key is gone (no record)
change = st.tuples(st.sampled_from(NAMES), state, usage)  # (node, its state, its record's usage)


def countable(row) -> bool:
    """The reference's rule: six ints (no bool), the counts at least 0 (window indices from -1)."""
    return (isinstance(row, list) and len(row) == 6 and all(type(n) is int for n in row)
            and min(row[0], row[1], row[3], row[5]) >= 0)


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


def read(name: str, up: bool, rows: dict) -> NodeView:
    """The node as the view holds it once its record's JSON (`rows` as a peer wrote them) is read."""
    data = json.dumps({"name": name, "epoch": 1, "seen_us": 0, "usage": rows}).encode()
    return NodeView(NodeRecord.from_json(data), up=up, leader=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(change, max_size=30))
@example([("b", "up", {"t": ZERO}), ("b", "up", {"t": [1, 0, 3, 0, 3, 0]})])  # a tenant counted at 0 use
@example([("b", "up", {"t": [2, 0, 3, 0, 3, 0]}), ("c", "up", {"t": [-2, 0, 3, 0, 3, 0]}),
          ("c", "down", {"t": [-2, 0, 3, 0, 3, 0]}), ("b", "up", {"t": [1, 0, 3, 0, 3, 0]})])  # negatives
@example([("b", "up", {"t": [1, 0, 3]}), ("b", "up", {"t": [1, 2, 3, 4, 5, 6, 7]}), ("b", "up", {})])  # length
@example([("b", "up", {"t": [1, 0, 3, 0, 3, 0]}), ("b", "deleted", {}), ("b", "up", {"t": ZERO})])  # deletion
def test_sums_kept_one_node_at_a_time_equal_the_sum_over_every_node(changes):
    """After any sequence of records, deletions and ups/downs, each applied to the one node it changes, the
    sums are those of adding up every up node's countable rows but this one's afresh."""
    nodes: dict[str, NodeView] = {}
    kept = Elsewheres("a")
    sums = kept.load(nodes)
    for name, up, rows in changes:
        if up == "deleted":
            nodes.pop(name, None)
        else:
            nodes[name] = read(name, up == "up", rows)
            assert nodes[name].record.usage == {t: row for t, row in rows.items() if countable(row)}
        kept.update(name, nodes.get(name))
    assert sums == summed(nodes, "a")


def test_a_tenant_summed_to_nothing_while_nodes_count_it_stays_countable():
    """Rows of a record built here (not read from JSON) that cancel (b 2, c -2) or are all zero leave the
    tenant's sums to the nodes counting it: b's next rows, and c going down, are counted, not KeyError."""
    kept = Elsewheres("a")
    sums = kept.load({})
    kept.update("b", view("b", True, {"t": [2, 0, 3, 0, 3, 0]}))
    kept.update("c", view("c", True, {"t": [-2, 0, 3, 0, 3, 0]}))
    kept.update("c", view("c", False, {"t": [-2, 0, 3, 0, 3, 0]}))
    assert sums == {"t": Elsewhere(live=2)}
    kept.update("b", view("b", True, {"t": ZERO}))
    kept.update("b", view("b", True, {"t": [1, 0, 3, 0, 3, 0]}))
    assert sums == {"t": Elsewhere(live=1)}


def test_a_peers_malformed_rows_are_left_out_with_one_log_line(caplog):
    """A record with a row too short, one of a negative count and one that is not a list keeps its good
    row; one warning names the node and the rows left out."""
    rows = {"t": [1, 0, 3, 0, 3, 0], "u": [1, 0, 3], "v": [-1, 0, 3, 0, 3, 0], "w": "x"}
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.usage"):
        assert read("b", True, rows).record.usage == {"t": [1, 0, 3, 0, 3, 0]}
    [line] = caplog.messages
    assert "node b" in line and "3 malformed usage rows" in line and "u, v, w" in line


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


value = st.one_of(good.map(lambda row: json.dumps(row).encode()), bad.map(lambda row: json.dumps(row).encode()),
                  st.just(b"{not json"), st.just(b"[" + b"1," * 200 + b"1]"), st.none())  # None: deleted
key_change = st.tuples(st.sampled_from(NAMES), st.sampled_from(["t", "u", "v"]), value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(change, key_change), max_size=40))
@example([("b", "up", {"t": [1, 0, 3, 0, 3, 0]}), ("b", "t", b"[2,0,3,0,3,0]"), ("b", "t", None)])  # keys, then none
@example([("b", "u", b"[2,0,3,0,3,0]"), ("b", "up", {"t": [1, 0, 3, 0, 3, 0]}), ("b", "down", {}),
          ("b", "u", b"[5,0,3,0,3,0]"), ("b", "up", {})])  # a key before the record; changed while down
def test_sums_from_usage_keys_or_else_records_equal_the_sum_over_every_node(changes):
    """With usage keys put, replaced by unreadable values and deleted among records and ups/downs, the sums
    are those of every up node's readable key rows, or its record's rows while it has no readable key (and
    the kept parts agree after every change)."""
    nodes: dict[str, NodeView] = {}
    keyed: dict[str, dict[str, list]] = {}
    kept = Elsewheres("a")
    sums = kept.load(nodes)
    for one in changes:
        if isinstance(one[1], str) and one[1] in ("t", "u", "v"):
            name, tenant, data = one
            row = json.loads(data) if data is not None and data.startswith(b"[") else None
            rows = keyed.setdefault(name, {})
            rows.pop(tenant, None)
            if countable(row) and len(data) <= 256:
                rows[tenant] = row
            kept.key_changed(f"{name}/{tenant}", data, nodes.get)
        else:
            name, up, rows = one
            nodes.pop(name, None) if up == "deleted" else nodes.__setitem__(name, read(name, up == "up", rows))
            kept.update(name, nodes.get(name))
        kept.check_invariants()
    as_keyed = {name: attrs.evolve(view, record=attrs.evolve(view.record, usage=keyed.get(name) or view.record.usage))
                for name, view in nodes.items()}
    assert sums == summed(as_keyed, "a")


def test_an_unreadable_usage_key_is_not_counted_and_logged(caplog):
    """Bad JSON, a row of the wrong form, a huge value and a key naming no tenant are each one warning; the
    node's good key still counts, and a bad value over a good one takes that one away."""
    kept = Elsewheres("a")
    sums = kept.load({"b": view("b", True, {})})
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.usage"):
        kept.key_changed("b/t", b"[1,0,3,0,3,0]", {"b": view("b", True, {})}.get)
        for name, data in [("b/u", b"{"), ("b/v", b"[1,2]"), ("b/w", b"[" + b"1," * 100_000 + b"1]"),
                           ("b", b"[1,0,3,0,3,0]"), ("b/x", b"[1,0,3,0,3,%d]" % 2 ** 63)]:
            kept.key_changed(name, data, {"b": view("b", True, {})}.get)
        assert sums == {"t": Elsewhere(live=1)}
        kept.key_changed("b/t", b"[true,0,3,0,3,0]", {"b": view("b", True, {})}.get)
    assert sums == {}
    assert len(caplog.messages) == 6 and all("not counted" in line for line in caplog.messages)
    assert "b/w" in caplog.messages[2] and "bytes" in caplog.messages[2]


def test_a_tenant_taking_anothers_place_at_the_most_tenants_is_counted():
    """A node at MAX_TENANTS whose use swaps one tenant for another (published keeps the first by name) has the
    new tenant counted by a follower applying the writer's changes in their order."""
    held = {f"t{n:04d}": [1, 0, 3, 0, 3, 0] for n in range(1, MAX_TENANTS + 1)}
    rows = {f"t{n:04d}": [1, 0, 3, 0, 3, 0] for n in range(MAX_TENANTS)}  # t0000 in, t1000 out
    kept = Elsewheres("a")
    sums = kept.load({"b": view("b", True, {})}, [(f"b/{tenant}", encode(row)) for tenant, row in held.items()])
    for tenant, _ in UsageKeys(None, Keys("p/"), "b", dict, None, None).changes(held, rows, lease_id=7):
        value = encode(rows[tenant]) if tenant in rows else None
        kept.key_changed(f"b/{tenant}", value, {"b": view("b", True, {})}.get)
        kept.check_invariants()
    assert set(sums) == set(rows)


class FlakyEtcd:
    """An etcd whose first `failing` txns fail without a quorum; it holds no usage keys."""

    def __init__(self, failing: int):
        self.failing = failing

    async def range(self, key: bytes, prefix: bool = False) -> RangeResult:
        return RangeResult([], 1)

    async def txn(self, txn, repeatable: bool = False) -> None:
        if self.failing:
            self.failing -= 1
            raise Unavailable("etcd: /kv/txn: no quorum within 8s (http://m1: cannot connect)")


@pytest.mark.parametrize("failing", [0, 2])
async def test_the_usage_writer_notes_its_failures_and_its_recovery_not_each_write(failing, autojump_clock):
    """A writer whose first txns fail notes each failure and then its recovery once; one that never failed notes
    nothing (so another loop's failure noted meanwhile is not cleared by each write)."""
    notes, writes = [], []

    async def changed(rows) -> None:
        writes.append(rows)
        if len(writes) == 3:
            await trio.sleep_forever()
        await trio.sleep(0.1)
    usage = {"t": [1, 0, 3, 0, 3, 0]}
    writer = UsageKeys(FlakyEtcd(failing), Keys("p/"), "b", lambda: dict(usage), changed, notes.append)
    with trio.move_on_after(60):
        await writer.keep(Lease(7, 5))
    assert len(writes) == 3 and len(notes) == failing + (failing > 0)
    assert all(isinstance(note, Unavailable) for note in notes[:failing]) and notes[failing:] == [None] * (failing > 0)
