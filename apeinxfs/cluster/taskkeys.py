"""What etcd holds of each task of a cluster node, so that another node can run it: `TaskKey`.

A node puts `tasks/PID` (Keys.task) for each task submitted on it: its owner, the task's
epoch (1 at submit, + 1 at each move), who submitted it and the spec its submit carried
(in its tenant, without a parent: a moved task runs alone). The key goes when the task
exits on its owner; a task that was moved keeps its key, marked exited, so every node
still finds where it ran. `of_task` reads a key off a kernel task; `spec_of` gives the
spec back. Pure: no etcd calls, no trio (failover.py does the I/O).
"""
from typing import Any

import attrs

from ..kernel.events import JOURNAL_JSON  # a spec's decimals as their text, as the journal writes them
from ..kernel.spec import TaskSpec
from ..kernel.task import Task
from .peerdata import loads, task_key_fields


@attrs.frozen
class TaskKey:
    """Task `tasks/PID` as etcd holds it."""

    owner: str
    epoch: int
    uid: int
    spec: dict[str, Any] = attrs.field(hash=False)  # TaskSpec's fields, as the journal writes them
    origin: str = ""  # the node it was moved from, once moved
    exited: bool = False  # a moved task that has exited (a task never moved loses its key instead)

    def to_json(self) -> bytes:
        return JOURNAL_JSON.encode(attrs.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "TaskKey":
        return cls(**task_key_fields(loads(data)))

    def spec_of(self) -> TaskSpec:
        return TaskSpec(**self.spec)

    def moved_to(self, node: str) -> "TaskKey":
        """The key once the leader moved the task to `node`: epoch + 1."""
        return attrs.evolve(self, owner=node, epoch=self.epoch + 1, origin=self.owner)


def of_task(task: Task, owner: str) -> TaskKey:
    """The key of kernel task `task` submitted on `owner`: its spec in its tenant, without its parent."""
    spec = attrs.evolve(task.spec, parent=None, tenant=task.tenant)
    return TaskKey(owner=owner, epoch=1, uid=task.uid, spec=attrs.asdict(spec))
