"""The cluster inside the daemon: membership, the view of every node, pid blocks.

`Cluster(settings, runtime)` is built by mount.py when `[cluster] etcd` is set and run
by `Runtime.run` beside the drivers: one etcd client, the `router` (routing.py: where
tasks live, where writes go, the peers' clients; both open for the daemon's run: `clients`),
`shared` (shared.py: the settings log), and nine tasks: the member (lease, epoch, leader
campaign; member.py; on its lease, this node's usage keys, put soon after its limited
tenants' use changed: usagekeys.py; and its live keys, each tenant's live pids, put when
they changed: livekeys.py), the publisher of
this node's record (when it changed, looked at every second; every 30 s unchanged:
member.py), the follower that keeps `view` (view.py) current through a watch, applies the
settings log's entries and sums the other nodes' tenant use for admission (usage.py), the
keeper of pid blocks (pids.py), failover's two loops (failover.py: task keys and fencing;
the leader's moves and adoption; fencing.py holds the engines once the lease may have
expired), the replication of running tasks' output (replicas.py; unless
`replicate_s` is 0), the writer of settings changes made at a close (shared.py) and, on
the leader, the compaction of etcd's history (history.py). None of them blocks the file system:
without etcd they note why and retry, and local reads and running tasks go on.
`names_seen(rt)`, `node_seen(rt, name)` and `tasks_seen(rt, name, tenant)` (with a tenant: a non-admin's
view of a node's tasks) are what /nodes shows: the cluster's view, or on a single node just this node.
"""
import contextlib
import logging
from collections.abc import AsyncIterator

import trio

from ..kernel.errors import ApeinxError, Degraded
from .etcd import Etcd
from .etcd_records import EtcdError
from .failover import Failover
from .fencing import Fencing
from .history import Compaction
from .livekeys import LiveKeys
from .member import PUBLISH_S, RETRY_S, Member
from .pids import take_block, wants_block
from .etcd_records import Lease
from .records import Keys, LiveRanges, NodeRecord, NodeView, live_ranges, record_of, tenant_live_ranges
from .replicas import Replicas
from .routing import Router
from .settings import ClusterSettings
from .shared import SharedSettings
from .usage import Elsewheres, Row, published
from .usagekeys import UsageKeys
from .view import ClusterView

log = logging.getLogger(__name__)
PID_CHECK_S = 1.0  # how often the pids left are checked when no trace line wakes the keeper first
USAGE_S = 0.05  # the soonest a change of this node's tenants' use is put after the last put of it
PUBLISH_US = int(PUBLISH_S * 1_000_000)  # the live keys' rows are looked at again at most this often (µs)
COMPACT_S = 300.0  # the leader compacts etcd's history to the revision it saw this long ago


