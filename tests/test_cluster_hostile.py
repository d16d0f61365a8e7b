"""Tiers 1-2: values in etcd that another version or a person wrote never take a daemon down.

A node reads other nodes' records, task keys and settings entries from etcd (cluster/peerdata.py
checks them): a value nested too deep for Python, a field of the wrong type or out of bounds, pid
ranges naming millions of pids, is logged and skipped (a settings entry: refused on every node
alike), where before it raised in the watch loop, the failover task or at every start.
"""
import json
import logging

import attrs
import pytest
import trio

from apeinxfs.cluster import peerdata
from apeinxfs.cluster.etcd_records import EtcdError, Event, KeyValue
from apeinxfs.cluster.pids import grant_block
from apeinxfs.cluster.peerdata import MAX_DEPTH, MAX_PIDS, Unreadable
from apeinxfs.cluster.prefixes import _filter
from apeinxfs.cluster.records import Keys, NodeRecord
from apeinxfs.cluster.replicas import Replica
from apeinxfs.cluster.taskkeys import TaskKey
from apeinxfs.cluster.view import ClusterView
from apeinxfs.kernel.events import Shared
from apeinxfs.kernel.spec import TaskSpec
from test_guarded_retry import AdoptingMeanwhileEtcd, LostAnswerEtcd
from test_shared_settings import node

KEYS = Keys("apx/")
DEEP = b"[" * 100_000  # past Python's recursion limit, and peerdata's
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


def refused_once(rt, value: bytes, caplog) -> Shared:
    """The Shared event journaled for settings entry `value` applied at revision 101, asserting one log line."""
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.shared"):
        rt.cluster.shared.apply(KeyValue(b"t/settings/x-1", value, 101, 101, 1))
    assert [record.getMessage().startswith("cluster: unreadable settings entry") for record in caplog.records] == [True]
    return [row[-1] for row in rt.journal.replay() if isinstance(row[-1], Shared)][-1]


def test_a_settings_entry_with_a_field_of_the_wrong_type_is_refused_not_raised(tmp_path, caplog):
    """An entry whose event has a list where a name goes is refused (journaled as a refused Shared entry) and
    logged once, so the watch loop and every later start go on."""
    rt = node(tmp_path)
    value = json.dumps({"node": "x", "events": [["removetenant", json.dumps({"name": [1]})]]}).encode()
    shared = refused_once(rt, value, caplog)
    assert shared.revision == 101 and "unreadable settings entry (RemoveTenant: TypeError" in shared.refused
    assert rt.kernel.shared.revision == 101


@pytest.mark.parametrize("value", [DEEP, b'{"node": "x", "events": [["removetenant", "' + b"[" * 5000 + b'"]]}'])
def test_a_settings_entry_nested_too_deep_is_refused(tmp_path, value, caplog):
    """An entry nested past Python's recursion limit, whole or in an event's body, is refused and logged once
    like any unreadable one."""
    rt = node(tmp_path)
    shared = refused_once(rt, value, caplog)
    assert shared.revision == 101 and "unreadable settings entry" in shared.refused


def test_a_task_key_of_the_right_shape_reads_back():
    """The check lets a task key as a node writes it through."""
    key = TaskKey(owner="b", epoch=1, uid=0, spec={"name": "j"})
    assert TaskKey.from_json(key.to_json()) == key


@pytest.mark.parametrize("kind, body", [("failed", {"pid": 99, "reason": "x"}), ("fence", {"held": True, "reason": "x"})])
def test_a_settings_entry_of_an_event_that_is_no_settings_change_is_refused(tmp_path, kind, body, caplog):
    """Only settings changes go through the log: an entry holding an engine's or the cluster's own event is
    refused and logged once, and the kernel is not fenced nor a task failed on every node."""
    rt = node(tmp_path)
    value = json.dumps({"node": "x", "events": [[kind, json.dumps(body)]]}).encode()
    assert "not settings changes" in refused_once(rt, value, caplog).refused and not rt.kernel.moves.fenced


def test_nesting_is_bounded_alike_at_any_depth_of_the_caller():
    """MAX_DEPTH levels read and one more do not, whether the reader is called shallow or 500 frames deep
    (Python's own limit depends on the caller's stack: nodes would disagree on an entry)."""
    def at_depth(frames: int, data: bytes):
        return at_depth(frames - 1, data) if frames else peerdata.loads(data)
    fits, over = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    for frames in (0, 500):
        assert at_depth(frames, fits) is not None
        with pytest.raises(Unreadable):
            at_depth(frames, over)
    assert peerdata.loads(b'{"a": "[[[[' + b"[" * 100 + b'"}') == {"a": "[[[[" + "[" * 100}  # inside a string


