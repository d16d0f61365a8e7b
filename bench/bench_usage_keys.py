"""What a change of one node's tenants' use costs etcd and the other nodes: the whole record re-put (before)
against a usage key per tenant (after: cluster/usagekeys.py), in process (no etcd, no FUSE).

For N = 3, 32, 100 nodes whose records carry T = 10, 100, 1,000 limited tenants (bench_usage.py's record:
live pids by tenant, a full prefix summary; before, every tenant's row in it):
- bytes per change: the keys and values one change puts, one tenant's use changed (before: the whole
  record, key included; after: the one usage key UsageKeys.changes puts), and every tenant's at once;
- bytes a second, every node busy (a change every USAGE_S, 20 a second): into etcd (N nodes' puts) and
  across the watchers (every node receives every put: N x that); after, each node's record once a second
  (PUBLISH_S, without usage) is counted besides;
- the follower's CPU per event: before, `ClusterView.apply` of the record and `Elsewheres.update` of its
  node; after, `ClusterView.apply` of the usage key and `Elsewheres.key_changed` (rounds alternating, best
  of BENCH_ROUNDS of a median over 20-200 events), and per second at 20 changes a second per node.
Ratios are before / after. Figures only: nothing is judged.
"""
import os
import sys

import attrs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_usage import KEYS, record  # noqa: E402 - the checkout and bench/ are on the path
from bench_peerdata import median_ms  # noqa: E402
from apeinxfs.cluster.daemon import USAGE_S  # noqa: E402
from apeinxfs.cluster.etcd_records import Event, KeyValue, unb64  # noqa: E402
from apeinxfs.cluster.member import PUBLISH_S  # noqa: E402
from apeinxfs.cluster.records import NodeRecord  # noqa: E402
from apeinxfs.cluster.usage import Elsewheres  # noqa: E402
from apeinxfs.cluster.usagekeys import UsageKeys, encode  # noqa: E402
from apeinxfs.cluster.view import ClusterView  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CHANGES_S = 1 / USAGE_S  # changes a second of a busy node at most


def rows(tenants: int, live: int) -> dict[str, list[int]]:
    return {f"team{t:04d}": [live, 100 * live, 29_000_000, 1_234, 480_000, 5_678] for t in range(tenants)}


def bare(node: int, tenants: int) -> bytes:
    """The node's record as this version writes it: no usage."""
    return attrs.evolve(NodeRecord.from_json(record(node, tenants, 3)), usage={}).to_json()


def put_bytes(held: dict, now: dict) -> int:
    """The bytes of keys and values UsageKeys puts to go from `held` to `now`."""
    writer = UsageKeys(None, KEYS, "n001", lambda: now, None, None)
    ops = [op["request_put"] for _, txn in writer.changes(held, now, 7) for op in txn.success if "request_put" in op]
    return sum(len(unb64(op["key"])) + len(unb64(op["value"])) for op in ops)


def follower(nodes: int, tenants: int) -> tuple[float, float, float]:
    """(before, after, a bare record's) ms per event on a node following `nodes` nodes of `tenants` tenants."""
    view, kept = ClusterView(KEYS), Elsewheres("n000")
    view.load([kv for n in range(nodes) for kv in (KeyValue(KEYS.node(f"n{n:03d}"), bare(n, tenants), 1, 2, 1),
                                                    KeyValue(KEYS.up(f"n{n:03d}"), b"3", 1, 2, 1))], 10)
    usage = [(f"n{n:03d}/{tenant}", encode(row)) for n in range(nodes) for tenant, row in rows(tenants, 3).items()]
    kept.load(view.nodes(), usage)
    records = [Event("PUT", KeyValue(KEYS.node("n001"), record(1, tenants, live), 1, 11, 2), None) for live in (3, 4)]
    keys = [Event("PUT", KeyValue(KEYS.usage("n001", "team0000"), encode([live, 0, 1, 2, 3, 4]), 1, 11, 2), None)
            for live in (3, 4)]
    bare_event = Event("PUT", KeyValue(KEYS.node("n002"), bare(2, tenants), 1, 11, 2), None)
    count = 200 if tenants < 1000 else 20
    old = Elsewheres("n000")  # the before side: n001 an older version's node, its use in its record
    old.load(view.nodes())

    def before(i):
        view.apply(records[i % 2])
        old.update("n001", view.node("n001"))

    def after(i):
        view.apply(keys[i % 2])
        kept.key_changed("n001/team0000", keys[i % 2].kv.value, view.node)
    best = [float("inf")] * 3
    for _ in range(ROUNDS):  # alternating
        best[0] = min(best[0], median_ms(before, count))
        best[1] = min(best[1], median_ms(after, count))
        best[2] = min(best[2], median_ms(lambda i: view.apply(bare_event), count))
    return best[0], best[1], best[2]


def measure(nodes: int, tenants: int) -> None:
    whole = len(KEYS.node("n001")) + len(record(1, tenants, 3))
    one = put_bytes(rows(tenants, 3), {**rows(tenants, 3), "team0000": [4, 400, 29_000_000, 1_234, 480_000, 5_678]})
    every = put_bytes(rows(tenants, 3), rows(tenants, 4))
    before_s = nodes * CHANGES_S * whole
    after_s = nodes * (CHANGES_S * one + (len(KEYS.node("n001")) + len(bare(1, tenants))) / PUBLISH_S)
    before_ms, after_ms, bare_ms = follower(nodes, tenants)
    cpu_before, cpu_after = nodes * CHANGES_S * before_ms, nodes * (CHANGES_S * after_ms + bare_ms / PUBLISH_S)
    print(f"{nodes:5d} {tenants:7d} {whole:8d} {one:6d} {whole / one:7.0f}x {every:8d} {whole / every:6.2f}x "
          f"{before_s / 1e6:9.3f} {after_s / 1e6:8.3f} {nodes * before_s / 1e6:10.1f} {nodes * after_s / 1e6:9.2f} "
          f"{before_s / after_s:6.1f}x {before_ms:9.4f} {after_ms:8.4f} {before_ms / after_ms:6.0f}x "
          f"{cpu_before:8.1f} {cpu_after:7.1f} {cpu_before / cpu_after:6.1f}x")


def main() -> None:
    print("B: bytes put a change (one tenant's; every tenant's: all-after); MB/s into etcd and across the watchers "
          "at 20 changes/s a node; ms an event of the follower, and ms a second (cpu) at that rate")
    print("nodes tenants  before  after  ratio  all-after ratio  etcd-before etcd-after watch-before watch-after "
          "ratio  ev-before ev-after ratio  cpu-before cpu-after ratio")
    for nodes in (3, 32, 100):
        for tenants in (10, 100, 1000):
            measure(nodes, tenants)


if __name__ == "__main__":
    main()