class Cluster:
    """This node's part in the cluster: its `member`ship and its `view` of every node."""

    def __init__(self, settings: ClusterSettings, runtime):
        self.settings, self.rt = settings, runtime
        self.name = runtime.config.kernel.node
        self.keys = Keys(settings.prefix)
        self.view = ClusterView(self.keys)
        self.etcd = Etcd(list(settings.etcd), tls=settings.tls, credentials=settings.credentials)
        self.usage = UsageKeys(self.etcd, self.keys, self.name, lambda: published(runtime.kernel), self.usage_changed,
                               lambda error: self.member.note(error))  # this node's use, on its lease
        self.live = LiveKeys(self.etcd, self.keys, self.name, self.live_pids, self.live_changed,
                             lambda error: self.member.note(error))  # this node's live pids, on its lease
        self.member = Member(self.etcd, self.keys, self.name, settings.lease_s, self.record, self.leased,
                             self.before_up)
        self._live_ranges = LiveRanges()  # the live keys' rows, read off the task table's index of live pids
        self._live_looked_us: int | None = None  # the clock (µs) at the last look that found a change; None: none yet
        self.router = Router(self)  # where tasks live and writes go (routing.py)
        self.fencing = Fencing(runtime, self.member)  # holds the engines once the lease may have expired
        self.failover = Failover(self)  # task keys, the leader's moves, adoption and fencing (failover.py)
        self.replicas = Replicas(self)  # running tasks' output, for a resume after failover (replicas.py)
        self.shared = SharedSettings(runtime, self.etcd, self.keys, self.name, self.view)  # the settings log
        self.elsewheres = Elsewheres(self.name)  # the other nodes' use by tenant, for admission (usage.py)
        self.compaction = Compaction(self.member)  # the leader's compaction of etcd's history (history.py)

    def record(self, epoch: int) -> NodeRecord:
        """This node's record now, in `epoch`, every field read off the kernel as it stands; its live pids are
        not in it (`tasks` "", `tenants` {}): they are in its live keys (`live_pids`)."""
        return record_of(self.rt.kernel, epoch, self.rt.clock.now_us(), self.settings.advertise, ("", {}),
                         self.rt.cannot_run)

    def live_pids(self) -> dict[str, str]:
        """This node's live pids by tenant, as ranges (its live keys' rows): a look that finds them changed (it
        sorts the live pids of each tenant whose tasks came or exited since the last) comes at most every
        PUBLISH_S, so a look sooner finds them as last looked at; a look that finds no change (a count compared)
        leaves the next free, so the first change after an idle spell is looked at at once."""
        now_us, table = self.rt.clock.now_us(), self.rt.kernel.tasks
        due = self._live_looked_us is None or now_us >= self._live_looked_us + PUBLISH_US
        if due and self._live_ranges.stale(table):
            self._live_looked_us = now_us
            return self._live_ranges.of(table)
        return self._live_ranges.rows

    async def live_changed(self, put: dict[str, str]) -> None:
        """Return once this node's live pids differ from `put` (its live keys'), PUBLISH_S after that put at
        the soonest (looked at as trace lines come)."""
        await self._until_changed(self.live_pids, put, PUBLISH_S)

    async def leased(self, lease: Lease) -> None:
        """What runs while the member holds `lease`: this node's usage and live keys kept on it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.usage.keep, lease)
            nursery.start_soon(self.live.keep, lease)

    async def before_up(self, lease: Lease) -> None:
        """What a new lease holds before the up key: this node's usage and live keys."""
        await self.usage.put_on(lease)
        await self.live.put_on(lease)

    async def usage_changed(self, put: dict[str, Row]) -> None:
        """Return once this node's tenants' use differs from `put` (its usage keys'; looked at as trace lines
        come: a submit, an exit), USAGE_S after that put at the soonest: the other nodes' admission counts it
        (usage.py), so the sooner they see it, the less a quota is overdrawn."""
        await self._until_changed(lambda: published(self.rt.kernel), put, USAGE_S)

    async def _until_changed(self, rows, put, soonest_s: float) -> None:
        """Return once `rows()` differs from `put`, `soonest_s` from now at the soonest, looked at as trace lines
        come (or every PUBLISH_S)."""
        await trio.sleep(soonest_s)
        while rows() == put:
            await self.rt.wait_for("trace", PUBLISH_S)

    @contextlib.asynccontextmanager
    async def clients(self) -> AsyncIterator[None]:
        """The etcd client and the router's peer clients, open for the daemon's whole run (Runtime.run), outside
        the supervised `run`: the mount's settings writes and the open files of other nodes' tasks
        (nodes/remote.py) use them while `run` waits for its restart."""
        async with self.etcd, self.router:
            yield

    async def run(self) -> None:
        """Join and follow the cluster until cancelled; each of the nine loops supervised (supervise.py: a bug
        in one is logged, shown in /ai/health and the loop started again). The etcd watch's checker, which
        `follow` starts in this nursery (etcd_watch.py start_checking), is not restarted by the supervisor
        (its cancel scope and stream are one stream's): a bug there is noted as `cluster.watch.check` and
        leaves the stream, as a failed check does, and the watch's next stream starts a checker of its own.
        This itself is supervised as `cluster.run` (Runtime.run): a bug that ends its nursery (one no loop's
        supervisor heard) starts the loops again; the clients (`clients`) stay open meanwhile."""
        supervised = self.rt.supervisor.supervised
        async with trio.open_nursery() as nursery:
            loops = [("cluster.member", self.member.run), ("cluster.publish", self.member.publish),
                     ("cluster.follow", self.follow, nursery), ("cluster.pids", self.keep_pids),
                     ("cluster.failover.keep", self.failover.keep), ("cluster.failover.watch", self.failover.watch),
                     ("cluster.shared.drain", self.shared.drain),
                     ("cluster.compaction", self.compaction.run, self.etcd, lambda: self.view.revision, COMPACT_S)]
            if self.settings.replicate_s:
                loops.append(("cluster.replicas", self.replicas.keep))
            for name, *loop in loops:
                nursery.start_soon(supervised, name, *loop)

    async def follow(self, nursery: trio.Nursery) -> None:
        """Read every key under the prefix, then watch it from the next revision; again after a failure.
        The watch's check runs in `nursery` (the cluster's): one opened here would wrap the errors caught
        below in exception groups."""
        while True:
            try:
                found = await self.etcd.range(self.keys.all, prefix=True)
                self.view.load(found.kvs, found.revision)
                self.shared.load(found.kvs)
                usage = [(name, kv.value) for kv in found.kvs if (name := self.keys.usage_of(kv.key)) is not None]
                self.rt.elsewhere = self.elsewheres.load(self.view.nodes(), usage)  # then kept current by `followed`
                self.member.note(None)
                async with self.etcd.watch(self.keys.all, prefix=True, start_revision=found.revision + 1,
                                           nursery=nursery, on_bug=self.watch_check_bug) as events:
                    async for event in events:
                        self.view.apply(event)
                        self.followed(event)
            except EtcdError as error:  # Unavailable without a quorum, Compacted
                self.member.note(error)
                await trio.sleep(RETRY_S)
            except Degraded as error:  # a settings entry could not be journaled: read again later
                log.warning("cluster: settings not applied: %s", error.reason)
                await trio.sleep(RETRY_S)

    def watch_check_bug(self, bug: Exception) -> None:
        """A bug in the watch's check: kept as the Bug `cluster.watch.check` (/ai/health); the watch leaves its
        stream and opens another, whose checker starts afresh (etcd_watch.py)."""
        self.rt.supervisor.note("cluster.watch.check", bug, "its stream opened again")

    def followed(self, event) -> None:
        """What a watch event changes beside the view: a settings entry to apply, the others' tenant use."""
        kind, name = self.keys.kind_of(event.kv.key)
        if kind == "settings" and event.kind == "PUT":
            self.shared.apply(event.kv)
        elif kind in ("nodes", "up"):
            self.elsewheres.update(name, self.view.node(name))
        elif kind == "usage":
            self.elsewheres.key_changed(name, event.kv.value if event.kind == "PUT" else None, self.view.node)

    async def keep_pids(self) -> None:
        """Ask for the next pid block once fewer than half a block is left (checked as submits come)."""
        size = self.settings.pid_block
        while True:
            if wants_block(self.rt, size):
                try:
                    await take_block(self.rt, self.etcd, self.keys, size)
                    self.member.note(None)
                except EtcdError as error:  # Unavailable without a quorum
                    self.member.note(error)
                    await trio.sleep(RETRY_S)
                except ApeinxError as error:  # Degraded without a journal
                    log.warning("cluster: no pid block: %s", error.reason)
                    await trio.sleep(RETRY_S)
                continue
            await self.rt.wait_for("trace", PID_CHECK_S)


