"""This node's membership: a lease, an epoch, a published record, a candidacy for leader.

`Member.run` joins (a new lease; epoch + 1 by a guarded txn; the `up` key on the lease
and the record, in that one txn), keeps the lease alive and campaigns for leader, and
when the lease is lost (etcd expired it while the process was stopped, or no refresh got
through for a whole TTL) revokes what is left of it and joins again with the next epoch. However a held lease ends (lost, a bug,
the daemon stopping), the member first stops leading and counts the lease as expired (so fencing.py holds the
engines before the other nodes can move this node's tasks), then revokes it.
A lease it could not revoke (no quorum) is revoked after the next join: etcd extends
leases when it elects a leader, so the old candidacy would otherwise hold the election.
While it holds a lease it also runs `leased(lease)` (the daemon's: its usage and live keys, usagekeys.py),
cancelled when the lease is lost, and before a join's txn `before_up(lease)` (the daemon's: those keys
put on the new lease, so the other nodes count the node's use from the moment it is up). `publish` looks at
the node's record every PUBLISH_S and puts it when it changed (but for its `seen_us`), and every HEARTBEAT_S
all the same: an idle node puts nothing between (its liveness is its `up` key's). Without an etcd quorum every
call fails with Unavailable (EAGAIN) within the client's timeout: the member notes why and tries again; the
daemon's local work goes on meanwhile.
"""
import logging
import math
import re
from collections.abc import Awaitable, Callable

import attrs
import trio

from .etcd import Etcd
from .etcd_records import EtcdError, Lease, LeaseGone, Unavailable
from .records import Keys, NodeRecord, unchanged

log = logging.getLogger(__name__)
CALL = re.compile(r"etcd: /?[\w/]+: ")  # the call an etcd failure's reason starts with (etcd.py)
PUBLISH_S = 1.0  # how often a node looks whether its record changed, to put it
HEARTBEAT_S = 30.0  # how often a node puts its record unchanged
RETRY_S = 1.0  # the pause before a failed join or revoke is tried again
REVOKE_S = 2.0  # the most a revoke of a lost lease may take before joining anyway


