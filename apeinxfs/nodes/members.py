"""/nodes/NAME/{status,tasks}: every node of the cluster, as each node's published record says.

`status` is `Key:<TAB>value` lines (State up|down, Epoch, Leader yes|no, GPUs, free slots
and KV pages, queue, running and live tasks, models, the cached prompt blocks it publishes
for prefix affinity, address, LastSeen: when it last published, in UTC; Record: ok, or since when
its record in etcd is one this version cannot read, and why); `tasks` its live
pids, one a line: to an admin every tenant's, to anyone else its own tenant's (a view, views.py).
Both are rendered from the cluster's view (etcd), the same on every node once the watch has
caught up; a node whose lease is gone stays listed, `State: down`, with its last record. On a
single node /nodes holds just this node (up, leading, epoch 0) from its own kernel
(cluster/daemon.node_seen). Inodes are computed (NamedDirs): NODE_BASE + number * SLOTS + slot.
"""
import datetime
import time
from typing import TypeVar

import attrs

from ..cluster.daemon import names_seen, node_seen, tasks_seen
from ..cluster.peer_wire import TokenFile
from ..cluster.records import NodeView, pids_of
from ..kernel.errors import NotFound
from .base import BuiltDir, NamedDirs, Show
from .models import MODEL_BASE

NODE_BASE = 1 << 17
SLOTS = 4
FILES = ("status", "tasks")
Seen = TypeVar("Seen")


def _utc(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(node: NodeView) -> str:
    """The node's state as the cluster sees it, `Key:<TAB>value` lines."""
    record = node.record
    rows = [("Name", record.name), ("State", "up" if node.up else "down"), ("Epoch", record.epoch),
            ("Leader", "yes" if node.leader else "no"), ("Gpus", record.gpus), ("SlotsFree", record.slots_free),
            ("KVPagesFree", record.kv_pages_free), ("Queued", record.queued), ("TasksRunning", record.running),
            ("TasksLive", record.live), ("Models", ",".join(record.models) or "-"),
            ("PrefixBlocks", record.prefix_blocks), ("Advertise", record.advertise or "-"),
            ("LastSeen", _utc(record.seen_us)), ("Record", _readable(node))]
    return "".join(f"{key}:\t{value}\n" for key, value in rows)


def _readable(node: NodeView) -> str:
    """ok while the node's record in etcd is the one shown; else since which etcd revision it is not, and why."""
    mark = node.unreadable
    return "ok" if mark is None else f"unreadable since revision {mark.revision}: {mark.reason}"


def link(rt) -> str:
    """/cluster: this node's own link to the cluster (so not the same on every node), `Key:<TAB>value`
    lines: Node, Mode (cluster or single); in a cluster Etcd (ok or unavailable), Reason (why, or -),
    Epoch, Settings and SettingsRefused (the etcd revision of the last entry of the settings log applied
    here, and how many this node refused: cluster/shared.py); PidsLeft (pids it may give before its next
    block, - on a single node); in a cluster Compaction (the leader's compaction of etcd's history:
    cluster/history.py; - on a node that does not lead), TlsRenewal (whether the etcd client's TLS files
    on disk are in use, or why a renewed set is not taken: cluster/etcd_renew.py; - without TLS files),
    PeerToken (whether the peers' token file on disk is in use, or why an edited one is not taken) and
    Engines (held while the node is fenced: cluster/fencing.py; else running)."""
    cluster, left = rt.cluster, rt.kernel.tasks.pids_left()
    rows = [("Node", rt.kernel.config.node), ("Mode", "single" if cluster is None else "cluster")]
    if cluster is not None:
        problem = cluster.member.problem
        rows += [("Etcd", "unavailable" if problem else "ok"), ("Reason", problem or "-"),
                 ("Epoch", cluster.member.epoch), ("Settings", rt.kernel.shared.revision),
                 ("SettingsRefused", rt.kernel.shared.refused)]
    rows.append(("PidsLeft", "-" if left is None else left))
    if cluster is not None:  # last: the rows before it kept their lines when it came
        rows.append(("Compaction", cluster.compaction.state))
        rows.append(("TlsRenewal", cluster.etcd.tls.state))
        rows.append(("PeerToken", peer_token(cluster.settings.tokens)))
        rows.append(("Engines", "held" if rt.kernel.moves.fenced else "running"))
    return "".join(f"{key}:\t{value}\n" for key, value in rows)


def peer_token(tokens: TokenFile | None) -> str:
    """The PeerToken row: `-` without a token file; else whether the file on disk now is in use, looked at
    first (so an operator who edited it reads the truth before the next step of a rotation)."""
    if tokens is None:
        return "-"
    tokens.check(time.monotonic())
    return tokens.state


def tasks(ranges: str) -> str:
    """A node's live pids (queued, running, stopped) as it last published them (`ranges`), one a line."""
    return "".join(f"{pid}\n" for pid in pids_of(ranges))


@attrs.define(eq=False)
class NodeDir(BuiltDir):
    """/nodes/NAME: status, tasks; ENOENT once the node is no longer listed."""

    names: tuple = FILES
    rt: object = None
    name: str = ""

    def build(self, file):
        if file == "status":
            return Show(show=lambda: status(self.seen()), volatile=True)
        return Show(show=lambda view: tasks(self.seen_tasks(view)), volatile=True, tenanted=True)

    def seen(self) -> NodeView:
        return self._found(node_seen(self.rt, self.name))

    def seen_tasks(self, view: str | None = None) -> str:
        """The node's live pids as ranges: of tenant `view` only, unless None (NotFound as `seen`)."""
        return self._found(tasks_seen(self.rt, self.name, view))

    def _found(self, seen: Seen | None) -> Seen:
        """`seen` of this node; NotFound if None: the node is not seen."""
        if seen is None:  # its record was deleted from etcd by hand
            raise NotFound(f"node {self.name} is no longer in the cluster")
        return seen


@attrs.define(eq=False)
class NodesDir(NamedDirs):
    """/nodes: one directory per node that ever published, up or down, by name."""

    base: int = NODE_BASE
    limit: int = MODEL_BASE
    slots: int = SLOTS
    rt: object = None

    def current(self):
        return names_seen(self.rt)

    def make(self, name, inode):
        return NodeDir(inode=inode, rt=self.rt, name=name)
