"""Pids unique cluster-wide: blocks of them granted from a counter in etcd.

etcd holds the first pid nobody has been granted (`Keys.pids`). `grant_block` moves it on
by a block in a txn guarded on the counter's revision, which also notes the block's holder
(`Keys.block`: so any node finds the node of any pid, live or exited), never below the node's own pids
(`floor`: a node that ran alone before keeps its pids). The daemon journals each grant as a
kernel event (events.PidBlock), so the kernel gives pids from its blocks and a replay gives
the same ones. `keep_pids` asks for the next block once fewer than half a block is left, so
submits rarely wait for etcd; without a quorum, a node goes on with the pids it has, and
once they are used up its submits fail with EAGAIN (kernel/tasktable.py).
"""
import logging
from collections.abc import Callable

from ..kernel.events import PidBlock
from ..nodes.forwarding import PID_DIGITS
from .etcd import Etcd
from .etcd_records import EtcdError, KeyValue
from .peerdata import MAX_COUNT
from .records import Keys, unchanged

log = logging.getLogger(__name__)


async def grant_block(etcd: Etcd, key: bytes, floor: int, size: int,
                      holder: Callable[[int], tuple[bytes, bytes]] | None = None) -> int:
    """The first pid of a block of `size` granted to this node, at `floor` or past it; `holder(first)`,
    if given, is a key and value put in the same txn (who holds the block)."""
    while True:
        kv = await etcd.get(key)
        first = max(counter_of(key, kv), floor)
        txn = unchanged(key, kv).put(key, str(first + size).encode())
        if holder is not None:
            txn = txn.put(*holder(first))
        # repeatable: a lost answer retried fails its guard and a block is skipped, never given twice
        if (await etcd.txn(txn, repeatable=True)).succeeded:
            return first


def counter_of(key: bytes, kv: KeyValue | None) -> int:
    """The first pid nobody was granted, as the counter holds it (1 without one); EtcdError naming the key if
    it holds no pid (written by hand, say): blocks are not granted until it is mended."""
    if kv is None:
        return 1
    if kv.value.isascii() and kv.value.isdigit() and len(kv.value) <= PID_DIGITS and 0 < int(kv.value) < MAX_COUNT:
        return int(kv.value)
    raise EtcdError(f"etcd: pid counter {key.decode(errors='replace')} holds {kv.value[:40]!r}, not a pid: "
                    f"no pid block is granted until it is mended")


def wants_block(runtime, size: int) -> bool:
    """Whether the node has fewer than half a block of pids left (always false on a single node) and
    could journal a grant (not while degraded: a block granted then would be skipped)."""
    left = runtime.kernel.tasks.pids_left()
    return left is not None and left < (size + 1) // 2 and runtime.health.fault is None


async def take_block(runtime, etcd: Etcd, keys: Keys, size: int) -> None:
    """Be granted a block, noted in etcd as this node's (`Keys.block`), and journal it (EtcdError without
    etcd, Degraded if the journal fails)."""
    name = runtime.kernel.config.node
    first = await grant_block(etcd, keys.pids, runtime.kernel.tasks.pid_floor(), size,
                              lambda first: (keys.block(first), f"{name} {size}".encode()))
    runtime.commit([PidBlock(first=first, count=size)])  # refused: the block is skipped, another is asked for
    log.info("cluster: granted pids %d..%d", first, first + size - 1)
