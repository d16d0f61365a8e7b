"""Many keys' guarded writes in few etcd txns: `write_each`.

Each item's writes stand under their own guards (the caller builds them as one Txn an item).
`write_each` packs the items into txns that etcd takes: at most TXN_OPS compares and TXN_OPS
operations (etcd's --max-txn-ops bounds each list), about TXN_BYTES of values (etcd refuses
requests over 1.5 MiB); a txn whose guards fail is sent again one item at a time, so one key
that another node changed holds back none of the others. failover.py writes task keys with
it, replicas.py outputs.
Not here: what is written and what a failed guard means (the callers), the client (etcd.py).
"""
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .etcd_records import TXN_OPS, Txn

TXN_BYTES = 1 << 20  # about the most bytes of values one txn carries
Item = TypeVar("Item")


async def write_each(etcd, items: Iterable[Item], one: Callable[[Item], Txn],
                     done: Callable[[Item, int | None], None] = lambda item, revision: None) -> None:
    """Run `one(item)` for each of `items`, packed into as few txns as etcd takes, and call `done(item,
    revision)` for each once its txn is answered (the revision its writes were made at, or None where its
    guards failed): an EtcdError midway leaves the items answered before it done, not to be sent again."""
    for batch in packed([(item, one(item)) for item in items]):
        result = await etcd.txn(joined(txn for _, txn in batch))
        if result.succeeded or len(batch) == 1:
            for item, _ in batch:
                done(item, result.revision if result.succeeded else None)
            continue
        for item, txn in batch:  # one guard failed, which fails the joined txn: each on its own
            result = await etcd.txn(txn)
            done(item, result.revision if result.succeeded else None)


def packed(parts: list[tuple[Item, Txn]]) -> Iterator[list[tuple[Item, Txn]]]:
    """`parts` in runs whose txns, joined, stay within TXN_OPS compares and operations and about TXN_BYTES."""
    batch: list[tuple[Item, Txn]] = []
    compares = operations = size = 0
    for item, txn in parts:
        compares, operations, size = compares + len(txn.compares), operations + len(txn.success), size + txn.size()
        if batch and (compares > TXN_OPS or operations > TXN_OPS or size > TXN_BYTES):
            yield batch
            batch, compares, operations, size = [], len(txn.compares), len(txn.success), txn.size()
        batch.append((item, txn))
    if batch:
        yield batch


def joined(txns: Iterable[Txn]) -> Txn:
    """One txn holding the guards and operations of `txns`."""
    whole = Txn()
    for txn in txns:
        whole.compares += txn.compares
        whole.success += txn.success
        whole.failure += txn.failure
    return whole