def names_seen(rt) -> list[str]:
    """The nodes /nodes lists: every node that ever published to the cluster; on a single node, itself."""
    return sorted(rt.cluster.view.records) if rt.cluster is not None else [rt.kernel.config.node]


def node_seen(rt, name: str) -> NodeView | None:
    """Node `name` as /nodes shows it: from the cluster's view; on a single node, itself from its kernel
    (up, leading, epoch 0)."""
    if rt.cluster is not None:
        return rt.cluster.view.node(name)
    if name != rt.kernel.config.node:
        return None
    return NodeView(record_of(rt.kernel, 0, rt.clock.now_us(), None, cannot_run=rt.cannot_run), up=True, leader=True)


def tasks_seen(rt, name: str, tenant: str | None = None) -> str | None:
    """Node `name`'s live pids as ranges, as /nodes shows them: all of them, or only `tenant`'s (as that tenant
    sees them). From the cluster's view (`tasks_of`; `tenants_of`: the live keys share one cap, docs/cluster.md);
    on a single node its own, read off its kernel's index of live pids (a tenant's to a cap of its own). None
    where `node_seen` is (no record, another name)."""
    if rt.cluster is not None:
        view = rt.cluster.view
        if name not in view.records:
            return None
        return view.live_of(name, tenant)
    if name != rt.kernel.config.node:
        return None
    return live_ranges(rt.kernel) if tenant is None else tenant_live_ranges(rt.kernel, tenant)