class Member:
    """One node's membership in the cluster; `epoch` 0 until it first joined."""

    def __init__(self, etcd: Etcd, keys: Keys, name: str, lease_s: int, record: Callable[[int], NodeRecord],
                 leased: Callable[[Lease], Awaitable[None]] | None = None,
                 before_up: Callable[[Lease], Awaitable[None]] | None = None):
        self.etcd, self.keys, self.name, self.lease_s = etcd, keys, name, lease_s
        self.record = record  # epoch -> this node's record now
        self.leased = leased or _idle  # what runs while a lease is held, on it
        self.before_up = before_up or _nothing  # what a new lease holds before the up key is put on it
        self.epoch = 0
        # trio time before which etcd cannot have expired the lease (fencing.py); until the first join, passed:
        # a node started again holds its engines until that join has checked which tasks are still its own
        self.expires = -math.inf
        self.leading = False
        self.problem: str | None = None  # why the last etcd call failed, until one works
        self.writing = trio.Lock()  # a publish and a join's txn never overlap: no record of an old epoch lands last
        self.unrevoked: list[Lease] = []  # leases lost and not revoked yet (etcd was unreachable)
        self.last_put: tuple[NodeRecord, float] | None = None  # the last record put (less seen_us), and when (trio)

    def note(self, error: EtcdError | None) -> None:
        """Remember why etcd cannot be reached (logged when the reason changes, whichever call met it: the
        node's loops fail in turn while etcd refuses it); None once it can."""
        reason = None if error is None else error.reason
        if without_call(reason) != without_call(self.problem):
            (log.warning if reason else log.info)("cluster: %s", reason or "etcd answers again")
        self.problem = reason

    async def run(self) -> None:
        """Join, hold the lease, and join again with the next epoch whenever it is lost."""
        while True:
            try:
                lease = await self.join()
            except EtcdError as error:
                self.note(error)
                await trio.sleep(RETRY_S)
                continue
            self.note(None)
            await self.revoke_leftovers()
            try:
                await self.hold(lease)
            finally:  # however hold ends (lease lost, a bug, the daemon stopping): fenced first, then down at once
                self.step_down()
                with trio.CancelScope(shield=True):
                    await self.withdraw(lease)

    async def join(self) -> Lease:
        """A new lease and the next epoch, raised in a txn guarded on the epoch key's revision."""
        asked = trio.current_time()
        lease = await self.etcd.grant(self.lease_s)
        try:
            return await self.put_up(lease, asked)
        except BaseException:  # no quorum, a bug, the daemon stopping: revoked after the next join, not left to its TTL
            self.unrevoked.append(lease)
            raise

    async def put_up(self, lease: Lease, asked: float) -> Lease:
        """What goes on the new `lease` (before_up), then the next epoch and the up key on it, in a guarded txn."""
        await self.before_up(lease)
        key = self.keys.epoch(self.name)
        while True:
            kv = await self.etcd.get(key)
            epoch = (int(kv.value) if kv else 0) + 1
            text, record = str(epoch).encode(), self.record(epoch)
            txn = (unchanged(key, kv).put(key, text).put(self.keys.up(self.name), text, lease.id)
                   .put(self.keys.node(self.name), record.to_json()))
            async with self.writing:
                if (await self.etcd.txn(txn, repeatable=True)).succeeded:  # a lost answer retried: epoch + 2
                    self.epoch, self.expires = epoch, asked + lease.ttl
                    self.last_put = attrs.evolve(record, seen_us=0), trio.current_time()
                    log.info("cluster: node %s joined with epoch %d (lease %x, %ds)", self.name, epoch, lease.id,
                             lease.ttl)
                    return lease

    async def hold(self, lease: Lease) -> None:
        """Keep `lease` alive, campaign for leader and run `leased` on it; return once it is lost."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.campaign, lease)
            nursery.start_soon(self.leased, lease)
            try:
                await self.etcd.keep_alive(lease, refreshed=lambda sent: self.refreshed(sent + lease.ttl))
            except LeaseGone as gone:
                log.warning("cluster: node %s lost its lease (epoch %d): %s", self.name, self.epoch, gone.reason)
            nursery.cancel_scope.cancel()

    def step_down(self) -> None:
        """Stop leading and count the lease as expired (Fencing holds the engines at its next check): the
        other nodes may take the lead and move this node's tasks from the moment it stops refreshing."""
        self.leading = False
        self.expires = min(self.expires, trio.current_time())

    def refreshed(self, expires: float) -> None:
        self.expires = max(self.expires, expires)

    async def campaign(self, lease: Lease) -> None:
        """Stand for leader on `lease` (etcd's election: the oldest candidate leads) until it leads; when every
        member refused it by TLS (the one Unavailable of a call without deadline), note why and stand again
        after RETRY_S: the lease may outlive a refusal that is mended meanwhile."""
        while True:
            try:
                await self.etcd.campaign(self.keys.election, lease.id, self.name.encode())
                break
            except Unavailable as refused:
                self.note(refused)
                await trio.sleep(RETRY_S)
            except EtcdError as error:  # the lease went: hold() sees it too and joins again
                log.warning("cluster: campaign of %s ended: %s", self.name, error.reason)
                return
        self.leading = True
        log.info("cluster: node %s leads (epoch %d)", self.name, self.epoch)

    async def withdraw(self, lease: Lease) -> None:
        """Revoke a lease lost or left, so its `up` key and candidacy go now rather than at its expiry
        (after a quorum loss etcd may still hold it); give up after REVOKE_S."""
        if not await self.revoked(lease):
            self.unrevoked.append(lease)

    async def revoke_leftovers(self) -> None:
        """Revoke the leases lost while etcd could not be reached; keep those it still refuses."""
        self.unrevoked = [lease for lease in self.unrevoked if not await self.revoked(lease)]

    async def revoked(self, lease: Lease) -> bool:
        """Revoke `lease`, giving up after REVOKE_S; whether etcd confirmed it."""
        with trio.move_on_after(REVOKE_S):
            try:
                await self.etcd.revoke(lease.id)
                return True
            except EtcdError as error:
                self.note(error)
        return False

    async def publish(self) -> None:
        """Once joined, put this node's record (without a lease: it outlives the node) each PUBLISH_S in which
        it changed but for its seen_us, and after HEARTBEAT_S unchanged; a failed put is tried at the next."""
        while True:
            if self.epoch:
                try:
                    async with self.writing:
                        await self.put_if_due(self.record(self.epoch), trio.current_time())
                except EtcdError as error:
                    self.note(error)
                else:
                    self.note(None)
            await trio.sleep(PUBLISH_S)

    async def put_if_due(self, record: NodeRecord, now: float) -> None:
        """Put `record` unless the last put was the same but for its seen_us, less than HEARTBEAT_S ago."""
        bare = attrs.evolve(record, seen_us=0)  # a few hundred bytes: the live pids are in live keys
        if self.last_put is None or self.last_put[0] != bare or now >= self.last_put[1] + HEARTBEAT_S:
            await self.etcd.put(self.keys.node(self.name), record.to_json())
            self.last_put = bare, now


def without_call(reason: str | None) -> str | None:
    """An etcd failure's reason less the call it names ("etcd: /kv/range: why" -> "why")."""
    return reason if reason is None else CALL.sub("", reason, count=1)


async def _nothing(lease: Lease) -> None:
    """Nothing to put on a new lease before its up key."""


async def _idle(lease: Lease) -> None:
    """Nothing to run on a lease."""
    await trio.sleep_forever()
