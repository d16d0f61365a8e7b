"""What the check of a silent member (apeinxfs/cluster/etcd_watch.py) costs a watch, in CPU per event.

Starts tests/etcdcluster.py's cluster (3 members on 127.0.0.1); a child process puts
BENCH_EVENTS keys one at a time (one event per line of the watch stream) while this
process's watch consumes them, two ways: a `Watch` (each read inside a cancel scope that
the stream's checker task would cancel, the time of each answer noted for it), and the same
watch without the checker (`UncheckedWatch`, the read alone: the baseline). The puts'
CPU is the child's, so this process's CPU from the first event to the last is the
watch's own. BENCH_ROUNDS rounds, each of the two first in every other round; prints the
CPU per event of each, its medians, and the ratio of checked to unchecked. A figure to
watch, with no target (not in bench/run).
"""
import os
import shutil
import subprocess
import sys
import time

import trio

from common import ROUNDS, median
from etcdcluster import EtcdCluster

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_watch import Watch

EVENTS = int(os.environ.get("BENCH_EVENTS", "1500"))


class UncheckedWatch(Watch):
    """The watch without the check: no checker task, each answer read alone (what the baseline measures)."""

    next_answer = Watch.read_line

    def start_checking(self) -> None:
        pass


async def put_keys(endpoints: list[str], prefix: bytes) -> None:
    """EVENTS puts under `prefix`, one at a time (the child process's work)."""
    async with Etcd(endpoints) as etcd:
        for index in range(EVENTS):
            await etcd.put(prefix + b"%d" % index, b"v")


async def cpu_per_event(endpoints: list[str], etcd: Etcd, prefix: bytes, watch_class: type[Watch]) -> float:
    """This process's CPU µs per event from the first event to the last of a `watch_class` watch on `prefix`
    while a child process puts EVENTS keys under it."""
    async with trio.open_nursery() as checking, watch_class(etcd, prefix, True, None, False, checking) as events:
        putter = subprocess.Popen([sys.executable, __file__, "put", prefix.decode(), *endpoints])
        await events.__anext__()
        started = time.process_time()
        for _ in range(EVENTS - 1):
            await events.__anext__()
        cpu = time.process_time() - started
        checking.cancel_scope.cancel()
    putter.wait()
    return cpu / (EVENTS - 1) * 1e6


async def measure(endpoints: list[str]) -> dict:
    """{"checked" | "unchecked": [CPU µs per event, per round]}."""
    per_event: dict[str, list[float]] = {"checked": [], "unchecked": []}
    async with Etcd(endpoints) as etcd:
        for round_index in range(ROUNDS):
            ways = [("checked", Watch), ("unchecked", UncheckedWatch)]
            for name, watch_class in ways[::-1] if round_index % 2 else ways:  # neither always first
                prefix = b"bench/%s/%d/" % (name.encode(), round_index)
                per_event[name].append(await cpu_per_event(endpoints, etcd, prefix, watch_class))
    return per_event


def main() -> int:
    if sys.argv[1:2] == ["put"]:
        trio.run(put_keys, sys.argv[3:], sys.argv[2].encode())
        return 0
    if not shutil.which("etcd"):
        print("etcd is not installed (scripts/setup installs etcd-server)", file=sys.stderr)
        return 1
    with EtcdCluster() as cluster:
        per_event = trio.run(measure, cluster.endpoints)
    print(f"3-member etcd on 127.0.0.1, {ROUNDS} rounds of {EVENTS} events put by a child process, the "
          f"watching process's CPU per event ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}):")
    for name, found in per_event.items():
        print(f"{name:9} {median(found):6.1f} µs   rounds " + " ".join(f"{value:.1f}" for value in found))
    print(f"checked / unchecked: {median(per_event['checked']) / median(per_event['unchecked']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
