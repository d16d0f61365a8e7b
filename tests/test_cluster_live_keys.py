"""Tier 3: a node's live pids in keys of their own (cluster/livekeys.py) and its record put only when it changed
(member.py `publish`), on a real etcd member, in process: cluster nodes' runtimes (no FUSE, no engines).

An idle node puts nothing between heartbeats, and puts its record unchanged once a heartbeat; a submit is
seen by another node, its pids through the tenant's live key and the record's count, within about a second;
a tenant's key goes when its last task exits, and every live key with the node's lease; a live key's pids
count for an up node instead of its record's (an older version's); a live key that cannot be read, or past
MAX_PIDS of its node, is logged and dropped; a tenant live on another up node is not removed.
"""
import logging
import math

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from apeinxfs.cluster import member as member_mod
from apeinxfs.cluster.etcd_records import Event, KeyValue
from apeinxfs.cluster.member import PUBLISH_S
from apeinxfs.cluster.peerdata import MAX_PIDS, pid_count
from apeinxfs.cluster.records import Keys, NodeRecord
from apeinxfs.cluster.shared import SharedSettings
from apeinxfs.cluster.view import ClusterView
from apeinxfs.kernel.errors import Busy
from apeinxfs.kernel.events import Kill, RemoveTenant
from test_cluster_usage_keys import cluster_node, etcd_member, running, submit, up_on_a_short_lease  # noqa: F401
from test_etcd_client import wait_for

SETTLED_S = 3 * PUBLISH_S  # long enough for a once-a-second publisher to put its record twice


async def own_revisions(rt) -> dict[bytes, int]:
    """The mod_revision of every key node `rt` writes, alone on its prefix: every key under it (its record, up,
    epoch, live, usage, election, task and pid-block keys, the next pid, settings) and its tasks' replicated
    output beside it; another node's writes, under another prefix, leave it be."""
    keys, etcd = rt.cluster.keys, rt.cluster.etcd
    found = [kv for start in (keys.all, keys.output(0)[:-1]) for kv in (await etcd.range(start, prefix=True)).kvs]
    return {kv.key: kv.mod_revision for kv in found}


async def test_an_idle_node_puts_nothing_between_heartbeats_and_its_record_at_each(etcd_member, tmp_path,
                                                                                     monkeypatch):
    """n1 up with a live task and nothing changing, no heartbeat due: none of its keys is written for three
    publish periods; with a heartbeat due now (HEARTBEAT_S the time since its last put), the next look puts the
    record alone, once."""
    monkeypatch.setattr(member_mod, "HEARTBEAT_S", math.inf)
    n1 = cluster_node(tmp_path, etcd_member, "n1", "idle/")
    submit(n1, "default")
    async with running(n1):
        async def published() -> bool:
            return await n1.cluster.etcd.get(n1.cluster.keys.live("n1", "default")) is not None
        await wait_for(published, "n1's live key")
        await trio.sleep(PUBLISH_S)  # the first look after the join finds the record as the join put it
        before = await own_revisions(n1)
        assert {n1.cluster.keys.node("n1"), n1.cluster.keys.live("n1", "default")} <= before.keys()
        await trio.sleep(SETTLED_S)
        assert await own_revisions(n1) == before
        record = await n1.cluster.etcd.get(n1.cluster.keys.node("n1"))
        member = n1.cluster.member
        assert member.last_put is not None
        monkeypatch.setattr(member_mod, "HEARTBEAT_S", trio.current_time() - member.last_put[1])
        await wait_for(lambda: later(n1, record.mod_revision), "the heartbeat's put")
        monkeypatch.setattr(member_mod, "HEARTBEAT_S", math.inf)
        after = await own_revisions(n1)
        assert after == {**before, record.key: after[record.key]}
        assert (await n1.cluster.etcd.get(record.key)).version == record.version + 1


async def later(rt, mod_revision: int) -> bool:
    return (await rt.cluster.etcd.get(rt.cluster.keys.node("n1"))).mod_revision > mod_revision


