"""What the check of a silent member (apeinxfs/cluster/etcd_watch.py) costs a watch, in CPU per event.

Starts tests/etcdcluster.py's cluster (3 members on 127.0.0.1) and, in one client process,
puts BENCH_EVENTS keys one at a time (one event per line of the watch stream) three ways:
with no watch (the puts' own CPU), while a `Watch` consumes them (its read runs beside a
task that would check the member after WATCH_CHECK_S of silence), and while the same watch
without that task consumes them (`UncheckedWatch`, the read alone: the baseline).
BENCH_ROUNDS rounds, the three interleaved; prints the client's CPU per event of each
watch beyond the puts' own, its medians, and the ratio of checked to unchecked. A figure
to watch, with no target (not in bench/run).
"""
import os
import shutil
import sys
import time

import trio

from common import ROUNDS, median
from etcdcluster import EtcdCluster

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_watch import Watch

EVENTS = int(os.environ.get("BENCH_EVENTS", "1500"))


class UncheckedWatch(Watch):
    """The watch without the check: each answer read alone (what the baseline measures)."""

    next_answer = Watch.read_line


async def put_keys(etcd: Etcd, prefix: bytes) -> None:
    for index in range(EVENTS):
        await etcd.put(prefix + b"%d" % index, b"v")


async def consume(events: Watch) -> None:
    for _ in range(EVENTS):
        await events.__anext__()


async def cpu_of_puts(etcd: Etcd, prefix: bytes, watch_class: type[Watch] | None) -> float:
    """The client's CPU seconds for EVENTS puts under `prefix`, with a `watch_class` watch consuming them."""
    started = time.process_time()
    if watch_class is None:
        await put_keys(etcd, prefix)
        return time.process_time() - started
    async with watch_class(etcd, prefix, True, None, False) as events, trio.open_nursery() as nursery:
        nursery.start_soon(consume, events)
        await put_keys(etcd, prefix)
    return time.process_time() - started


async def measure(endpoints: list[str]) -> dict:
    """{"checked" | "unchecked": [CPU µs per event beyond the puts' own, per round]}."""
    per_event: dict[str, list[float]] = {"checked": [], "unchecked": []}
    async with Etcd(endpoints) as etcd:
        for round_index in range(ROUNDS):
            puts = await cpu_of_puts(etcd, b"bench/none/%d/" % round_index, None)
            for name, watch_class in (("checked", Watch), ("unchecked", UncheckedWatch)):
                cpu = await cpu_of_puts(etcd, b"bench/%s/%d/" % (name.encode(), round_index), watch_class)
                per_event[name].append((cpu - puts) / EVENTS * 1e6)
    return per_event


def main() -> int:
    if not shutil.which("etcd"):
        print("etcd is not installed (scripts/setup installs etcd-server)", file=sys.stderr)
        return 1
    with EtcdCluster() as cluster:
        per_event = trio.run(measure, cluster.endpoints)
    print(f"3-member etcd on 127.0.0.1, {ROUNDS} rounds of {EVENTS} events, the client's CPU per event "
          f"beyond the puts' own ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}):")
    for name, found in per_event.items():
        print(f"{name:9} {median(found):6.0f} µs   rounds " + " ".join(f"{value:.0f}" for value in found))
    print(f"checked / unchecked: {median(per_event['checked']) / median(per_event['unchecked']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