@pytest.mark.parametrize("spec", [{}, {"name": 5}, {"name": "j", "sampling": [1]}])
def test_a_task_key_whose_spec_is_no_tasks_is_unreadable(spec):
    """A key whose spec could not be built into a task when it is moved or adopted is unreadable when read."""
    with pytest.raises(Unreadable):
        TaskKey.from_json(json.dumps({"owner": "b", "epoch": 1, "uid": 0, "spec": spec}).encode())


@pytest.mark.parametrize("uid", [2 ** 64, 2 ** 32 - 1, -1])
def test_a_task_key_whose_uid_is_no_id_is_unreadable_and_the_view_skips_it(uid, caplog):
    """A key whose uid does not fit a uid_t (less "no id") is unreadable: the view logs it and does not list it."""
    value = json.dumps({"owner": "b", "epoch": 1, "uid": uid, "spec": {"name": "j"}}).encode()
    with pytest.raises(Unreadable, match="uid"):
        TaskKey.from_json(value)
    view = ClusterView(KEYS)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.view"):
        view.apply(put(KEYS.task(7), value))
    assert 7 not in view.tasks and "cannot read" in caplog.text


def test_a_key_that_cannot_be_adopted_is_logged_once_and_the_next_is_adopted(tmp_path, caplog):
    """Of two keys moved here, the first with a uid no event carries (a key from before the bound): it is
    logged once over two passes and left alone, and the second is adopted."""
    rt = node(tmp_path)
    failover = rt.cluster.failover
    failover.etcd = AdoptingMeanwhileEtcd(trio.lowlevel.checkpoint)
    spec = attrs.asdict(TaskSpec(name="j", tenant="default"))
    bad, good = (TaskKey(owner=failover.here, epoch=2, uid=uid, spec=spec, origin="x") for uid in (2 ** 64, 0))
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.failover"):
        for _ in range(2):
            trio.run(failover.adopt, [(5001, bad, 500), (5002, good, 501)])
    assert 5001 not in rt.kernel.tasks and not rt.kernel.tasks[5002].done
    assert caplog.text.count("cannot be adopted") == 1


@pytest.mark.parametrize("value", [b'{"tokens": Infinity, "output": ""}', b'{"tokens": 1e400, "output": ""}',
                                   b'{"tokens": -1, "output": ""}', b'{"tokens": 3, "output": 5}'])
def test_a_replica_that_is_no_count_and_output_is_unreadable(value):
    """A replicated output whose tokens are not a count (Infinity overflowed adoption) or whose output is no text."""
    with pytest.raises(Unreadable):
        Replica.from_json(value)


@pytest.mark.parametrize("prefixes", ["=", "A", "AAAA", "not base64!"])
def test_a_record_whose_prefix_filter_is_no_filter_is_unreadable(prefixes):
    """A prefix filter that is not base64 of a power of two of 8 bytes or more would fail every placement."""
    with pytest.raises(Unreadable):
        NodeRecord.from_json(json.dumps({**GOOD, "prefixes": prefixes}).encode())
    assert NodeRecord.from_json(json.dumps({**GOOD, "prefixes": _filter([b"k" * 16])}).encode()).prefixes


class CounterEtcd:
    """An etcd holding only the pid counter, as `value`; a txn is never reached by these tests."""

    def __init__(self, value: bytes):
        self.value = value

    async def get(self, key: bytes) -> KeyValue:
        return KeyValue(key, self.value, 3, 3, 1)

    async def txn(self, txn, repeatable: bool = False):
        raise AssertionError("a counter that is no pid must not be moved on")


@pytest.mark.parametrize("value", [b"1" * 5000, b"abc", b"-5", "\u00b2".encode(), b"1" * 20])
def test_a_pid_counter_that_is_no_pid_is_an_etcd_error_in_words_not_a_crash(value):
    """The cluster's pid counter written by hand as no pid (thousands of digits, words, negative, a unicode
    digit): a block's grant fails as an EtcdError naming the key, which keep_pids notes and retries, where a
    ValueError ended the cluster's tasks and with them the daemon."""
    with pytest.raises(EtcdError) as refused:
        trio.run(grant_block, CounterEtcd(value), KEYS.pids, 1, 100)
    assert "pid counter" in refused.value.reason and "not a pid" in refused.value.reason, refused.value.reason