async def test_a_submit_is_seen_by_another_node_through_the_live_key_and_the_record(etcd_member, tmp_path):
    """A submit of t on n1: n2 finds pid 1 under t in n1's live key and n1's record counting it live (within
    about a second; the wait is a hang guard); the record carries no pids."""
    n1, n2 = (cluster_node(tmp_path, etcd_member, name, "seen/") for name in ("n1", "n2"))
    async with running(n1, n2):
        await wait_for(lambda: listed(n2, "n1"), "n2 lists n1")
        pid = submit(n1, "t")

        async def seen() -> bool:
            node = n2.cluster.view.node("n1")
            return node is not None and node.tenants == {"t": str(pid)} and node.record.live == 1
        await wait_for(seen, "n2 sees n1's task")
        kv = await n1.cluster.etcd.get(n1.cluster.keys.live("n1", "t"))
        assert kv.value == str(pid).encode()
        record = NodeRecord.from_json((await n1.cluster.etcd.get(n1.cluster.keys.node("n1"))).value)
        assert (record.tasks, record.tenants) == ("", {})


async def listed(rt, name: str) -> bool:
    return rt.cluster.view.node(name) is not None


async def test_a_tenants_key_goes_at_its_last_exit_and_every_key_with_the_lease(etcd_member, tmp_path):
    """n1 with live tasks of t and u: killing u's deletes live/n1/u alone (t's keeps its revision); n1's live
    keys on a 2 s lease nobody refreshes (n1 died) go when etcd expires it, and n2 lists none of n1's tasks."""
    n1, n2 = (cluster_node(tmp_path, etcd_member, name, "gone/") for name in ("n1", "n2"))
    etcd, keys = n1.cluster.etcd, n1.cluster.keys
    submit(n1, "t")
    u_pid = submit(n1, "u")
    async with running(n2), etcd:
        lease = await up_on_a_short_lease(n1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.cluster.live.keep, lease)
            await wait_for(lambda: tenants_seen(n2, {"t", "u"}), "n2 sees t's and u's tasks on n1")
            t_before = await etcd.get(keys.live("n1", "t"))
            n1.commit([Kill(pid=u_pid)])
            await wait_for(lambda: tenants_seen(n2, {"t"}), "u's key deleted")
            assert (await etcd.get(keys.live("n1", "t"))).mod_revision == t_before.mod_revision
            nursery.cancel_scope.cancel()  # n1 stops: its lease is neither refreshed nor revoked
        await wait_for(lambda: tenants_seen(n2, set()), "n1's live keys gone with its lease")
        assert (await etcd.range(keys.live("n1"), prefix=True)).kvs == []
        assert n2.cluster.router.remote_tasks() == []


async def tenants_seen(rt, tenants: set[str]) -> bool:
    return set(rt.cluster.view.tenants_of("n1")) == tenants


KEYS = Keys("p/")


def event(key: bytes, value: bytes | None) -> Event:
    return Event("PUT" if value is not None else "DELETE", KeyValue(key, value or b"", 1, 2, 1), None)


def test_an_older_versions_record_lists_its_pids_until_its_node_has_live_keys():
    """Node old's record lists t's pids 4-6 (as an older version puts them): the view gives them; once a live
    key of old comes, its keys' pids instead (its tasks merged), and the record's again when it goes."""
    view = ClusterView(KEYS)
    view.apply(event(KEYS.node("old"), NodeRecord("old", 1, 1, tasks="4-6", tenants={"t": "4-6"}).to_json()))
    assert (view.tenants_of("old"), view.tasks_of("old"), view.node("old").tenants) == \
        ({"t": "4-6"}, "4-6", {"t": "4-6"})
    view.apply(event(KEYS.live("old", "u"), b"8-9"))
    view.apply(event(KEYS.live("old", "v"), b"7,10"))
    assert (view.tenants_of("old"), view.tasks_of("old"), view.node("old").tenants) == \
        ({"u": "8-9", "v": "7,10"}, "7-10", {"u": "8-9", "v": "7,10"})
    view.apply(event(KEYS.live("old", "u"), None))
    view.apply(event(KEYS.live("old", "v"), None))
    assert (view.tenants_of("old"), view.tasks_of("old"), view.pids_by_node) == ({"t": "4-6"}, "4-6", {})


