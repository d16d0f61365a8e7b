"""The cluster as this node sees it: every node's record, who is up, who leads.

`ClusterView` is rebuilt from a read of the prefix (`load`) and kept current by the
watch's events (`apply`); daemon.py feeds it. A node is up while its `up/NAME` key (on its
lease) exists; its record (`nodes/NAME`, no lease) stays after it goes, so a down node is
listed with its last state. The leader is the up node whose election key is the oldest: a
down node's candidacy may outlive its `up` key (a lease it could not revoke without a
quorum lives on, and etcd extends leases at each of its own elections), and it leads no one.
A record this version cannot read (peerdata.py: another version's, or one written by hand)
leaves the node's last record read in place, marked `unreadable` since the revision at which
this view first found it so (the node may be mid-upgrade: its last record is the best
knowledge there is), with one log line when it turns unreadable and one when it is readable
again. A reload (`load`) does as the watch does, keeping the record read before; a node
whose record this view never read is not listed.
A node's live pids are in its live keys (`live/NAME/TENANT`, livekeys.py: `live`, checked as read;
one unreadable, or named without a node or a tenant, is dropped, and logged once for a reason, until the key
is deleted or read); `tenants_of` and `tasks_of` give them, or an older version's record's while the node
has none.
`holder(pid)` names the node granted the pid block of `pid` (`blocks/FIRST` keys); `tasks`
holds the task keys (taskkeys.py) with their revisions, for failover.
Pure: no etcd calls, no trio. Every node applies the same events in the same order, so
every node renders the same view once it has caught up (but for unreadable records: a node
that started after one turned unreadable never read the record the others kept).
"""
import bisect
import contextlib
import json
import logging

from .etcd_records import Event, KeyValue
from .livekeys import live_of
from .peerdata import MAX_PIDS, Unreadable
from .records import Keys, NodeRecord, NodeView, UnreadableSince, merged
from .taskkeys import TaskKey

log = logging.getLogger(__name__)


