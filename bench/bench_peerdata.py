"""What reading a peer's record costs the follower, by its pid ranges and tenants (in process: no etcd, no FUSE).

    .venv/bin/python bench/bench_peerdata.py [REF]

Every node's watch brings every other node's record (once a second per node, up to every 50 ms
while its limited tenants' use changes), and `ClusterView.apply` reads it: `NodeRecord.from_json`,
i.e. peerdata.loads (the nesting bound, then the JSON) and record_fields (types, bounds, and the
pid ranges' form, order and count). For R = 10 / 1,000 / 10,000 pid ranges (10,000 is the most a
record carries: records.MAX_RANGES) in `tasks` and as many spread over its tenants, and T = 10 /
1,000 tenants' use rows (1,000 is usage.MAX_TENANTS), a round times 20-200 events alternating
between two records and takes their median, in two tables: `pids changed` (each record's ranges
other than the last's: a publish after the node's tasks changed) and `pids as before` (only other
fields differ: a publish while the node's live pids did not change, as while its tasks run on; the use
rows stand for those fields here, as an older version's records carry them, usagekeys.py):
- apply_ms: one `nodes/NAME` event through `ClusterView.apply`;
- json_ms: `json.loads` of the same bytes, the baseline in the same round (the floor of any check);
- ratio: apply / json. Each figure is the best of BENCH_ROUNDS rounds.
A third table, `live key changed`, does the same for one of the node's live keys (`live/n001/team0000`,
livekeys.py) of R ranges, alternating between two values (T plays no part): the follower reads the new value
and takes the old one's pids off the node's count; json_ms there is of `json.loads` of the value as lists
(peerdata's own fast path).
With REF (another checkout, e.g. `git worktree add /tmp/ref main`), each round runs REF's and this
checkout's apeinxfs in two worker processes, alternating, and prints this / REF: the figure that
tells whether a cut buys 5%. BENCH_PROFILE=1 prints cProfile's hottest functions of apply on the
largest record. Figures only: nothing is judged.
"""
import cProfile
import json
import os
import pstats
import statistics
import sys
import time

from workers import serve, started

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZES = [(ranges, tenants) for ranges in (10, 1_000, 10_000) for tenants in (10, 1_000)]
HERE = os.path.abspath(__file__)


