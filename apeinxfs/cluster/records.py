"""What a node publishes about itself, and where the cluster's keys live in etcd.

`NodeRecord` is one node's published state (JSON in etcd); `record_of` reads it off a
kernel; `NodeView` is a record as the cluster sees it (up or down, leading or not).
`Keys` names every key under the configured prefix (docs/cluster.md has the table) and
tells which a key is; `unchanged` guards a read-modify-write txn. Pure: no etcd calls, no trio.
"""
import json
from collections.abc import Collection, Iterator

import attrs

from ..kernel.task import State
from .etcd_records import KeyValue, Txn
from .peerdata import Unreadable, loads, record_fields
from .prefixes import summary_of
from .usage import valid_usage

MAX_RANGES = 10_000  # pid ranges a record holds at most


@attrs.frozen
class NodeRecord:
    """A node's state as it published it at `seen_us` (wall time, µs), in epoch `epoch`."""

    name: str
    epoch: int
    seen_us: int
    gpus: int = 0
    slots_free: int = 0
    kv_pages_free: int = 0
    queued: int = 0
    running: int = 0
    live: int = 0  # its tasks not exited
    tasks: str = ""  # their pids as ranges, "4-9,12" (pid_ranges: the first MAX_RANGES of them)
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    advertise: str | None = None  # its address for node-to-node traffic ([cluster] advertise)
    pid_next: int = 0  # the pid its next task gets: it has given every pid of its blocks below it
    tenants: dict[str, str] = attrs.field(factory=dict, hash=False)  # tenant -> its live pids, as ranges
    prefixes: str = ""  # a Bloom filter of its cached prompt blocks' keys, base64 (prefixes.py)
    prefix_blocks: int = 0  # how many keys that filter holds
    # tenant -> its use here, as a node of an older version publishes it; this one's is in usage keys (usage.py)
    usage: dict[str, list[int]] = attrs.field(factory=dict, hash=False)

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, before: "NodeRecord | None" = None) -> "NodeRecord":
        """A peer's record, if its fields have the types and bounds its readers need (peerdata.py; else
        Unreadable); of its use, the rows admission can count (usage.valid_usage). `before`: the node's last
        record read, whose live pids are not checked again."""
        fields, loaded = {field.name for field in attrs.fields(cls)}, loads(data)
        if not isinstance(loaded, dict):
            raise Unreadable(f"a record is a JSON object, not {type(loaded).__name__}")
        known_pids = None if before is None else (before.tasks, before.tenants)
        found = record_fields({key: value for key, value in loaded.items() if key in fields}, known_pids)
        if "usage" in found:
            found["usage"] = valid_usage(str(found.get("name")), found["usage"])
        return cls(**found)


@attrs.frozen
class UnreadableSince:
    """A node's record in etcd is one this version cannot read, since etcd's `revision` (when this view first
    found it so), for `reason` (the latest one's)."""

    revision: int
    reason: str


@attrs.frozen
class NodeView:
    """A node's last record and what the cluster says of it now; `unreadable` unless its record in etcd is
    the one read (view.py keeps the last one read); `tenants` its live pids by tenant (its live keys', else
    its record's): the view's own dict, not a copy, so read it and leave it be. Its live pids as one ranges
    text are the view's to give (view.py `tasks_of`; daemon.py `tasks_seen`)."""

    record: NodeRecord
    up: bool
    leader: bool
    unreadable: UnreadableSince | None = None
    tenants: dict[str, str] = attrs.field(default=attrs.Factory(lambda self: self.record.tenants, takes_self=True),
                                          hash=False)


