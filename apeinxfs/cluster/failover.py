"""Failover with fencing: a dead node's unfinished tasks run again elsewhere, and end exactly once.

`Failover(cluster)` (held as `Cluster.failover`) runs two loops on every node:
- `keep`: once joined (and again after each rejoin) it `fence`s: reads every task key and
  stops, without an exit, each live task here that the leader moved away meanwhile
  (events.MovedAway), and learns the revisions of the keys this node owns. Then it follows
  the trace: the `submit` and `exit` lines since the last look (GATHER_S after a line
  woke it) go to etcd in one txn (`record`): a new task's key (taskkeys.py) is put; an exit deletes the key (or marks a
  moved task's exited), guarded on the key's revision as this node last wrote it, so a
  node whose task was moved reports nothing. A failed guard is dropped.
- `watch`: every MOVE_S, on the leader, `move` each unfinished task whose owner's `up`
  key is gone to the best up node (placement.rank) in a txn guarded on the task key's
  revision and on the owner's `up` key being absent (a node that rejoined keeps its
  tasks): owner = the new node, epoch + 1. On every node, `adopt` each task key naming
  this node that it does not run: events.Adopt starts it under the same pid, from the
  output it last replicated (replicas.py) or afresh, with a `failover` line.
Without a quorum the loops note why and try again; a task submitted in the moment
before its key is written runs here only (it is not moved if this node dies then).
Not here: the kernel's events (kernel.py), the keys' format (taskkeys.py).
"""
import collections
import logging

import attrs
import trio

from ..kernel.errors import ApeinxError
from ..kernel.events import Adopt, MovedAway
from .etcd_records import TXN_OPS, EtcdError, Txn
from .member import RETRY_S
from .placement import rank
from .replicas import Replica, replica_of
from .taskkeys import TaskKey, of_task

log = logging.getLogger(__name__)
MOVE_S = 1.0  # how often the leader looks for tasks of nodes gone, and a node for tasks moved to it
TRACE_S = 1.0  # the most the recorder waits for a trace line before looking again
GATHER_S = 0.02  # how long the recorder lets trace lines gather before a txn


