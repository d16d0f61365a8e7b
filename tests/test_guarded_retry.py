"""Tier 2: failover's state read before an await, used after it (cluster/failover.py): the guards the
recorder sends again after a lost answer are built afresh from `fence`'s read of the task keys, so an end
that landed unanswered is not sent again, nor reported as a task moved away; and a task adopted while that
read was on its way is not stopped by it; an adoption whose commit met a bug is adopted at the loop's restart. A fake etcd holds the keys; no etcd runs."""
import logging

import attrs
import pytest
import trio

from apeinxfs.cluster.etcd import RangeResult
from apeinxfs.cluster.etcd_records import KeyValue, TxnResult, Unavailable
from apeinxfs.cluster.taskkeys import TaskKey, of_task
from apeinxfs.kernel.events import Failed, PidBlock, Submit
from apeinxfs.kernel.spec import TaskSpec
from test_shared_settings import node


class LostAnswerEtcd:
    """Task keys by name; a txn checks its mod_revision guards against them. `lose_next`: the next txn takes
    effect as a delete of `lose_key` and its answer is lost (Unavailable, as the client says it)."""

    def __init__(self):
        self.keys: dict[bytes, KeyValue] = {}
        self.txns, self.lose_key = 0, None

    async def range(self, key: bytes, prefix: bool = False) -> RangeResult:
        return RangeResult([kv for name, kv in sorted(self.keys.items()) if name.startswith(key)], 100)

    async def txn(self, txn) -> TxnResult:
        self.txns += 1
        if self.lose_key is not None:
            del self.keys[self.lose_key]
            self.lose_key = None
            raise Unavailable("etcd: /kv/txn: outcome unknown, no answer from http://127.0.0.1:1 within 8s")
        held = all((self.keys[c.key].mod_revision if c.key in self.keys else 0) == c.operand for c in txn.compares)
        return TxnResult(succeeded=held, revision=101, responses=[])


def test_an_end_that_landed_unanswered_is_not_sent_again_nor_called_moved(tmp_path, caplog):
    """Task 1's key was put at revision 7; its exit's delete lands but the answer is lost; after `fence`
    reads the keys again (as `keep` does after a failed txn) the recorder sends nothing more for it and
    logs no 'moved away'."""
    rt = node(tmp_path)
    rt.commit([PidBlock(first=1, count=10)])
    [pid] = rt.commit([Submit(spec=TaskSpec(name="j"))])
    failover, etcd = rt.cluster.failover, LostAnswerEtcd()
    failover.etcd, name = etcd, rt.cluster.keys.task(pid)
    etcd.keys[name] = KeyValue(name, of_task(rt.kernel.tasks[pid], failover.here).to_json(), 7, 7, 1)
    trio.run(failover.fence)
    assert failover.written[pid][1] == 7
    failover.seq = rt.kernel.trace.seq
    rt.commit([Failed(pid=pid, reason="engine down")])  # an `exit` line for the recorder

    etcd.lose_key = name
    with pytest.raises(Unavailable):
        trio.run(failover.record)
    sent = etcd.txns
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.failover"):
        trio.run(failover.fence)
        trio.run(failover.record)
    assert etcd.txns == sent
    assert "moved away" not in caplog.text
    assert pid not in failover.written and name not in etcd.keys


class AdoptingMeanwhileEtcd(LostAnswerEtcd):
    """Reads the keys as they are when asked; `meanwhile()` runs before the answer comes back (the watch
    brought a later change, and failover's other loop acted on it)."""

    def __init__(self, meanwhile):
        super().__init__()
        self.meanwhile = meanwhile

    async def range(self, key: bytes, prefix: bool = False) -> RangeResult:
        found = await super().range(key, prefix)
        await self.meanwhile()
        return found

    async def get(self, key: bytes) -> None:
        return None  # no replicated output


def test_a_task_adopted_while_fence_reads_the_keys_is_not_stopped_as_moved_away(tmp_path):
    """Task 5001 of node x (down) is moved here at revision 500 and adopted while `fence`'s read, made at
    revision 499 when its key still named x, is on its way: fence leaves it running."""
    rt = node(tmp_path)
    rt.commit([PidBlock(first=1, count=10)])
    failover, pid = rt.cluster.failover, 5001
    before = TaskKey(owner="x", epoch=1, uid=0, spec=attrs.asdict(TaskSpec(name="j", tenant="default")))
    etcd = AdoptingMeanwhileEtcd(lambda: failover.adopt([(pid, before.moved_to(failover.here), 500)]))
    name, failover.etcd = rt.cluster.keys.task(pid), etcd
    etcd.keys[name] = KeyValue(name, before.to_json(), 499, 499, 1)
    trio.run(failover.fence)
    assert not rt.kernel.tasks[pid].done
    assert failover.written[pid][1] == 500


def test_an_adoption_whose_commit_met_a_bug_is_adopted_when_the_loop_runs_again(tmp_path, monkeypatch):
    """The runtime's commit raises a bug (not a refusal) at task 5001's adoption: the next `adopt`, as the
    supervisor's restart of the loop makes it, adopts the task."""
    rt = node(tmp_path)
    rt.commit([PidBlock(first=1, count=10)])
    failover, pid = rt.cluster.failover, 5001
    failover.etcd = AdoptingMeanwhileEtcd(lambda: None)
    moved = TaskKey(owner="x", epoch=1, uid=0, spec=attrs.asdict(TaskSpec(name="j", tenant="default")))
    mine = [(pid, moved.moved_to(failover.here), 500)]
    commit = rt.commit

    def buggy(events):
        monkeypatch.setattr(rt, "commit", commit)
        raise ValueError("a bug in the commit")
    monkeypatch.setattr(rt, "commit", buggy)
    with pytest.raises(ValueError):
        trio.run(failover.adopt, mine)
    trio.run(failover.adopt, mine)
    assert pid in rt.kernel.tasks and not rt.kernel.tasks[pid].done
    assert failover.written[pid][1] == 500
