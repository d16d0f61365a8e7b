"""What one node record's change costs the follower of every node, in process (no etcd, no FUSE), where the
record carries its tenants' use, as an older version's does (this version's use is in usage keys:
bench_usage_keys.py compares the two).

An older version's node puts its record once a second (and up to every 50 ms while its limited
tenants' use changes: USAGE_S), and every node's watch brings each put: N nodes make N events a
second on each node. For N = 3, 8, 32, 100 nodes whose records each carry T = 10, 100, 1,000
tenants' use (usage.py's rows; 1,000 is MAX_TENANTS), the time a `nodes/NAME` event costs:
- parse: `ClusterView.apply` (the record's JSON read; the same before and after);
- baseline: the other nodes' use summed again over every node, as the follower did at each event
  before `Elsewheres` (`summed_again`: that code as it was, kept here as the reference);
- kept: `usage.Elsewheres.update` for the one node, its use changed (every tenant's row) and
  unchanged (a record published again as it was: most puts).
Each figure is the best of BENCH_ROUNDS rounds of a median over 20-200 events; ratio = baseline / kept.
Figures only: nothing is judged.
"""
import hashlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apeinxfs.cluster.etcd_records import Event, KeyValue  # noqa: E402 - the checkout is put on the path above
from apeinxfs.cluster.prefixes import MOST_KEYS, _filter  # noqa: E402
from apeinxfs.cluster.records import Keys, NodeRecord  # noqa: E402
from apeinxfs.cluster.usage import Elsewheres  # noqa: E402
from apeinxfs.cluster.view import ClusterView  # noqa: E402
from apeinxfs.kernel.tenancy import Elsewhere  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
KEYS = Keys("apeinxfs/")
# a full prefix summary, of the form a peer checks (records it cannot read would be skipped, and measure nothing)
FULL_FILTER = _filter([hashlib.blake2b(bytes([key]), digest_size=16).digest() for key in range(MOST_KEYS)])


def record(node: int, tenants: int, live: int) -> bytes:
    """A node's record with `tenants` tenants' use and live pids, and a full prefix summary."""
    names = [f"team{t:04d}" for t in range(tenants)]
    ranges = {name: f"{node * 100_000 + t * 10}-{node * 100_000 + t * 10 + live}" for t, name in enumerate(names)}
    return NodeRecord(name=f"n{node:03d}", epoch=3, seen_us=1_765_000_000_000_000, gpus=8, slots_free=4,
                      kv_pages_free=12_000, queued=2, running=60, live=live * tenants,
                      tasks=",".join(ranges.values()),
                      models=("llama-70b", "sim"), advertise="10.0.0.1:7070", pid_next=node * 100_000 + 99_999,
                      tenants=ranges,
                      prefixes=FULL_FILTER, prefix_blocks=256,
                      usage={name: [live, 100 * live, 29_000_000, 1_234, 480_000, 5_678] for name in names}).to_json()


def summed_again(nodes, here: str) -> dict[str, Elsewhere]:
    """The baseline: each tenant's use on the up nodes but `here`, summed over every node's rows afresh."""
    live: dict[str, list] = {}
    for name, node in nodes.items():
        if node.up and name != here:
            for tenant, (count, reserved, quota_window, quota_used, budget_window, budget_used) \
                    in node.record.usage.items():
                total = live.setdefault(tenant, [0, 0, {}, {}])
                total[0] += count
                total[1] += reserved
                total[2][quota_window] = total[2].get(quota_window, 0) + quota_used
                total[3][budget_window] = total[3].get(budget_window, 0) + budget_used
    return {tenant: Elsewhere(live=n, reserved=r, quota=q, budget=b) for tenant, (n, r, q, b) in live.items()}


def per_event(step, events: int) -> float:
    """The best over ROUNDS of the median ms a call of `step(i)` takes."""
    best = float("inf")
    for _ in range(ROUNDS):
        times = []
        for i in range(events):
            start = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - start)
        best = min(best, statistics.median(times) * 1e3)
    return best


def measure(nodes: int, tenants: int) -> None:
    view = ClusterView(KEYS)
    view.load([kv for n in range(nodes) for kv in (KeyValue(KEYS.node(f"n{n:03d}"), record(n, tenants, 3), 1, 2, 1),
                                                    KeyValue(KEYS.up(f"n{n:03d}"), b"3", 1, 2, 1))], 10)
    kept = Elsewheres("n000")
    kept.load(view.nodes())
    records = [record(1, tenants, live) for live in (3, 4)]
    events = [Event("PUT", KeyValue(KEYS.node("n001"), value, 1, 11, 2), None) for value in records]
    count = 200 if tenants < 1000 else 20
    parse = per_event(lambda i: view.apply(events[i % 2]), count)
    baseline = per_event(lambda i: summed_again(view.nodes(), "n000"), count)

    def changed(i):
        view.apply(events[i % 2])
        kept.update("n001", view.node("n001"))
    changed_ms = per_event(changed, count) - parse
    view.apply(events[0])
    kept.update("n001", view.node("n001"))
    same_ms = per_event(lambda i: kept.update("n001", view.node("n001")), count)
    print(f"{nodes:5d} {tenants:7d} {len(records[0]):8d} {parse:8.3f} {baseline:9.3f} {max(changed_ms, 0):8.3f} "
          f"{same_ms:9.4f} {baseline / max(changed_ms, 1e-4):8.1f}x {nodes * baseline:8.1f}")


def main() -> None:
    print("nodes tenants record_B parse_ms baseline_ms changed_ms same_ms  ratio  baseline_ms/s_at_1_put/s/node")
    for nodes in (3, 8, 32, 100):
        for tenants in (10, 100, 1000):
            measure(nodes, tenants)


if __name__ == "__main__":
    main()
