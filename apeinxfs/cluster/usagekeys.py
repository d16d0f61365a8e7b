"""This node's keys of a row per tenant on its lease: its tenants' use (`UsageKeys`, `usage/NODE/TENANT`),
and the writer it shares with its tenants' live pids (`LeasedKeys`; livekeys.py's `live/NODE/TENANT`).

`UsageKeys.put_on(lease)` puts them on a new lease before the join's txn puts the node's `up` key
on it; `UsageKeys.keep(lease)` runs while the member holds `lease` (member.py `hold`, cancelled when the
lease is lost). It first reads the node's usage keys as etcd holds them, then makes them say
`published(kernel)` (usage.py): it puts the rows etcd does not hold on this lease (a rejoin's new
lease re-puts every row, which moves each key onto it) and deletes the keys of tenants no longer
listed; then, each time the use changes (`changed`: USAGE_S after the last write at the soonest),
it puts only the changed rows and deletes the vanished ones, in one txn (several, of TXN_OPS
operations each, when more change at once). A put's bytes are one row's (about 60 with its key),
whatever the number of tenants. On the lease: a node that dies takes its use with it when etcd
expires the lease (with its `up` key, in the same revision), and a node that leaves revokes it.
An etcd error leaves what etcd holds unknown (a txn's outcome may be): the keys are read again.
Not here: what a row is and how the other nodes count them (usage.py).
"""
import json
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from .etcd import Etcd
from .etcd_records import EtcdError, Lease, Txn
from .guarded import joined, packed
from .member import RETRY_S
from .peerdata import Unreadable
from .records import Keys
from .usage import Row, key_row

R = TypeVar("R")  # a key's row


class LeasedKeys(Generic[R]):
    """Node `name`'s keys of a row per tenant, kept equal to `rows()`; `changed(rows)` returns once they may
    differ. What the keys are named and hold: `key`, `encode`, `decode` (UsageKeys', LiveKeys')."""

    def __init__(self, etcd: Etcd, keys: Keys, name: str, rows: Callable[[], dict[str, R]],
                 changed: Callable[[dict[str, R]], Awaitable[None]], note: Callable[[EtcdError | None], None]):
        self.etcd, self.keys, self.name = etcd, keys, name
        self.rows, self.changed, self.note = rows, changed, note

    def key(self, tenant: str = "") -> bytes:
        """Tenant `tenant`'s key; with no tenant, the prefix of this node's keys."""
        raise NotImplementedError

    def encode(self, row: R) -> bytes:
        raise NotImplementedError

    def decode(self, tenant: str, value: bytes) -> R:
        """A key's row, as this node put it; Unreadable if it is none."""
        raise NotImplementedError

    async def keep(self, lease: Lease) -> None:
        """Keep the keys equal to this node's rows, on `lease`, until cancelled."""
        held: dict[str, R | None] | None = None  # tenant -> its row on this lease (None: to redo); None: unknown
        failed = False  # whether this writer's last try failed (its recovery is noted, not each write)
        while True:
            try:
                if held is None:
                    held = await self.read(lease.id)
                rows = self.rows()
                await self.write(held, rows, lease.id)
            except EtcdError as error:  # Unavailable (a txn's outcome unknown), or LeaseGone (hold() ends soon)
                self.note(error)
                held, failed = None, True
                await trio.sleep(RETRY_S)
                continue
            if failed:
                self.note(None)
            held, failed = dict(rows), False
            await self.changed(rows)

    async def put_on(self, lease: Lease) -> None:
        """Make the keys say this node's rows on `lease` once: before a join puts the up key on it (member.py
        `before_up`), so that a node counts as up with its use, not without it until `keep` writes."""
        await self.write(await self.read(lease.id), self.rows(), lease.id)

    async def read(self, lease_id: int) -> dict[str, R | None]:
        """This node's keys in etcd: their rows if on `lease_id` and readable, else None (to put again or
        delete)."""
        found = await self.etcd.range(self.key(), prefix=True)
        held: dict[str, R | None] = {}
        for kv in found.kvs:
            tenant = kv.key[len(self.key()):].decode(errors="replace")
            try:
                held[tenant] = self.decode(tenant, kv.value) if kv.lease == lease_id else None
            except Unreadable:
                held[tenant] = None
        return held

    async def write(self, held: dict[str, R | None], rows: dict[str, R], lease_id: int) -> None:
        """Put the rows that differ from `held`'s and delete the keys of tenants not in `rows`, in as few txns
        as etcd takes (none when nothing changed)."""
        for batch in packed(self.changes(held, rows, lease_id)):
            await self.etcd.txn(joined(txn for _, txn in batch))

    def changes(self, held: dict[str, R | None], rows: dict[str, R], lease_id: int) -> list[tuple[str, Txn]]:
        """(tenant, its put or delete) for each tenant whose key must change, the deletes first: the followers
        apply them in this order, and at MAX_TENANTS (usage.py) a tenant that takes another's place would be
        refused if its put came while the other's key was still there."""
        deletes = [(tenant, Txn().delete(self.key(tenant))) for tenant in held if tenant not in rows]
        return deletes + [(tenant, Txn().put(self.key(tenant), self.encode(row), lease_id))
                          for tenant, row in rows.items() if held.get(tenant) != row]


class UsageKeys(LeasedKeys[Row]):
    """Node `name`'s usage keys (`usage/NODE/TENANT`), kept equal to `rows()`."""

    def key(self, tenant: str = "") -> bytes:
        return self.keys.usage(self.name, tenant)

    def encode(self, row: Row) -> bytes:
        return encode(row)

    def decode(self, tenant: str, value: bytes) -> Row:
        return key_row(f"{self.name}/{tenant}", value)[2]


def encode(row: Row) -> bytes:
    """A usage key's value: the row as JSON, `[1,10,29000000,1234,480000,5678]`."""
    return json.dumps(row, separators=(",", ":")).encode()