def record(ranges: int, tenants: int, live: int, used: int) -> bytes:
    """A record whose `tasks` are `ranges` ranges of `live` pids each, spread in order over up to `tenants`
    tenants (the same ranges), with `tenants` use rows of `used` tasks."""
    from apeinxfs.cluster.records import NodeRecord
    names = [f"team{t:04d}" for t in range(tenants)]
    bounds = [(1_000 + 10 * i, 1_000 + 10 * i + live - 1) for i in range(ranges)]
    text = [f"{first}-{last}" if last > first else str(first) for first, last in bounds]
    share = max(1, ranges // tenants)
    by_tenant = {names[i // share]: ",".join(text[i:i + share]) for i in range(0, min(ranges, share * tenants), share)}
    return NodeRecord(name="n001", epoch=3, seen_us=1_765_000_000_000_000, gpus=8, slots_free=4,
                      kv_pages_free=12_000, queued=2, running=60, live=live * ranges, tasks=",".join(text),
                      models=("llama-70b", "sim"), advertise="10.0.0.1:7070", pid_next=1_000 + 10 * ranges,
                      tenants=by_tenant, usage={name: [used, 100 * used, 29_000_000, 1_234, 480_000, 5_678]
                                                for name in names}).to_json()


def events_of(ranges: int, tenants: int, same_pids: bool) -> list:
    """Two events of node n001's record: their pids as each other's (`same_pids`) or not, their use not."""
    from apeinxfs.cluster.etcd_records import Event, KeyValue
    from apeinxfs.cluster.records import Keys
    key = Keys("apeinxfs/").node("n001")
    return [Event("PUT", KeyValue(key, record(ranges, tenants, 3 if same_pids else used, used), 1, 11, 2), None)
            for used in (3, 4)]


def median_ms(step, count: int) -> float:
    """The median ms a call of `step(i)` takes over `count` calls."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def live_events(ranges: int) -> list:
    """Two events of node n001's live key of tenant team0000: `ranges` ranges each, the second's one pid longer."""
    from apeinxfs.cluster.etcd_records import Event, KeyValue
    from apeinxfs.cluster.records import Keys
    key = Keys("apeinxfs/").live("n001", "team0000")
    texts = [",".join(f"{1_000 + 10 * i}-{1_000 + 10 * i + live - 1}" for i in range(ranges)) for live in (3, 4)]
    return [Event("PUT", KeyValue(key, text.encode(), 1, 11, 2), None) for text in texts]


def one_round(ranges: int, tenants: int, mode: str) -> tuple[float, float]:
    """(apply_ms, json_ms) of one round at this size, in this process's checkout; `mode` "changed" or "same"
    (the record's pids), or "live" (a live key)."""
    from apeinxfs.cluster.records import Keys
    from apeinxfs.cluster.view import ClusterView
    view = ClusterView(Keys("apeinxfs/"))
    events = live_events(ranges) if mode == "live" else events_of(ranges, tenants, mode == "same")
    view.apply(events[0])
    assert view.unread_live == {} and view.unreadable == {} and (view.records or view.live), "must be readable"
    count = 200 if ranges * tenants < 1_000_000 else 20
    value = (lambda i: "[[" + events[i % 2].kv.value.decode().replace(",", "],[").replace("-", ",") + "]]") \
        if mode == "live" else (lambda i: events[i % 2].kv.value)
    return (median_ms(lambda i: view.apply(events[i % 2]), count), median_ms(lambda i: json.loads(value(i)), count))


TITLES = {"changed": "pids changed", "same": "pids as before", "live": "live key changed"}


def compare(workers: dict, mode: str) -> None:
    """Each size's best apply and json ms per checkout over ROUNDS rounds, the workers alternating."""
    names = list(workers)
    print(TITLES[mode])
    print("ranges tenants value_B " + " ".join(f"{name}_apply_ms {name}_json_ms {name}_ratio" for name in names)
          + ("  this/ref" if len(names) == 2 else ""))
    for ranges, tenants in SIZES if mode != "live" else [(ranges, 1) for ranges in (10, 1_000, 10_000)]:
        best = {name: (float("inf"), float("inf")) for name in names}
        for index in range(ROUNDS):
            for name in (names if index % 2 == 0 else names[::-1]):
                apply_ms, json_ms = workers[name].round(ranges, tenants, mode)
                best[name] = (min(best[name][0], apply_ms), min(best[name][1], json_ms))
        size = len(live_events(ranges)[0].kv.value if mode == "live" else record(ranges, tenants, 3, 3))
        cells = " ".join(f"{a:14.3f} {j:11.3f} {a / j:9.1f}x" for a, j in best.values())
        tail = f"  {best['this'][0] / best['ref'][0]:8.3f}" if len(names) == 2 else ""
        print(f"{ranges:6d} {tenants:7d} {size:8d} {cells}{tail}", flush=True)


def profile() -> None:
    """cProfile's hottest functions of apply on the largest record."""
    from apeinxfs.cluster.records import Keys
    from apeinxfs.cluster.view import ClusterView
    view, events = ClusterView(Keys("apeinxfs/")), events_of(10_000, 1_000, False)
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [view.apply(events[i % 2]) for i in range(20)])
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    with started(HERE) as workers:
        for mode in TITLES:
            compare(workers, mode)
    if os.environ.get("BENCH_PROFILE"):
        profile()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        serve(sys.argv[2], lambda ranges, tenants, mode: one_round(int(ranges), int(tenants), mode))
    else:
        main()