def test_a_live_key_unreadable_or_past_max_pids_of_its_node_is_logged_and_dropped(caplog):
    """Live keys of n: one not ranges, one out of order and one not ASCII are each logged and not held; one
    that brings n past MAX_PIDS is refused, while n's other keys stay; a good value of a refused key is held."""
    view = ClusterView(KEYS)
    view.apply(event(KEYS.node("n"), NodeRecord("n", 1, 1).to_json()))
    view.apply(event(KEYS.live("n", "big"), f"1-{MAX_PIDS - 10}".encode()))
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
        for tenant, value in [("a", b"{]"), ("b", b"9,3"), ("c", "4\u00e9".encode()), ("d", b"2000000-2000010")]:
            view.apply(event(KEYS.live("n", tenant), value))
    assert sorted(line.split(" ")[4].rstrip(":") for line in caplog.messages if "not read" in line) == \
        ["n/a", "n/b", "n/c", "n/d"]
    assert view.tenants_of("n") == {"big": f"1-{MAX_PIDS - 10}"} and view.pids_by_node == {"n": MAX_PIDS - 10}
    view.apply(event(KEYS.live("n", "d"), b"2000000-2000009"))
    assert view.tenants_of("n")["d"] == "2000000-2000009" and view.pids_by_node == {"n": MAX_PIDS}


VALUES = [b"1-9", b"4", b"2,5-7", b"9,3", f"1-{MAX_PIDS}".encode(), None]  # None: the key deleted


LIVE_NAMES = ["m/t", "m/u", "n/t", "n/u", "n", "n/", "/t", "n/t/x"]  # NODE/TENANT under live/; malformed too


@given(st.lists(st.tuples(st.sampled_from(LIVE_NAMES), st.sampled_from(VALUES)), max_size=30))
def test_a_nodes_live_count_is_the_pids_its_held_keys_name_through_any_puts_and_deletes(changes):
    """Puts (good, out of order, past MAX_PIDS with another key held) and deletes of live keys of nodes m and
    n, well formed or not (no tenant, no node), in any order: each node's live count is the pids its held keys
    name, counted afresh, and each pid set held is a key's still in etcd, with a node and a tenant."""
    view, present = ClusterView(KEYS), set()
    for name, value in changes:
        key = KEYS.all + b"live/" + name.encode()
        view.apply(event(key, value))
        (present.add if value is not None else present.discard)(key)
    assert view.pids_by_node == {node: sum(pid_count(text, "") for text in tenants.values())
                                for node, tenants in view.live.items()}
    assert all(node and tenant and KEYS.live(node, tenant) in present
               for node, tenants in view.live.items() for tenant in tenants)


HUGE = [b"1" * 5000, b"1-" + b"2" * 4400, b"0" * 5000]  # pids past int()'s 4,300 digits


async def test_a_live_key_of_thousands_of_digits_is_logged_and_dropped_and_the_follower_goes_on(etcd_member,
                                                                                                 tmp_path, caplog):
    """Live keys of n3 holding pids of 4,400 digits and more, put before n2 starts and while it follows: n2
    logs and drops each, and goes on reading n1's live key through two submits."""
    n1, n2, n3 = (cluster_node(tmp_path, etcd_member, name, "huge/") for name in ("n1", "n2", "n3"))
    etcd, keys = n3.cluster.etcd, n3.cluster.keys
    async with etcd:
        for tenant, value in zip("abc", HUGE):
            await etcd.put(keys.live("n3", tenant), value)
        with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
            async with running(n1, n2):
                first = submit(n1, "t")
                await wait_for(lambda: tenants_are(n2, {"t": str(first)}), "n2 reads n1's live key")
                await etcd.put(keys.live("n3", "d"), HUGE[0])
                second = submit(n1, "t")
                await wait_for(lambda: tenants_are(n2, {"t": f"{first}-{second}"}), "n2 reads it again after n3/d")
                assert "n3" not in n2.cluster.view.live
    dropped = {tenant for tenant in "abcd" for line in caplog.messages if f"live pids of n3/{tenant}:" in line}
    assert dropped == set("abcd")


