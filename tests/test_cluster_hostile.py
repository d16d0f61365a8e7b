"""Tiers 1-2: values in etcd that another version or a person wrote never take a daemon down.

A node reads other nodes' records, task keys and settings entries from etcd (cluster/peerdata.py
checks them): a value nested too deep for Python, a field of the wrong type or out of bounds, pid
ranges naming millions of pids, is logged and skipped (a settings entry: refused on every node
alike), where before it raised in the watch loop, the failover task or at every start.
"""
import json
import logging

import pytest
import trio

from apeinxfs.cluster.etcd_records import Event, KeyValue
from apeinxfs.cluster.peerdata import MAX_PIDS, Unreadable
from apeinxfs.cluster.records import Keys, NodeRecord
from apeinxfs.cluster.taskkeys import TaskKey
from apeinxfs.cluster.view import ClusterView
from apeinxfs.kernel.events import Shared
from test_guarded_retry import LostAnswerEtcd
from test_shared_settings import node

KEYS = Keys("apx/")
DEEP = b"[" * 100_000
GOOD = {"name": "b", "epoch": 1, "seen_us": 1_764_000_000_000_000, "slots_free": 3, "tasks": "4-9,12",
        "models": ["m"], "tenants": {"t": "4-9"}, "advertise": "10.0.0.2:7000"}


def put(key: bytes, value: bytes, revision: int = 5) -> Event:
    return Event(kind="PUT", kv=KeyValue(key, value, revision, revision, 1), prev=None)


def test_a_good_record_reads_back():
    """A record of the shape a node writes is read as written."""
    record = NodeRecord.from_json(json.dumps(GOOD).encode())
    assert (record.slots_free, record.tasks, record.models, record.tenants) == (3, "4-9,12", ("m",), {"t": "4-9"})


@pytest.mark.parametrize("field, value", [
    ("slots_free", "a"), ("slots_free", -1), ("seen_us", 1e27), ("seen_us", 10 ** 30), ("epoch", True),
    ("models", [[1]]), ("models", "m"), ("name", 5), ("advertise", ["x"]),
    ("tasks", 5), ("tasks", "a-b"), ("tasks", "9-4"), ("tasks", "4,3"), ("tasks", "²"),
    ("tasks", f"0-{MAX_PIDS}"), ("tenants", {"t": 5}), ("tenants", ["t"]), ("tenants", {"t": "0-999999999999"})])
def test_a_record_with_a_field_its_readers_cannot_use_is_unreadable(field, value):
    """Each field a reader relies on (counts, names, pid ranges and their size) is checked: Unreadable, a ValueError."""
    with pytest.raises(Unreadable):
        NodeRecord.from_json(json.dumps({**GOOD, field: value}).encode())


@pytest.mark.parametrize("kind", ["nodes", "tasks"])
def test_the_view_skips_a_value_nested_too_deep_with_a_warning(kind, caplog):
    """A nodes/ or tasks/ value nested past Python's recursion limit is logged and skipped, not raised."""
    view = ClusterView(KEYS)
    key = KEYS.node("b") if kind == "nodes" else KEYS.task(7)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
        view.apply(put(key, DEEP))
    assert "b" not in view.records and 7 not in view.tasks
    assert "cannot read" in caplog.text


@pytest.mark.parametrize("value", [DEEP, b"[1]", b'{"owner": 5, "epoch": 1, "uid": 0, "spec": {}}', b'{"owner": "b"}'])
def test_fence_skips_a_task_key_it_cannot_read(tmp_path, caplog, value):
    """A tasks/ key that is not a task key (too deep, not an object, a wrong type, fields missing) or whose
    name is not a pid is logged and passed over by `fence`; the failover task goes on."""
    rt = node(tmp_path)
    failover, etcd = rt.cluster.failover, LostAnswerEtcd()
    failover.etcd = etcd
    for name in (rt.cluster.keys.task(7), rt.cluster.keys.tasks + b"abc"):
        etcd.keys[name] = KeyValue(name, value, 7, 7, 1)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.failover"):
        trio.run(failover.fence)
    assert caplog.text.count("cannot read") == 2
    assert not failover.doubtful and not failover.written


def test_a_settings_entry_with_a_field_of_the_wrong_type_is_refused_not_raised(tmp_path):
    """An entry whose event has a list where a name goes is refused (journaled as a refused Shared entry), so
    the watch loop and every later start go on."""
    rt = node(tmp_path)
    value = json.dumps({"node": "x", "events": [["removetenant", json.dumps({"name": [1]})]]}).encode()
    rt.cluster.shared.apply(KeyValue(b"t/settings/x-1", value, 101, 101, 1))
    shared = [row[-1] for row in rt.journal.replay() if isinstance(row[-1], Shared)]
    assert shared[-1].revision == 101 and "unreadable settings entry" in shared[-1].refused
    assert rt.kernel.shared.revision == 101


@pytest.mark.parametrize("value", [DEEP, b'{"node": "x", "events": [["removetenant", "' + b"[" * 5000 + b'"]]}'])
def test_a_settings_entry_nested_too_deep_is_refused(tmp_path, value):
    """An entry nested past Python's recursion limit, whole or in an event's body, is refused like any unreadable one."""
    rt = node(tmp_path)
    rt.cluster.shared.apply(KeyValue(b"t/settings/x-1", value, 101, 101, 1))
    shared = [row[-1] for row in rt.journal.replay() if isinstance(row[-1], Shared)]
    assert shared[-1].revision == 101 and shared[-1].refused


def test_a_task_key_of_the_right_shape_reads_back():
    """The check lets a task key as a node writes it through."""
    key = TaskKey(owner="b", epoch=1, uid=0, spec={"name": "j"})
    assert TaskKey.from_json(key.to_json()) == key
