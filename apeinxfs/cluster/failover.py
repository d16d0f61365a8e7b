"""Failover with fencing: a dead node's unfinished tasks run again elsewhere, and end exactly once.

`Failover(cluster)` (held as `Cluster.failover`) runs two loops on every node:
- `keep`: once joined (again after each rejoin, after a failed txn, and once a hold may be
  released) it `fence`s: reads every task key and stops, without an exit, each live task
  here that the leader moved away meanwhile (events.MovedAway), learns the revisions of the
  keys this node owns, ends those of its tasks that have ended and puts those of its live
  tasks that have none; then fencing.py may release the engines. Then it follows the
  trace: the `submit` and `exit` lines since the last look (GATHER_S after a line woke it,
  at once when a submit waits) go to etcd in one txn (`record`): a new task's key
  (taskkeys.py) is put; an exit deletes the key (or marks a moved task's exited), guarded
  on the key's revision as this node last wrote it, so a node whose task was moved
  reports nothing. A failed guard is dropped (guarded.py packs the writes into txns).
- `settle`, awaited by a submit write that ran here before its reply: returns once its
  tasks' keys are in etcd; else, after SETTLE_S, ends them (events.Failed) and raises
  TryAgain (EAGAIN): an acknowledged task can always be moved.
- `watch`: every MOVE_S, on the leader, `move` each unfinished task whose owner's `up`
  key is gone to the best up node (placement.rank) in a txn guarded on the task key's
  revision and on the owner's `up` key being absent (a node that rejoined keeps its
  tasks): owner = the new node, epoch + 1. On every node, `adopt` each task key naming
  this node that it does not run: events.Adopt starts it under the same pid, from the
  output it last replicated (replicas.py) or afresh, with a `failover` line; and `forget`
  the keys of tasks moved here that exited and were reaped since (they are kept, marked
  exited, only so that every node finds where such a task ran).
Without a quorum the loops note why and try again, and submits fail with EAGAIN.
Not here: the kernel's events (kernel.py), the keys' format (taskkeys.py), the hold (fencing.py).
"""
import collections
import logging
import math

import attrs
import trio

from ..kernel.errors import ApeinxError, TryAgain
from ..kernel.events import Adopt, Failed, MovedAway
from ..ratelog import RateLog
from .etcd_records import EtcdError, Txn
from .guarded import write_each
from .member import RETRY_S
from .placement import rank
from .records import pid_ranges, unchanged_at
from .replicas import Replica, replica_of
from .taskkeys import TaskKey, of_task

log = logging.getLogger(__name__)
MOVE_S = 1.0  # how often the leader looks for tasks of nodes gone, and a node for tasks moved to it
TRACE_S = 1.0  # the most the recorder waits for a trace line before looking again
GATHER_S = 0.02  # how long the recorder lets trace lines gather before a txn when no submit waits for it
SETTLE_S = 3.0  # the most a submit waits for its tasks' keys (+ SETTLE_LINE_S a line): under the peers' 5 s
SETTLE_LINE_S = 0.001


