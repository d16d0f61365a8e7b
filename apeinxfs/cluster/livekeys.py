"""This node's tenants' live pids in etcd: a key per tenant with live tasks, `live/NODE/TENANT`, on the node's lease.

The value is the tenant's live pids as ranges, `4-9,12` (records.pid_ranges; at most MAX_RANGES ranges over all
the node's tenants). `LiveKeys` keeps them equal to the node's last look at its live pids (daemon.py
`live_pids`, at most once a PUBLISH_S) with usagekeys.LeasedKeys: only the tenants whose pids changed are put,
a tenant with no live task left is deleted, every key is put on each new lease before the up key, and the
keys go with the lease. `live_of` reads one as the other nodes do: a peer's key is untrusted input (peerdata).
Not here: the node's record (records.py), which carries no live pids, and who reads them (view.py).
"""
from .peerdata import Unreadable, pid_count
from .usagekeys import LeasedKeys


class LiveKeys(LeasedKeys[str]):
    """Node `name`'s live keys, kept equal to `rows()` (tenant -> live pid ranges)."""

    def key(self, tenant: str = "") -> bytes:
        return self.keys.live(self.name, tenant)

    def encode(self, row: str) -> bytes:
        return row.encode()

    def decode(self, tenant: str, value: bytes) -> str:
        return live_of(f"{self.name}/{tenant}", value)[0]


def live_of(name: str, value: bytes) -> tuple[str, int]:
    """(ranges, how many pids they name) of live key NODE/TENANT `name`'s value; Unreadable unless it is
    pid ranges in order, of peerdata.MAX_PIDS pids at most."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise Unreadable(f"live pids of {name} are not ASCII") from None
    count = pid_count(text, f"live pids of {name}")
    if count == 0:
        raise Unreadable(f"live pids of {name} name no pid")
    return text, count