async def tenants_are(rt, tenants: dict[str, str]) -> bool:
    return rt.cluster.view.tenants_of("n1") == tenants


async def test_a_nodes_own_live_key_of_thousands_of_digits_on_its_lease_reads_as_one_to_put_again(etcd_member,
                                                                                                   tmp_path):
    """Live keys of n1 on its lease holding pids of 4,400 digits and more: reading its keys (as keep and a
    join's put_on do) finds each one to put again, and put_on replaces them with n1's live pids."""
    n1 = cluster_node(tmp_path, etcd_member, "n1", "own/")
    etcd, keys = n1.cluster.etcd, n1.cluster.keys
    pid = submit(n1, "t")
    async with etcd:
        lease = await etcd.grant(5)
        for tenant, value in zip(["a", "b", "t"], HUGE):
            await etcd.put(keys.live("n1", tenant), value, lease.id)
        assert await n1.cluster.live.read(lease.id) == {"a": None, "b": None, "t": None}
        await n1.cluster.live.put_on(lease)
        assert [(kv.key, kv.value) for kv in (await etcd.range(keys.live("n1"), prefix=True)).kvs] == \
            [(keys.live("n1", "t"), str(pid).encode())]
        await etcd.revoke(lease.id)


def test_a_tenant_live_on_another_up_node_by_its_live_keys_or_older_record_is_not_removed():
    """Up node b lists t's task in its live key alone, up node c (an older version) u's in its record, down
    node d w's in its record: removing t or u on a is busy naming b or c; removing w or v is let through."""
    view = ClusterView(KEYS)
    for name, tenants in [("a", {}), ("b", {}), ("c", {"u": "7"}), ("d", {"w": "9"})]:
        view.apply(event(KEYS.node(name), NodeRecord(name, 1, 1, tenants=tenants).to_json()))
    for name in "abc":
        view.apply(event(KEYS.up(name), b"1"))
    view.apply(event(KEYS.live("b", "t"), b"5"))
    shared = SharedSettings(None, None, KEYS, "a", view)
    for tenant, node in [("t", "b"), ("u", "c")]:
        with pytest.raises(Busy, match=f"tenant {tenant} has live tasks on node {node};"):
            shared.check_elsewhere([RemoveTenant(name=tenant)])
    shared.check_elsewhere([RemoveTenant(name="w"), RemoveTenant(name="v")])


def test_an_unreadable_live_key_is_logged_once_for_a_reason_until_deleted_or_read(caplog):
    """Live key n/a put 9,3 three times and read again by two reloads: logged once; put 8,2 (another
    reason): once more; read as 5, then 9,3 again: once more; deleted, then 9,3: once more."""
    view, key = ClusterView(KEYS), KEYS.live("n", "a")
    bad, other = KeyValue(key, b"9,3", 1, 2, 1), KeyValue(key, b"8,2", 1, 3, 1)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
        for _ in range(3):
            view.apply(event(key, b"9,3"))
        view.load([bad], 2)
        view.load([bad], 2)
        assert len(caplog.messages) == 1
        view.load([other], 3)
        view.apply(event(key, b"5"))
        view.apply(event(key, b"9,3"))
        view.apply(event(key, None))
        view.apply(event(key, b"9,3"))
    assert [message.split("'")[1] for message in caplog.messages] == ["3", "2", "3", "3"]  # the part out of order
    assert view.tenants_of("n") == {} and list(view.unread_live) == ["n/a"]