class Failover:
    """This node's part in moving tasks: their keys in etcd, the leader's moves, adoption, fencing."""

    def __init__(self, cluster) -> None:
        self.cluster, self.rt, self.here = cluster, cluster.rt, cluster.name
        self.etcd, self.keys, self.member = cluster.etcd, cluster.keys, cluster.member
        self.written: dict[int, tuple[TaskKey, int]] = {}  # pid -> (its key, its revision) as this node wrote it
        self.seq = 0  # the trace line recorded up to

    async def keep(self) -> None:
        """Fence after each join, and record the trace's submits and exits, until cancelled."""
        fenced, self.seq = 0, self.rt.kernel.trace.seq  # the lines a replay rebuilt were recorded before
        while True:
            try:
                if self.member.epoch != fenced:
                    epoch = self.member.epoch
                    await self.fence()
                    fenced = epoch
                if fenced:
                    await self.record()
            except EtcdError as error:  # no quorum: the same lines next time
                self.member.note(error)
                await trio.sleep(RETRY_S)
            if not fenced or self.rt.kernel.trace.seq == self.seq:  # else lines came meanwhile: at once
                await self.rt.wait_for("trace", TRACE_S)
            await trio.sleep(GATHER_S)  # the writes of the next moment go in the same txn

    async def fence(self) -> None:
        """Stop the live tasks here that were moved to another node; learn the keys this node owns."""
        found = await self.etcd.range(self.keys.tasks, prefix=True)
        tasks = self.rt.kernel.tasks
        for kv in found.kvs:
            pid, key = int(kv.key.rsplit(b"/", 1)[1]), TaskKey.from_json(kv.value)
            if key.owner == self.here:
                self.written[pid] = key, kv.mod_revision
            elif (task := tasks.get(pid)) is not None and not task.done:
                self.written.pop(pid, None)
                log.warning("cluster: task %d was moved to node %s while this node had lost its lease: stopped here",
                            pid, key.owner)
                self.commit([MovedAway(pid=pid, node=key.owner)])

    async def record(self) -> None:
        """The submits and exits of the trace lines since the last look, to etcd: one txn for up to
        TXN_OPS of them (a write's lines, most often); the lines are read again if etcd fails."""
        trace = self.rt.kernel.trace
        upto, lines = trace.seq, trace.lines_after(self.seq)
        new: dict[int, TaskKey] = {}
        ended: list[int] = []
        for line in lines.splitlines():
            _, _, kind, pid, _ = line.split(b",", 4)
            if kind == b"submit" and (task := self.rt.kernel.tasks.get(int(pid))) is not None \
                    and int(pid) not in self.written:
                new[int(pid)] = of_task(task, self.here)
            elif kind == b"exit" and new.pop(int(pid), None) is None and int(pid) in self.written:
                ended.append(int(pid))
        news = list(new.items())
        while news or ended:
            puts = news[:TXN_OPS]
            ends, news, ended = ended[:TXN_OPS - len(puts)], news[len(puts):], ended[TXN_OPS - len(puts):]
            await self.report(dict(puts), ends)
        self.seq = upto

    async def report(self, new: dict[int, TaskKey], ended: list[int]) -> None:
        """Put the keys of `new` tasks and end those of `ended` in one txn; if an end's guard fails (the
        task was moved), the puts again alone and each end alone, the failed ones dropped."""
        txn = Txn()
        for pid, key in new.items():
            txn.put(self.keys.task(pid), key.to_json())
        for pid in ended:
            self.end(txn, pid)
        result = await self.etcd.txn(txn)
        if not result.succeeded:
            if new:
                await self.report(new, [])
            for pid in ended:
                if not (await self.etcd.txn(self.end(Txn(), pid))).succeeded:
                    log.warning("cluster: the exit of task %d is not reported: it was moved away", pid)
                self.written.pop(pid, None)
            return
        for pid, key in new.items():
            self.written[pid] = key, result.revision
        for pid in ended:
            self.written.pop(pid, None)

    def end(self, txn: Txn, pid: int) -> Txn:
        """`txn` guarded on task `pid`'s key being as this node wrote it, deleting it (or, for a moved
        task, marking it exited)."""
        key, revision = self.written[pid]
        name = self.keys.task(pid)
        txn.when(name, "mod_revision", "==", revision).delete(self.keys.output(pid))
        return txn.put(name, attrs.evolve(key, exited=True).to_json()) if key.origin else txn.delete(name)

    async def watch(self) -> None:
        """Every MOVE_S: the leader moves the tasks of nodes gone; every node adopts those moved to it."""
        while True:
            await trio.sleep(MOVE_S)
            try:
                if self.member.leading:
                    await self.move()
                await self.adopt()
            except EtcdError as error:
                self.member.note(error)

    async def move(self) -> None:
        """Move each unfinished task of a node that is not up to the best up node, in a guarded txn."""
        view, pending = self.cluster.view, collections.Counter[str]()  # tasks moved to each node in this pass
        for pid, (key, revision) in list(view.tasks.items()):
            if key.exited or key.owner in view.up:
                continue
            models = frozenset({self.rt.kernel.models.name_of(key.spec_of())})
            choices = [c for c in rank(view.nodes(), models, self.here, pending) if c.node != key.owner]
            if not choices:
                continue
            name = self.keys.task(pid)
            moved = key.moved_to(choices[0].node)
            txn = (Txn().when(name, "mod_revision", "==", revision).when(self.keys.up(key.owner), "version", "==", 0)
                   .put(name, moved.to_json()))
            if (await self.etcd.txn(txn)).succeeded:
                pending[moved.owner] += 1
                log.info("cluster: task %d of node %s (down) moved to node %s, epoch %d", pid, key.owner,
                         moved.owner, moved.epoch)

    async def adopt(self) -> None:
        """Start each task moved to this node that it does not run (the same pid), from its replicated
        output where there is one, else afresh."""
        tasks = self.rt.kernel.tasks
        for pid, (key, revision) in list(self.cluster.view.tasks.items()):
            if key.owner != self.here or key.exited or pid in self.written or (pid in tasks and not tasks[pid].done):
                continue
            spec = key.spec_of()
            replica = await replica_of(self.etcd, self.keys, pid, spec) or Replica(0, "")
            self.written[pid] = key, revision
            self.commit([Adopt(pid=pid, spec=spec, origin=key.origin, epoch=key.epoch, uid=key.uid,
                               output=replica.output, tokens=replica.tokens)])

    def commit(self, events: list[Adopt | MovedAway]) -> None:
        """Commit `events`; a refusal (degraded, an unknown model or tenant here) is logged."""
        try:
            self.rt.commit(events)
        except ApeinxError as error:
            log.warning("cluster: %s refused: %s", type(events[0]).__name__, error.reason)