class Failover:
    """This node's part in moving tasks: their keys in etcd, the leader's moves, adoption, fencing."""

    def __init__(self, cluster) -> None:
        self.cluster, self.rt, self.here = cluster, cluster.rt, cluster.name
        self.etcd, self.keys, self.member = cluster.etcd, cluster.keys, cluster.member
        self.written: dict[int, tuple[TaskKey, int]] = {}  # pid -> (its key, its revision) as this node wrote it
        self.seq = 0  # the trace line recorded up to
        self.recording = False  # `keep` has started: `seq` counts from its first start, not a restart's
        self.waiting = 0  # submits waiting for their keys (settle): the recorder does not gather then
        self.doubtful = False  # a txn failed, its outcome maybe unknown: `fence` reads the keys again
        self.unadoptable = RateLog(log, burst=1, window_s=math.inf)  # each key no Adopt can carry: logged once

    async def keep(self) -> None:
        """Fence after each join, and record the trace's submits and exits, until cancelled."""
        fenced = 0  # a restart (supervise.py) fences again, as after a join, and records from where it was
        if not self.recording:
            self.seq, self.recording = self.rt.kernel.trace.seq, True  # the lines a replay rebuilt were recorded before
        fencing = self.cluster.fencing
        while True:
            fencing.check()
            try:
                if self.member.epoch != fenced or self.doubtful or (fencing.held and not fencing.expired()):
                    epoch = self.member.epoch
                    await self.fence()
                    fenced = epoch
                    fencing.release()
                if fenced:
                    await self.record()
            except EtcdError as error:  # no quorum: the same lines next time, after reading the keys again
                self.member.note(error)
                self.doubtful = True
                await trio.sleep(RETRY_S)
            if not fenced or self.rt.kernel.trace.seq == self.seq:  # else lines came meanwhile: at once
                await self.rt.wait_for("trace", TRACE_S)
            if not self.waiting:  # the writes of the next moment go in the same txn, unless one waits for it
                await self.rt.wait_for("settling", GATHER_S)

    async def fence(self) -> None:
        """Stop the live tasks here that were moved to another node; learn the keys this node owns (and forget
        those gone: an end whose answer was lost); end the keys of its tasks that have ended (an exit, or a
        refused submit, whose txn's outcome was unknown); put those of its live tasks without one (journaled,
        then kill -9 before their keys were written)."""
        pending = {pid for kind, pid in self.lines_after(self.seq) if kind == b"submit"}  # the recorder's next
        found = await self.etcd.range(self.keys.tasks, prefix=True)
        tasks, keyed, ended = self.rt.kernel.tasks, set(), []
        for kv in found.kvs:
            try:
                pid, key = int(kv.key.rsplit(b"/", 1)[1]), TaskKey.from_json(kv.value)
            except (ValueError, TypeError) as exc:  # another version's, or written by hand: not this node's to act on
                log.warning("cluster: cannot read %s: %s", kv.key, exc)
                continue
            keyed.add(pid)
            task = tasks.get(pid)
            if key.owner == self.here:
                self.written[pid] = key, kv.mod_revision
                if not key.exited and pid not in pending and (task.done if task else not key.origin):
                    ended.append(pid)
            elif task is not None and not task.done and self.written.get(pid, (None, 0))[1] <= kv.mod_revision:
                # (a task adopted here while this read was on its way has a later key: it stays)
                self.written.pop(pid, None)
                log.warning("cluster: task %d was moved to node %s while this node had lost its lease: stopped here",
                            pid, key.owner)
                self.commit([MovedAway(pid=pid, node=key.owner)])
        for pid in self.written.keys() - keyed:  # its end landed though its answer was lost: nothing to send again
            del self.written[pid]
        unkeyed = {pid: of_task(task, self.here) for pid, task in tasks.items()
                   if not task.done and pid not in keyed and pid not in pending}
        await self.report_all(list(unkeyed.items()), ended)
        self.doubtful = False

    def lines_after(self, seq: int) -> list[tuple[bytes, int]]:
        """(kind, pid) of the trace lines of a task after `seq`."""
        found = []
        for line in self.rt.kernel.trace.lines_after(seq).splitlines():
            _, _, kind, pid, _ = line.split(b",", 4)
            if pid:
                found.append((kind, int(pid)))
        return found

    async def record(self) -> None:
        """The submits and exits of the trace lines since the last look, to etcd (one txn for a write's
        lines, most often: report_all); the lines are read again if etcd fails."""
        upto = self.rt.kernel.trace.seq
        new: dict[int, TaskKey] = {}
        ended: list[int] = []
        for kind, pid in self.lines_after(self.seq):
            if kind == b"submit" and (task := self.rt.kernel.tasks.get(pid)) is not None and pid not in self.written:
                new[pid] = of_task(task, self.here)
            elif kind == b"exit" and new.pop(pid, None) is None and pid in self.written:
                ended.append(pid)
        await self.report_all(list(new.items()), ended)
        self.seq = upto
        self.rt.notifier.wake({"recorded"})

    async def report_all(self, news: list[tuple[int, TaskKey]], ended: list[int]) -> None:
        """Put the keys of `news` tasks and end those of `ended`, in as few txns as etcd takes
        (guarded.write_each); an end whose guard fails (the task was moved) is dropped."""
        await write_each(self.etcd, news + [(pid, None) for pid in ended], self.write, self._reported)

    def _reported(self, write: tuple[int, TaskKey | None], revision: int | None) -> None:
        """Note a key put (its revision) or ended (forgotten) as etcd answered; an end refused was moved away."""
        pid, key = write
        if key is not None:
            self.written[pid] = key, revision
            return
        if revision is None:
            log.warning("cluster: the exit of task %d is not reported: it was moved away", pid)
        self.written.pop(pid, None)

    async def settle(self, pids: list[int], lines: int = 0) -> None:
        """Return once the keys of tasks `pids`, just submitted here, are in etcd (or they have ended), so
        that failover can move them; else, after SETTLE_S (and SETTLE_LINE_S a task, or a line of the whole
        write of `lines` they are part of, placed on several nodes whose keys go into etcd at once), end them
        (events.Failed) and raise TryAgain: a submit is acknowledged only once its tasks would survive this node."""
        seconds = SETTLE_S + SETTLE_LINE_S * max(len(pids), lines)
        upto = self.rt.kernel.trace.seq
        self.waiting += 1
        self.rt.notifier.wake({"settling"})
        try:
            with trio.move_on_after(seconds):
                while self.seq < upto:
                    await self.rt.wait_for("recorded", TRACE_S)
        finally:
            self.waiting -= 1
        if self.seq >= upto:  # recorded, if only as the deadline cancelled the wait for its wake
            return
        why, tasks = self.member.problem or "etcd did not answer in time", self.rt.kernel.tasks
        self.commit([Failed(pid=pid, reason=f"refused at its submit: the cluster did not record it ({why})")
                     for pid in pids if pid in tasks and not tasks[pid].done])
        raise TryAgain(f"node {self.here} could not record tasks {pid_ranges(pids)} in etcd within "
                       f"{seconds:.0f}s ({why}; no quorum?): they were not run; "
                       f"try again")

    def write(self, pid_key: tuple[int, TaskKey | None]) -> Txn:
        """The txn of one of report_all's writes: (pid, key) puts task pid's new key; (pid, None) ends it,
        guarded on its key being as this node wrote it: deletes it (or, for a moved task, marks it exited)."""
        pid, new = pid_key
        name = self.keys.task(pid)
        if new is not None:
            return Txn().put(name, new.to_json())
        key, revision = self.written[pid]
        txn = unchanged_at(name, revision).delete(self.keys.output(pid))
        return txn.put(name, attrs.evolve(key, exited=True).to_json()) if key.origin else txn.delete(name)

    async def watch(self) -> None:
        """Every MOVE_S: the leader moves the tasks of nodes gone; every node adopts those moved to it."""
        while True:
            await trio.sleep(MOVE_S)
            try:
                if self.member.leading:
                    await self.move()
                mine = [(pid, key, revision) for pid, (key, revision) in list(self.cluster.view.tasks.items())
                        if key.owner == self.here]  # one look at the keys for both
                await self.adopt(mine)
                await self.forget(mine)
            except EtcdError as error:
                self.member.note(error)

    async def forget(self, mine: list[tuple[int, TaskKey, int]]) -> None:
        """Delete the keys of tasks moved here (`mine`: the keys naming this node) that exited and were
        reaped since (retention): nobody needs to find them any more. Each delete is guarded on its key's
        revision (guarded.write_each)."""
        tasks = self.rt.kernel.tasks
        gone = [(self.keys.task(pid), revision) for pid, key, revision in mine if key.exited and pid not in tasks]
        await write_each(self.etcd, gone, deleted_if_unchanged)

    async def move(self) -> None:
        """Move each unfinished task of a node that is not up to the best up node, in a guarded txn."""
        view, pending = self.cluster.view, collections.Counter[str]()  # tasks moved to each node in this pass
        nodes = view.nodes()  # as at the pass's start: its moves are counted in `pending`
        for pid, (key, revision) in list(view.tasks.items()):
            if key.exited or key.owner in view.up:
                continue
            models = frozenset({self.rt.kernel.models.name_of(key.spec_of())})
            choices = [c for c in rank(nodes, models, self.here, pending) if c.node != key.owner]
            if not choices:
                continue
            name = self.keys.task(pid)
            moved = key.moved_to(choices[0].node)
            txn = (unchanged_at(name, revision).when(self.keys.up(key.owner), "version", "==", 0)
                   .put(name, moved.to_json()))
            if (await self.etcd.txn(txn)).succeeded:
                pending[moved.owner] += 1
                log.info("cluster: task %d of node %s (down) moved to node %s, epoch %d", pid, key.owner,
                         moved.owner, moved.epoch)

    async def adopt(self, mine: list[tuple[int, TaskKey, int]]) -> None:
        """Start each task moved to this node (`mine`: the keys naming it) that it does not run (the same
        pid), from its replicated output where there is one, else afresh."""
        tasks = self.rt.kernel.tasks
        for pid, key, revision in mine:
            if key.exited or pid in self.written or (pid in tasks and not tasks[pid].done):
                continue
            try:
                adoption = await self.adoption(pid, key)
            except ApeinxError as error:  # a key no event can carry (written by hand, or by another version)
                self.unadoptable.log(pid, logging.WARNING, "cluster: task %d's key cannot be adopted: %s", pid,
                                     error.reason)
                continue
            self.commit([adoption])
            self.written[pid] = key, revision  # after: a bug in the commit leaves it to adopt at the restart

    async def adoption(self, pid: int, key: TaskKey) -> Adopt:
        """The event adopting task `pid` of `key`, from its replicated output if there is one; Invalid if the
        key holds what no task may (an id out of bounds)."""
        spec = key.spec_of()
        replica = await replica_of(self.etcd, self.keys, pid, spec) or Replica(0, "")
        return Adopt(pid=pid, spec=spec, origin=key.origin, epoch=key.epoch, uid=key.uid,
                     output=replica.output, tokens=replica.tokens)

    def commit(self, events: list[Adopt | MovedAway] | list[Failed]) -> None:
        """Commit `events`; a refusal (degraded, an unknown model or tenant here) is logged."""
        if not events:
            return
        try:
            self.rt.commit(events)
        except ApeinxError as error:
            log.warning("cluster: %s refused: %s", type(events[0]).__name__, error.reason)


def deleted_if_unchanged(key_revision: tuple[bytes, int]) -> Txn:
    """A txn deleting the key if its mod_revision is still the one given."""
    key, revision = key_revision
    return unchanged_at(key, revision).delete(key)
