"""This node's tenants' use in etcd: a key per tenant, `usage/NODE/TENANT`, on the node's lease.

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

import trio

from .etcd import Etcd
from .etcd_records import EtcdError, Lease, Txn
from .guarded import joined, packed
from .member import RETRY_S
from .peerdata import Unreadable
from .records import Keys
from .usage import Row, key_row

Held = dict[str, Row | None]  # tenant -> its row as etcd holds it on this lease (None: held otherwise, to redo)


class UsageKeys:
    """Node `name`'s usage keys, kept equal to `rows()`; `changed(rows)` returns once they may differ."""

    def __init__(self, etcd: Etcd, keys: Keys, name: str, rows: Callable[[], dict[str, Row]],
                 changed: Callable[[dict[str, Row]], Awaitable[None]], note: Callable[[EtcdError | None], None]):
        self.etcd, self.keys, self.name = etcd, keys, name
        self.rows, self.changed, self.note = rows, changed, note

    async def keep(self, lease: Lease) -> None:
        """Keep the keys equal to this node's rows, on `lease`, until cancelled."""
        held: Held | None = None  # unknown: read it from etcd
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

    async def read(self, lease_id: int) -> Held:
        """This node's usage keys in etcd: their rows if on `lease_id` and readable, else None (to put again or
        delete)."""
        found = await self.etcd.range(self.keys.usage(self.name), prefix=True)
        held: Held = {}
        for kv in found.kvs:
            tenant = kv.key[len(self.keys.usage(self.name)):].decode(errors="replace")
            try:
                held[tenant] = key_row(f"{self.name}/{tenant}", kv.value)[2] if kv.lease == lease_id else None
            except Unreadable:
                held[tenant] = None
        return held

    async def write(self, held: Held, rows: dict[str, Row], lease_id: int) -> None:
        """Put the rows that differ from `held`'s and delete the keys of tenants not in `rows`, in as few txns
        as etcd takes (none when nothing changed)."""
        for batch in packed(self.changes(held, rows, lease_id)):
            await self.etcd.txn(joined(txn for _, txn in batch))

    def changes(self, held: Held, rows: dict[str, Row], lease_id: int) -> list[tuple[str, Txn]]:
        """(tenant, its put or delete) for each tenant whose key must change, the deletes first: the followers
        apply them in this order, and at MAX_TENANTS (usage.py) a tenant that takes another's place would be
        refused if its put came while the other's key was still there."""
        deletes = [(tenant, Txn().delete(self.keys.usage(self.name, tenant))) for tenant in held if tenant not in rows]
        return deletes + [(tenant, Txn().put(self.keys.usage(self.name, tenant), encode(row), lease_id))
                          for tenant, row in rows.items() if held.get(tenant) != row]


def encode(row: Row) -> bytes:
    """A usage key's value: the row as JSON, `[1,10,29000000,1234,480000,5678]`."""
    return json.dumps(row, separators=(",", ":")).encode()
