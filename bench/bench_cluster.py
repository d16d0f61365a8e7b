"""What being a cluster node costs a daemon's submits, on a real 3-member etcd.

Two daemons side by side, alike but for `[cluster]`: one single node, one cluster node
(tests/etcdcluster.py's etcd on this machine; pids from blocks of 100,000 granted
through etcd, its record published every second, a watch on every node's). For
BENCH_ROUNDS rounds, alternating between the two so that load from elsewhere falls on
both: single-line submits per second for BENCH_SECONDS (one write(2) each, journaled
before it returns) and a 20,000-line write. Prints medians and the ratio cluster /
single. Submits make no etcd call (a block is asked for in the background), so the
ratio should be near 1. A figure to watch, with no target (not in bench/run).
"""
import os
import sys
import tempfile

from common import QUEUE_CONFIG, ROUNDS, SECONDS, count_runs, make_daemon, median, submit_lines
from etcdcluster import EtcdCluster

BULK_LINES = 20_000


def cluster_config(endpoints: list[str]) -> str:
    urls = ", ".join(f'"{url}"' for url in endpoints)
    return QUEUE_CONFIG + f'\n[daemon]\nnode = "bench"\n[cluster]\netcd = [{urls}]\n'


def one_round(daemon) -> tuple[float, float]:
    """(single-line submits/s, tasks/s of one BULK_LINES-line write) on `daemon`."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_WRONLY)
    try:
        writes, seconds = count_runs(lambda: os.write(fd, b"one 1000 5\n"), SECONDS)
    finally:
        os.close(fd)
    return writes / seconds, BULK_LINES / submit_lines(daemon, [f"bulk{n} 1000 5" for n in range(BULK_LINES)])


def main() -> int:
    rates: dict = {"single": [], "cluster": []}
    with EtcdCluster() as etcd, tempfile.TemporaryDirectory(prefix="apeinx-bench-cluster-") as tmp:
        daemons = {"single": make_daemon(os.path.join(tmp, "single"), QUEUE_CONFIG, "single"),
                   "cluster": make_daemon(os.path.join(tmp, "cluster"), cluster_config(etcd.endpoints), "cluster")}
        with daemons["single"], daemons["cluster"]:
            for _ in range(ROUNDS):
                for name, daemon in daemons.items():
                    rates[name].append(one_round(daemon))
            with open(daemons["cluster"].path("cluster")) as link:
                print(link.read().replace("\n", "; "))
    for index, what in enumerate(("single-line submits/s", f"tasks/s of one {BULK_LINES:,}-line write")):
        single, cluster = (median([r[index] for r in rates[name]]) for name in ("single", "cluster"))
        print(f"{what}: single node {single:,.0f}, cluster node {cluster:,.0f}, ratio {cluster / single:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