class ClusterView:
    """Records, up nodes and election candidates, by the keys etcd holds."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self.records: dict[str, NodeRecord] = {}
        self.unreadable: dict[str, UnreadableSince] = {}  # node -> why its record in etcd is not the one kept
        self.up: dict[str, int] = {}  # name -> epoch, of the nodes whose lease lives
        self.candidates: dict[bytes, tuple[int, str]] = {}  # election key -> (create revision, node name)
        self.blocks: dict[int, tuple[int, str]] = {}  # first pid of a granted block -> (its size, its node)
        self._firsts: list[int] | None = None  # the blocks' first pids in order, once asked for
        self.tasks: dict[int, tuple[TaskKey, int]] = {}  # pid -> (its task key, the key's mod revision)
        self.live: dict[str, dict[str, str]] = {}  # node -> tenant -> its live pids as ranges (its live keys)
        # node -> how many pids its live keys name in all: a running total, not summed from _pids_by_key at each
        # live key event (a node of 1,000 tenants' keys: 3.4x the event's CPU summed from a dict of its counts, 41x
        # from _pids_by_key as it is keyed)
        self.pids_by_node: dict[str, int] = {}
        self._pids_by_key: dict[str, int] = {}  # live key NODE/TENANT held -> how many pids it names
        self._merged: dict[str, str] = {}  # node -> its live keys' pids as one ranges text, once asked for
        self.unread_live: dict[str, str] = {}  # live key NODE/TENANT held unread -> why (logged once for it)
        self.revision = 0  # etcd's revision this view has seen up to

    def load(self, kvs: list[KeyValue], revision: int) -> None:
        """Start again from a read of every key under the prefix at `revision` (an unreadable record leaves
        the one read before, as on the watch)."""
        records, marks, unread = self.records, self.unreadable, self.unread_live
        self.records, self.unreadable, self.up, self.candidates, self.blocks, self._firsts, self.tasks = \
            {}, {}, {}, {}, {}, None, {}
        self.live, self.pids_by_node, self._pids_by_key, self._merged, self.unread_live = {}, {}, {}, {}, {}
        for kv in kvs:
            self._put(kv, records, marks, unread)
        self.revision = revision

    def apply(self, event: Event) -> None:
        """Follow one change the watch saw."""
        if event.kind == "DELETE":
            self._delete(event.kv.key)
        else:
            self._put(event.kv, self.records, self.unreadable, self.unread_live)
        self.revision = max(self.revision, event.kv.mod_revision)

    def _put(self, kv: KeyValue, records: dict[str, NodeRecord], marks: dict[str, UnreadableSince],
             unread: dict[str, str]) -> None:
        """Follow the put of `kv`; `records`, `marks` and `unread` are the view's before this change."""
        kind, name = self.keys.kind_of(kv.key)
        if kind == "nodes":
            return self._record(name, kv, records, marks)
        if kind == "live":
            return self._live(name, kv.value, unread)
        try:
            if kind == "up":
                self.up[name] = int(kv.value)
            elif kind == "leader":
                self.candidates[kv.key] = (kv.create_revision, kv.value.decode())
            elif kind == "blocks":
                node, size = kv.value.decode().split()
                self.blocks[int(name)], self._firsts = (int(size), node), None
            elif kind == "tasks":
                self.tasks[int(name)] = TaskKey.from_json(kv.value), kv.mod_revision
        except (ValueError, TypeError, json.JSONDecodeError) as exc:  # another version's record: skipped
            log.warning("cluster: cannot read %s: %s", kv.key, exc)

    def _record(self, name: str, kv: KeyValue, records: dict[str, NodeRecord],
                marks: dict[str, UnreadableSince]) -> None:
        """Node `name`'s record from `kv` (its mark, in `marks` before this change, dropped); if unreadable,
        see _mark_unreadable."""
        try:
            self.records[name] = NodeRecord.from_json(kv.value, records.get(name))
        except (ValueError, TypeError) as exc:  # Unreadable; TypeError: a field it must have is missing
            return self._mark_unreadable(name, kv, exc, records, marks)
        if name in marks:
            log.warning("cluster: node %s's record is readable again", name)
            self.unreadable.pop(name, None)

    def _mark_unreadable(self, name: str, kv: KeyValue, exc: Exception, records: dict[str, NodeRecord],
                         marks: dict[str, UnreadableSince]) -> None:
        """Node `name`'s record in `kv` is unreadable (`exc`): its record in `records` (the view's before this
        change) stays, marked unreadable since the revision of its mark in `marks`, else this one's; the first
        mark is logged."""
        if name not in marks:
            log.warning("cluster: cannot read node %s's record (%s): %s", name,
                        "its last one read is kept" if name in records else "not listed", exc)
        since = marks[name].revision if name in marks else kv.mod_revision
        self.unreadable[name] = UnreadableSince(since, " ".join(str(exc).split()))
        if name in records:
            self.records[name] = records[name]

    def _live(self, name: str, value: bytes, unread: dict[str, str]) -> None:
        """Live key NODE/TENANT `name`'s new value; one this version cannot read, or that brings its node's
        live pids past MAX_PIDS, or whose name lacks a node or a tenant, is dropped (the key counts as deleted), and
        logged unless `unread` (the view's before this change) holds it unread for the same reason."""
        node, _, tenant = name.partition("/")
        logged = unread.get(name)
        self._drop_live(name)
        try:
            if not node or not tenant:
                raise Unreadable(f"live key {name} names no node or no tenant")
            text, count = live_of(name, value)
            if self.pids_by_node.get(node, 0) + count > MAX_PIDS:
                raise Unreadable(f"live pids of {name}: with them node {node}'s live keys name over {MAX_PIDS}")
        except Unreadable as exc:
            if logged != str(exc):
                log.warning("cluster: %s; not read", exc)
            self.unread_live[name] = str(exc)
            return
        self.live.setdefault(node, {})[tenant] = text
        self.pids_by_node[node] = self.pids_by_node.get(node, 0) + count
        self._pids_by_key[name] = count

    def _drop_live(self, name: str) -> None:
        """Forget live key NODE/TENANT `name`'s pids, if held (its count, kept from its read, off its node's), or
        that it was unread."""
        node, _, tenant = name.partition("/")
        self._merged.pop(node, None)
        self.unread_live.pop(name, None)
        count = self._pids_by_key.pop(name, None)
        if count is None:
            return
        del self.live[node][tenant]
        self.pids_by_node[node] -= count
        if not self.live[node]:
            del self.live[node], self.pids_by_node[node]

    def _delete(self, key: bytes) -> None:
        kind, name = self.keys.kind_of(key)
        if kind == "live":
            self._drop_live(name)
        elif kind == "nodes":
            self.records.pop(name, None)
            self.unreadable.pop(name, None)
        elif kind == "up":
            self.up.pop(name, None)
        elif kind == "leader":
            self.candidates.pop(key, None)
        elif kind == "tasks":
            with contextlib.suppress(ValueError):  # not a pid: a key this version never held (its put was logged)
                self.tasks.pop(int(name), None)

    def holder(self, pid: int) -> str | None:
        """The node granted the pid block that holds `pid`; None if no block does."""
        if self._firsts is None:
            self._firsts = sorted(self.blocks)
        index = bisect.bisect_right(self._firsts, pid) - 1
        if index < 0:
            return None
        size, node = self.blocks[self._firsts[index]]
        return node if pid < self._firsts[index] + size else None

    def tenants_of(self, name: str) -> dict[str, str]:
        """Node `name`'s live pids by tenant, as ranges: its live keys', else its record's (an older version's)."""
        record = self.records.get(name)
        return self.live.get(name) or (record.tenants if record is not None else {})

    def live_of(self, name: str, tenant: str | None = None) -> str:
        """Node `name`'s live pids as ranges: all of them (`tasks_of`), or tenant `tenant`'s (`tenants_of`)."""
        return self.tasks_of(name) if tenant is None else self.tenants_of(name).get(tenant, "")

    def tasks_of(self, name: str) -> str:
        """Node `name`'s live pids as ranges: its live keys' as one, else its record's (an older version's)."""
        if name not in self.live:
            record = self.records.get(name)
            return record.tasks if record is not None else ""
        if name not in self._merged:
            self._merged[name] = merged(self.live[name].values())
        return self._merged[name]

    @property
    def leader(self) -> str | None:
        """The node that leads: the up candidate with the oldest key; None while no up node campaigns."""
        standing = [candidate for candidate in self.candidates.values() if candidate[1] in self.up]
        return min(standing)[1] if standing else None

    def node(self, name: str) -> NodeView | None:
        """Node `name` as the cluster sees it: its last record, up or down, leading or not; None if it
        never published."""
        return self._view(name, self.leader) if name in self.records else None

    def nodes(self) -> dict[str, NodeView]:
        """Every node that ever published, by name (sorted); the leader worked out once for all."""
        leader = self.leader
        return {name: self._view(name, leader) for name in sorted(self.records)}

    def _view(self, name: str, leader: str | None) -> NodeView:
        return NodeView(self.records[name], name in self.up, name == leader, self.unreadable.get(name),
                        self.tenants_of(name))