def record_of(kernel, epoch: int, seen_us: int, advertise: str | None,
              live_pids: tuple[str, dict[str, str]] | None = None, cannot_run: Collection[str] = ()) -> NodeRecord:
    """The record a node publishes: its kernel's GPUs, free slots and KV pages, queue, live tasks, the models it
    can run (not those in `cannot_run`, whose driver cannot be built here: placement sends it no task of theirs)
    and cached prompt prefixes (its tenants' use goes in usage keys: usagekeys.py); its live pids (`tasks`,
    `tenants`) are `live_pids` if given (a cluster node's record gives ("", {}): they are in its live keys),
    else `scan`ned now off the task table's index of them (each tenant's sorted)."""
    tasks, tenants = live_pids if live_pids is not None else scan(kernel)
    prefixes, prefix_blocks = summary_of(kernel.kv)
    return NodeRecord(name=kernel.config.node, epoch=epoch, seen_us=seen_us, gpus=len(kernel.gpus),
                      slots_free=sum(gpu.config.slots - len(gpu.running) for gpu in kernel.gpus),
                      kv_pages_free=sum(pool.pages_free for pool in kernel.kv.pools),
                      queued=len(kernel.runq), running=kernel.tasks.count(State.RUNNING),
                      live=len(kernel.tasks) - kernel.tasks.count(State.EXITED), tasks=tasks,
                      models=sorted(set(kernel.models) - set(cannot_run)), advertise=advertise,
                      pid_next=kernel.tasks.next_pid, tenants=tenants, prefixes=prefixes, prefix_blocks=prefix_blocks)


def scan(kernel) -> tuple[str, dict[str, str]]:
    """The live pids of a record, read off the task table's index of them: (all as ranges, each tenant's as
    ranges)."""
    by_tenant = kernel.tasks.live_pids.by_tenant
    return live_ranges(kernel), tenant_ranges({tenant: pid_ranges(sorted(pids)) for tenant, pids in by_tenant.items()})


def live_ranges(kernel) -> str:
    """Every live pid as ranges (`scan`'s first part), read off the task table's index of them."""
    return pid_ranges(sorted(pid for pids in kernel.tasks.live_pids.by_tenant.values() for pid in pids))


def tenant_live_ranges(kernel, tenant: str) -> str:
    """Tenant `tenant`'s live pids as ranges, MAX_RANGES of its own (not cut by the other tenants')."""
    return pid_ranges(sorted(kernel.tasks.live_pids.by_tenant.get(tenant, ())))


@attrs.define
class LiveRanges:
    """Each tenant's live pids as ranges (`scan`'s second part), kept from a task table's index of them
    (kernel/livepids.py): a look sorts again only the pids of the tenants whose live tasks changed since the
    last look, and assembles the rows only when one did."""

    table: object = None  # the task table looked at last (a recovered kernel's is another: all read again)
    seen: int = 0  # its index's `changes` then
    ranges: dict[str, str] = attrs.Factory(dict)  # tenant -> its live pids as ranges, MAX_RANGES at most
    rows: dict[str, str] = attrs.Factory(dict)  # tenant_ranges of `ranges`

    def stale(self, table) -> bool:
        """Whether `table`'s live pids may differ from `rows` (it changed since the last look, or is another)."""
        return table is not self.table or table.live_pids.changes != self.seen

    def of(self, table) -> dict[str, str]:
        """Each tenant's live pids in `table` as ranges, MAX_RANGES of them in all (tenant_ranges)."""
        if not self.stale(table):
            return self.rows
        index = table.live_pids
        if table is not self.table:
            self.table, self.seen, self.ranges, self.rows = table, -1, {}, {}
        for tenant in [tenant for tenant in self.ranges if tenant not in index.by_tenant]:
            del self.ranges[tenant]
        for tenant in index.changed_since(self.seen):
            self.ranges[tenant] = pid_ranges(sorted(index.by_tenant[tenant]))
        self.seen, self.rows = index.changes, tenant_ranges(self.ranges)
        return self.rows


def tenant_ranges(ranges: dict[str, str]) -> dict[str, str]:
    """Each tenant's pid ranges (pid_ranges' texts), MAX_RANGES of them in all: the first in tenant order, those
    past it not listed."""
    listed, left = {}, MAX_RANGES
    for tenant, text in sorted(ranges.items()):
        count = text.count(",") + 1
        if left > 0:
            listed[tenant] = text if count <= left else ",".join(text.split(",", left)[:left])
        left -= count
    return listed


def pid_ranges(pids: list[int], most: int = MAX_RANGES) -> str:
    """Pids in order as "A-B,C" ranges, the first `most` of them (so a record stays far below etcd's
    1.5 MiB request limit)."""
    ranges: list[list[int]] = []
    for pid in pids:
        if ranges and ranges[-1][1] == pid - 1:
            ranges[-1][1] = pid
        elif len(ranges) < most:
            ranges.append([pid, pid])
        else:
            break
    return _text(ranges)


