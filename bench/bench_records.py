"""What a node's record costs etcd and the other nodes: the whole record with its live pids put every second
(before) against the record put only when it changed (or every HEARTBEAT_S) and the live pids in a key per
tenant, only changed ones put (after: member.py `publish`, cluster/livekeys.py), in process (no etcd, no FUSE).

For T = 10, 100, 1,000 tenants of 3 live tasks each (bench_usage.py's record: a full prefix summary; its use
rows left out, as this version's records carry none), idle (nothing changes) and busy (every second the counters
change and BUSY tenants' live pids, all of them at 10 tenants):
- bytes a second one node puts (keys and values): before, the record with `tasks` and `tenants` every
  PUBLISH_S; after, the record without them every HEARTBEAT_S idle, every PUBLISH_S busy, plus the live keys
  LiveKeys.changes puts (none idle); at 100 nodes, MB/s into etcd and across the watchers (each node gets every
  put);
- the follower's CPU: ms an event (before: `ClusterView.apply` of the whole record, its pids changed when busy
  and as before when idle; after: of the bare record, and of a live key), and ms a second per publishing node
  (events a second x ms an event): rounds alternating, best of BENCH_ROUNDS of a median over 20-200 events.
Ratios are before / after. Figures only: nothing is judged.
"""
import os
import sys

import attrs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_peerdata import median_ms  # noqa: E402 - the checkout and bench/ are on the path
from bench_usage import KEYS, record  # noqa: E402
from apeinxfs.cluster.etcd_records import Event, KeyValue, unb64  # noqa: E402
from apeinxfs.cluster.livekeys import LiveKeys  # noqa: E402
from apeinxfs.cluster.member import HEARTBEAT_S, PUBLISH_S  # noqa: E402
from apeinxfs.cluster.records import NodeRecord  # noqa: E402
from apeinxfs.cluster.view import ClusterView  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BUSY = 20  # tenants whose live pids change a second on a busy node
NODES = 100


def whole(tenants: int, live: int, running: int = 60) -> bytes:
    """The node's record as the version before put it: live pids in `tasks` and `tenants`, no use rows."""
    return attrs.evolve(NodeRecord.from_json(record(1, tenants, live)), usage={}, running=running).to_json()


def bare(tenants: int, running: int = 60) -> bytes:
    """The node's record as this version puts it: no live pids."""
    return attrs.evolve(NodeRecord.from_json(whole(tenants, 3, running)), tasks="", tenants={}).to_json()


def pids(tenants: int, changed: int) -> dict[str, str]:
    """Each tenant's live pids (record's layout), the first `changed` tenants' one task more."""
    ranges = NodeRecord.from_json(whole(tenants, 3)).tenants
    return {name: text if t >= changed else f"{text},{int(text.split('-')[1]) + 2}"
            for t, (name, text) in enumerate(ranges.items())}


def live_bytes(held: dict[str, str], now: dict[str, str]) -> int:
    """The bytes of keys and values LiveKeys puts to go from `held` to `now`."""
    writer = LiveKeys(None, KEYS, "n001", lambda: now, None, None)
    ops = [op["request_put"] for _, txn in writer.changes(held, now, 7) for op in txn.success if "request_put" in op]
    return sum(len(unb64(op["key"])) + len(unb64(op["value"])) for op in ops)


def put(key: bytes, value: bytes, revision: int) -> Event:
    return Event("PUT", KeyValue(key, value, 1, revision, 2), None)


def follower(tenants: int, busy: bool) -> tuple[float, float, float]:
    """(before, after's record, after's live key) ms an event on a node following node n001."""
    old_view, new_view = ClusterView(KEYS), ClusterView(KEYS)
    olds = [put(KEYS.node("n001"), whole(tenants, live if busy else 3, 60 + live), 11) for live in (3, 4)]
    news = [put(KEYS.node("n001"), bare(tenants, 60 + live), 11) for live in (3, 4)]
    name, text = next(iter(pids(tenants, 0).items()))
    keys = [put(KEYS.live("n001", name), value.encode(), 11) for value in (text, f"{text},99999999")]
    for view, first in ((old_view, olds[0]), (new_view, news[0])):
        view.apply(first)
    count = 200 if tenants < 1000 else 50
    best = [float("inf")] * 3
    for _ in range(ROUNDS):  # alternating
        best[0] = min(best[0], median_ms(lambda i: old_view.apply(olds[i % 2]), count))
        best[1] = min(best[1], median_ms(lambda i: new_view.apply(news[i % 2]), count))
        best[2] = min(best[2], median_ms(lambda i: new_view.apply(keys[i % 2]), count))
    assert not old_view.unreadable and not new_view.unreadable, "the bench's records must be readable"
    return best[0], best[1], best[2]


def measure(tenants: int, busy: bool) -> None:
    key = len(KEYS.node("n001"))
    changed = min(tenants, BUSY) if busy else 0
    before_s = (key + len(whole(tenants, 3))) / PUBLISH_S
    keys_s = live_bytes(pids(tenants, 0), pids(tenants, changed)) / PUBLISH_S
    after_s = (key + len(bare(tenants))) / (PUBLISH_S if busy else HEARTBEAT_S) + keys_s
    before_ms, record_ms, key_ms = follower(tenants, busy)
    cpu_before = before_ms / PUBLISH_S
    cpu_after = record_ms / (PUBLISH_S if busy else HEARTBEAT_S) + changed * key_ms / PUBLISH_S
    print(f"{tenants:7d} {'busy' if busy else 'idle':5s} {before_s:9.0f} {after_s:8.0f} {before_s / after_s:7.1f}x "
          f"{NODES * before_s / 1e6:9.3f} {NODES * after_s / 1e6:9.4f} {NODES * NODES * before_s / 1e6:9.1f} "
          f"{NODES * NODES * after_s / 1e6:9.3f} {before_ms:8.4f} {record_ms:8.4f} {key_ms:8.4f} "
          f"{cpu_before:8.4f} {cpu_after:8.4f} {cpu_before / cpu_after:7.1f}x")


def main() -> None:
    print(f"B/s one node puts; MB/s of {NODES} nodes into etcd and across the watchers; ms an event of the follower "
          "(before's record, after's record, a live key) and ms a second per publishing node (cpu)")
    print("tenants state  B/s-before B/s-after ratio etcd-before etcd-after watch-before watch-after "
          "ev-before ev-record ev-key cpu-before cpu-after ratio")
    for tenants in (10, 100, 1000):
        for busy in (False, True):
            measure(tenants, busy)


if __name__ == "__main__":
    main()
