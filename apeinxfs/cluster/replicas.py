"""Replicated output: what each running task of this node has generated, kept in etcd, so that the
node that adopts the task after a failover goes on from there instead of from the start.

`Replicas(cluster)` (held as `Cluster.replicas`) runs `keep`: every `replicate_s` it puts, for each
live task this node owns (failover's `written` keys) whose output grew since, `Keys.output(PID)` =
`Replica(tokens, output)` as JSON. The puts go in as few txns as etcd takes (guarded.py), each
guarded on the task's key being as this node wrote it, so a node that lost its lease never
overwrites what the task's new owner replicates; a txn whose guard fails is sent again one put
at a time, and the moved task's put dropped. A task's output past MOST_BYTES stays at its
last put (a moved task then goes on from that point). The keys are outside the prefix every node
watches, so no watch carries them; the key goes with the task's key at its exit (failover.write).
`replica_of(etcd, keys, pid, spec)` reads one back for an adoption: None if there is none, or one
that cannot be used (no tokens, or all of max_tokens).
Not here: moving tasks and adopting them (failover.py); the kernel's resume (events.Adopt).
"""
import json
import logging

import attrs
import trio

from ..kernel.spec import TaskSpec
from .etcd_records import EtcdError, Txn
from .guarded import write_each
from .peerdata import loads, replica_fields
from .records import unchanged_at

log = logging.getLogger(__name__)
MOST_BYTES = 256 << 10  # a task's output past this is not replicated further


@attrs.frozen
class Replica:
    """What `Keys.output(PID)` holds: the task's first `tokens` tokens, `output` as text."""

    tokens: int
    output: str

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Replica":
        fields = replica_fields(loads(data))
        return cls(tokens=int(fields["tokens"]), output=str(fields["output"]))


class Replicas:
    """This node's replication of its running tasks' output."""

    def __init__(self, cluster) -> None:
        self.rt, self.etcd, self.keys = cluster.rt, cluster.etcd, cluster.keys
        self.failover, self.member = cluster.failover, cluster.member
        self.every_s = cluster.settings.replicate_s
        self.sent: dict[int, int] = {}  # pid -> the tokens of its last put

    async def keep(self) -> None:
        """Every `replicate_s`, put the output of each task that grew since; again after a failure."""
        while True:
            await trio.sleep(self.every_s)
            try:
                await self.replicate()
            except EtcdError as error:  # no quorum: the same outputs next time
                self.member.note(error)

    def grown(self) -> list[tuple[int, Replica]]:
        """(pid, replica) of each live task owned here whose output grew since its last put."""
        tasks, grown = self.rt.kernel.tasks, []
        self.sent = {pid: tokens for pid, tokens in self.sent.items() if pid in self.failover.written}
        for pid in self.failover.written:
            task = tasks.get(pid)
            if task is None or task.done or not 0 < task.tokens_out < task.spec.max_tokens:
                continue
            if task.tokens_out != self.sent.get(pid) and len(task.output) <= MOST_BYTES:
                grown.append((pid, Replica(task.tokens_out, task.output.decode(errors="replace"))))
        return grown

    async def replicate(self) -> None:
        """Put the grown outputs, as few txns as etcd takes (guarded.write_each); a put whose guard
        failed (the task was moved) is dropped."""
        await write_each(self.etcd, self.grown(), self.guarded, self._sent)

    def _sent(self, grown: tuple[int, Replica], revision: int | None) -> None:
        if revision is not None:
            pid, replica = grown
            self.sent[pid] = replica.tokens

    def guarded(self, grown: tuple[int, Replica]) -> Txn:
        """The put of task pid's replica, guarded on its key being as this node wrote it."""
        pid, replica = grown
        revision = self.failover.written[pid][1]
        return unchanged_at(self.keys.task(pid), revision).put(self.keys.output(pid), replica.to_json())


async def replica_of(etcd, keys, pid: int, spec: TaskSpec) -> Replica | None:
    """The output task `pid` last replicated, if it can be resumed from: some tokens, fewer than
    `spec.max_tokens`; None otherwise (the task starts afresh)."""
    kv = await etcd.get(keys.output(pid))
    if kv is None:
        return None
    try:
        replica = Replica.from_json(kv.value)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("cluster: the replicated output of task %d cannot be read: %s", pid, exc)
        return None
    return replica if 0 < replica.tokens < spec.max_tokens else None
