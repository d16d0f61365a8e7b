"""Failover time over kills: from `kill -9` of a node to its tasks running elsewhere.

Three daemons, peers of each other, on a real 3-member etcd (tests/cluster_peers.py,
`lease_s = 5`). For BENCH_KILLS rounds: long tasks are submitted on a until node c runs
two of them, c is killed with -9, and the time is taken until `status` read on a names
another node for every one of c's tasks (the leader moved them and the new node
adopted them: `Node:` follows the task's key); then c is started again and the next
round waits until every node sees it up. Prints the median and the largest time, with
the lease (the part of it that is etcd expiring the lease) as the baseline: by design
failover takes 2/3 `lease_s` to `lease_s`, plus up to a second for the leader's look
and another for the adoption. A figure to watch, with no target (not in bench/run).
"""
import os
import pathlib
import statistics
import sys
import tempfile
import time

import common  # noqa: F401 - puts tests/ on the path
from cluster_peers import peered_nodes
from daemon import poll_until
from etcdcluster import EtcdCluster
from test_cluster_nodes import LEASE_S, all_up, keyed, submit_soon

KILLS = int(os.environ.get("BENCH_KILLS", "10"))
KEYED_S = 1.0  # c writes its tasks' keys within some 25 ms of their submits: a task younger than that dies with c
TASK = "model=sim max_tokens=20000 prompt=stay"  # about 40 s: still running when c dies


def node_of(daemon, pid: int) -> str | None:
    """The `Node:` of task `pid` read on `daemon`; None while it cannot be read (its node is down)."""
    try:
        return keyed(daemon.path("tasks", str(pid), "status"))["Node"]
    except OSError:
        return None


def one_kill(nodes: dict) -> float:
    """Seconds from kill -9 of c to every task c ran named on another node, read on a."""
    on_c, others = [], []
    while len(on_c) < 2:
        pid = submit_soon(nodes["a"], TASK)
        (on_c if node_of(nodes["a"], pid) == "c" else others).append(pid)
    time.sleep(KEYED_S)
    killed = time.monotonic()
    nodes["c"].kill9()
    poll_until(lambda: all(node_of(nodes["a"], pid) not in (None, "c") for pid in on_c), 120, "c's tasks moved")
    took = time.monotonic() - killed
    for pid in on_c + others:
        with open(nodes["a"].path("ctl", "kill"), "w") as ctl:
            ctl.write(f"{pid}\n")
    nodes["c"].start()
    poll_until(lambda: all_up(nodes), 120, "c up again")
    return took


def main() -> int:
    times = []
    with tempfile.TemporaryDirectory(prefix="apeinx-bench-failover-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = pathlib.Path(tmp)
        with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints) as nodes:
            for _ in range(KILLS):
                times.append(one_kill(nodes))
                print(f"kill {len(times)}: {times[-1]:.1f} s", flush=True)
    print(f"failover over {KILLS} kills (lease_s {LEASE_S}): median {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s, min {min(times):.1f} s; median / lease_s "
          f"{statistics.median(times) / LEASE_S:.2f}")
    print("each:", ", ".join(f"{t:.1f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
