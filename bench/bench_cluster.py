"""What being a cluster node costs a daemon's submits, on a real 3-member etcd.

Daemons side by side, alike but for `[cluster]`: one single node, one cluster node
(tests/etcdcluster.py's etcd on this machine; pids from blocks of 100,000 granted
through etcd, its record published every second, a watch on every node's) that places
nothing (no peers), and a placing node: one of three cluster nodes that are peers of each
other, whose submits are placed over all three (about two in three forwarded to another
through its peer server; a write's lines placed one by one, each node's sent at once). For
BENCH_ROUNDS rounds, alternating between them so that load from
elsewhere falls on all: single-line submits per second for BENCH_SECONDS (one write(2)
each, journaled before it returns; on the placing node, placements per second), the same
from WRITERS threads at once, and a 20,000-line write. Prints medians, the ratios to the
single node, how many of the placing node's single-line writes went to its peers, and where
the lines of its 20,000-line writes landed. A cluster node
answers a submit once its tasks' keys are in etcd (one txn, shared by the submits waiting
at that moment), so a write pays a txn; the placing node's also pays an HTTP request per
forwarded group of lines. A figure to watch, with no target (not in bench/run). Run from
another checkout's directory (cd OTHER && python THIS/bench/bench_cluster.py), the daemons
run that checkout's apeinxfs: so two versions compare on the same bench.
"""
import os
import sys
import tempfile

import trio

from common import QUEUE_CONFIG, ROUNDS, concurrent_rate, make_daemon, median, single_line_submits, submit_lines
from daemon import poll_until
from engines import free_port
from etcdcluster import EtcdCluster

BULK_LINES = 20_000
WRITERS = 8
MODES = ("single", "cluster", "placing")
NODES = ("placing", "peer", "peer2")  # the placing node and its peers


def cluster_config(endpoints: list[str], name: str = "bench", peers: str = "") -> str:
    """A cluster node's config; `peers`, if given, is the token file of peers under their own prefix."""
    urls = ", ".join(f'"{url}"' for url in endpoints)
    config = QUEUE_CONFIG + f'\n[daemon]\nnode = "{name}"\n[cluster]\netcd = [{urls}]\n'
    if peers:
        config += f'advertise = "127.0.0.1:{free_port()}"\ntoken_file = "{peers}"\nprefix = "bench-placed/"\n'
    return config


def token_file(tmp: str) -> str:
    path = os.path.join(tmp, "token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
        file.write(os.urandom(16).hex())
    return path


def places(daemon) -> list[tuple[str, int]]:
    """(node, tasks) of each `place` line in `daemon`'s trace."""
    with open(daemon.path("trace", "events")) as trace:
        found = [line.split('"pids ', 1)[1] for line in trace if line.split(",")[2:3] == ["place"]]
    return [(rest.split(" on node ", 1)[1].split(":", 1)[0], tasks(rest.split(" on node ", 1)[0])) for rest in found]


def tasks(ranges: str) -> int:
    """How many pids "A-B,C" ranges hold."""
    bounds = [part.split("-") for part in ranges.split(",")]
    return sum(int(bound[-1]) - int(bound[0]) + 1 for bound in bounds)


def one_round(daemon) -> tuple[float, float, float]:
    """(single-line submits/s, the same from WRITERS threads at once, tasks/s of one BULK_LINES-line write)
    on `daemon`."""
    writes, seconds = single_line_submits(daemon)
    return (writes / seconds, trio.run(concurrent_submits, daemon),
            BULK_LINES / submit_lines(daemon, [f"bulk{n} 1000 5" for n in range(BULK_LINES)]))


async def concurrent_submits(daemon) -> float:
    """One-line writes per second from WRITERS threads, each on its own fd (a cluster node's waiting
    submits share a txn)."""
    fds = [os.open(daemon.path("ctl", "submit"), os.O_WRONLY) for _ in range(WRITERS)]
    try:
        return await concurrent_rate(lambda worker: trio.to_thread.run_sync(os.write, fds[worker], b"one 1000 5\n"),
                                     WRITERS)
    finally:
        for fd in fds:
            os.close(fd)


def main() -> int:
    rates: dict = {name: [] for name in MODES}
    with EtcdCluster() as etcd, tempfile.TemporaryDirectory(prefix="apeinx-bench-cluster-") as tmp:
        token = token_file(tmp)
        daemons = {"single": make_daemon(os.path.join(tmp, "single"), QUEUE_CONFIG, "single"),
                   "cluster": make_daemon(os.path.join(tmp, "cluster"), cluster_config(etcd.endpoints), "cluster"),
                   "placing": make_daemon(os.path.join(tmp, "placing"),
                                          cluster_config(etcd.endpoints, "placing", token), "placing")}
        peer = make_daemon(os.path.join(tmp, "peer"), cluster_config(etcd.endpoints, "peer", token), "peer")
        peer2 = make_daemon(os.path.join(tmp, "peer2"), cluster_config(etcd.endpoints, "peer2", token), "peer2")
        with daemons["single"], daemons["cluster"], daemons["placing"], peer, peer2:
            wait_for_peer(daemons["placing"])
            for _ in range(ROUNDS):
                for name, daemon in daemons.items():
                    rates[name].append(one_round(daemon))
            with open(daemons["cluster"].path("cluster")) as link:
                print(link.read().replace("\n", "; "))
            placed = places(daemons["placing"])
    for index, what in enumerate(("single-line submits/s", f"single-line submits/s from {WRITERS} writers at once",
                                  f"tasks/s of one {BULK_LINES:,}-line write")):
        single, cluster, placing = (median([r[index] for r in rates[name]]) for name in MODES)
        print(f"{what}: single node {single:,.0f}, cluster node {cluster:,.0f} (ratio {cluster / single:.2f}), "
              f"placing node {placing:,.0f} (ratio {placing / single:.2f})")
    singles = [node for node, count in placed if count == 1]
    print(f"the placing node placed {sum(node != 'placing' for node in singles):,} of its {len(singles):,}"
          " single-line writes on its peers")
    bulk = {node: sum(count for name, count in placed if name == node and count > 1) for node in NODES}
    print(f"the lines of its {ROUNDS} {BULK_LINES:,}-line writes landed: "
          + ", ".join(f"{node} {count:,}" for node, count in bulk.items()))
    return 0


def wait_for_peer(daemon) -> None:
    """Until `daemon` sees the three placing nodes (else it would place everything on itself)."""
    poll_until(lambda: sorted(os.listdir(daemon.path("nodes"))) == sorted(NODES), 60, "the three placing nodes")


if __name__ == "__main__":
    sys.exit(main())
