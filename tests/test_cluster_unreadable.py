"""Tiers 1-3: a peer's record that turns unreadable keeps its last record read in the view, marked and logged once.

A node record this version cannot read (cluster/peerdata.py) arriving on the watch of a real etcd
(one member), through the daemon's own follower (`Cluster.follow`), leaves the node's last record
read in the view with `Record: unreadable since revision R: REASON` in its /nodes status and one
log line however many such puts come; a reload of the same read does the same; a good record
clears the mark with one more line. View-level cases (a delete, a reload) need no etcd.
"""
import json
import logging

import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Event, KeyValue
from apeinxfs.cluster.view import ClusterView
from apeinxfs.nodes import members
from etcdcluster import EtcdCluster
from test_cluster_hostile import DEEP, GOOD, KEYS, put
from test_etcd_client import wait_for
from test_shared_settings import node

WRONG = json.dumps({**GOOD, "slots_free": "a"}).encode()  # what another version might write: a count as a string


def status_rows(view: ClusterView, name: str) -> dict[str, str]:
    """/nodes/NAME/status as the view renders it, by key."""
    return dict(line.split(":\t", 1) for line in members.status(view.node(name)).splitlines())


@pytest.fixture(scope="module")
def etcd_member(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1) as running:
        yield running


async def test_a_record_turned_unreadable_on_the_watch_keeps_the_last_one_marked_and_logged_once(
        etcd_member, tmp_path, caplog):
    """Through the follower: the last good record stays, its status marked since the first unreadable put
    (the latest reason), one log line for three such puts; a reload agrees; a good record clears it."""
    cluster = node(tmp_path).cluster
    keys, cluster.etcd = cluster.keys, Etcd(etcd_member.endpoints)

    async def seen(revision: int) -> bool:
        return cluster.view.revision >= revision
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
        async with cluster.etcd, trio.open_nursery() as nursery:
            nursery.start_soon(cluster.follow, nursery)
            good = await cluster.etcd.put(keys.node("b"), json.dumps(GOOD).encode())
            await wait_for(lambda: seen(good), "the good record")
            first = await cluster.etcd.put(keys.node("b"), WRONG)
            for value in (WRONG, DEEP):
                last = await cluster.etcd.put(keys.node("b"), value)
            await wait_for(lambda: seen(last), "the unreadable records")
            rows = status_rows(cluster.view, "b")
            assert rows["SlotsFree"] == "3"  # the last record read
            assert rows["Record"] == f"unreadable since revision {first}: nested deeper than 64"
            assert caplog.text.count("cannot read node b's record") == 1 and "last one read is kept" in caplog.text

            watched = cluster.view.node("b")
            found = await cluster.etcd.range(keys.all, prefix=True)
            cluster.view.load(found.kvs, found.revision)
            assert cluster.view.node("b") == watched and caplog.text.count("cannot read node b") == 1

            again = await cluster.etcd.put(keys.node("b"), json.dumps({**GOOD, "slots_free": 5}).encode())
            await wait_for(lambda: seen(again), "the good record again")
            rows = status_rows(cluster.view, "b")
            assert (rows["SlotsFree"], rows["Record"]) == ("5", "ok")
            assert caplog.text.count("node b's record is readable again") == 1
            nursery.cancel_scope.cancel()


def test_a_reload_lists_no_node_whose_record_it_never_read(caplog):
    """A view that first reads a node's record unreadable does not list it, but marks it (logged once)."""
    view = ClusterView(KEYS)
    kv = KeyValue(KEYS.node("b"), WRONG, 7, 7, 1)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
        view.load([kv], 7)
        view.load([kv], 8)
    assert view.node("b") is None and view.unreadable["b"].revision == 7
    logged = [record.getMessage() for record in caplog.records if "record" in record.getMessage()]
    assert len(logged) == 1 and "cannot read node b's record (not listed)" in logged[0], logged


def test_a_deleted_record_takes_its_mark_with_it():
    """A node whose unreadable record is deleted is gone, mark and all; a good record put later is read plainly."""
    view = ClusterView(KEYS)
    view.apply(put(KEYS.node("b"), json.dumps(GOOD).encode(), 5))
    view.apply(put(KEYS.node("b"), WRONG, 6))
    assert view.node("b").unreadable.revision == 6
    view.apply(Event(kind="DELETE", kv=KeyValue(KEYS.node("b"), b"", 0, 7, 0), prev=None))
    assert view.node("b") is None and view.unreadable == {}
    view.apply(put(KEYS.node("b"), json.dumps(GOOD).encode(), 8))
    assert view.node("b").unreadable is None