def _text(ranges: list[list[int]]) -> str:
    return ",".join(f"{first}-{last}" if last > first else str(first) for first, last in ranges)


def merged(texts) -> str:
    """Several tenants' pid ranges (pid_ranges' texts) as one, the first MAX_RANGES ranges of their union."""
    ranges: list[list[int]] = []
    for first, last in sorted(bounds for text in texts for bounds in bounds_of(text)):
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], last)
        elif len(ranges) < MAX_RANGES:
            ranges.append([first, last])
        else:
            break
    return _text(ranges)


def bounds_of(ranges: str) -> Iterator[tuple[int, int]]:
    """(first, last) of each range of pid_ranges' text, in order."""
    for part in filter(None, ranges.split(",")):
        first, _, last = part.partition("-")
        yield int(first), int(last or first)


def pids_of(ranges: str) -> Iterator[int]:
    """The pids of pid_ranges' text, in order."""
    for first, last in bounds_of(ranges):
        yield from range(first, last + 1)


def unchanged(key: bytes, read: KeyValue | None) -> Txn:
    """A txn guarded on `key` being as `read` found it: the same revision, or still absent."""
    if read is None:
        return Txn().when(key, "create_revision", "==", 0)
    return unchanged_at(key, read.mod_revision)


def unchanged_at(key: bytes, revision: int) -> Txn:
    """A txn guarded on `key` being still at `revision` (its mod_revision)."""
    return Txn().when(key, "mod_revision", "==", revision)


@attrs.frozen
class Keys:
    """The cluster's etcd keys under `prefix` (bytes; node names are the config's daemon.node)."""

    prefix: str

    def _key(self, *parts: str) -> bytes:
        return (self.prefix + "/".join(parts)).encode()

    def node(self, name: str) -> bytes:
        """The node's record (no lease: it stays, with its last state, after the node is gone)."""
        return self._key("nodes", name)

    def up(self, name: str) -> bytes:
        """On the node's lease, holding its epoch: there while the node is up."""
        return self._key("up", name)

    def epoch(self, name: str) -> bytes:
        """The node's latest epoch (no lease), raised by a guarded txn at every join."""
        return self._key("epoch", name)

    @property
    def pids(self) -> bytes:
        """The first pid no node has been granted yet."""
        return self._key("pids", "next")

    def block(self, first: int) -> bytes:
        """Who holds the pid block that starts at `first`: "NAME COUNT" (no lease: pids stay where they are)."""
        return self._key("blocks", str(first))

    def task(self, pid: int) -> bytes:
        """Task `pid` of a cluster node while it may need to move (cluster/taskkeys.py: owner, epoch, spec)."""
        return self._key("tasks", str(pid))

    @property
    def tasks(self) -> bytes:
        return self._key("tasks", "")

    def output(self, pid: int) -> bytes:
        """Task `pid`'s replicated output (replicas.py), beside the prefix rather than under it: no node
        watches it."""
        return (self.prefix.rstrip("/") + ".out/" + str(pid)).encode()

    def usage(self, name: str, tenant: str = "") -> bytes:
        """Tenant `tenant`'s use on node `name` (usage.py's row), on the node's lease; with no tenant, the prefix
        of the node's usage keys."""
        return self._key("usage", name, tenant)

    def live(self, name: str, tenant: str = "") -> bytes:
        """Tenant `tenant`'s live pids on node `name` (livekeys.py), on the node's lease; with no tenant, the
        prefix of the node's live keys."""
        return self._key("live", name, tenant)

    def setting(self, name: str) -> bytes:
        """An entry of the settings log (cluster/shared.py): put once, ordered by its create revision."""
        return self._key("settings", name)

    @property
    def election(self) -> bytes:
        """The leader election's name: candidates' keys are under it, on their leases."""
        return self._key("leader")

    @property
    def all(self) -> bytes:
        return self.prefix.encode()

    def usage_of(self, key: bytes) -> str | None:
        """NODE/TENANT of a usage key; None for another key."""
        kind, name = self.kind_of(key)
        return name if kind == "usage" else None

    def kind_of(self, key: bytes) -> tuple[str, str]:
        """(kind, name) of one of these keys: ("nodes", NAME), ("up", NAME), ("leader", LEASE) ..."""
        kind, _, name = key[len(self.prefix):].decode(errors="replace").partition("/")
        return kind, name
