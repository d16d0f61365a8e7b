"""Tier 4: failover with fencing on three daemons, peers of each other, on a real 3-member etcd.

A node killed with -9 or stopped for 3 x lease_s loses its lease; the leader moves its
unfinished tasks to the other nodes, which run them afresh under the same pids; `wait`
on a surviving node ends `done`; a node that comes back stops the tasks moved away
without an exit, so no task has two `exit` lines across the nodes' traces. Waits poll
with generous bounds; nothing asserts a duration.
"""
import collections
import os
import signal
import subprocess
import time

import pytest

from cluster_peers import all_running, peered_nodes
from daemon import Daemon, poll_until
from etcdcluster import EtcdCluster
from test_cluster_nodes import FUSE_READY, LEASE_S, NAMES, SETTLE_S, all_up, keyed, status, submit_soon
from test_cluster_tasks import cat, kill

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
FAILOVER_TASK = "model=sim max_tokens=4000 prompt=moved"  # about 8 s at 2 ms a token
STAYING_TASK = "model=sim max_tokens=20000 prompt=stay"  # about 40 s: still running after 3 x lease_s


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Daemons a, b, c on one 3-member etcd, each serving peers; stopped by pid at the end."""
    root = tmp_path_factory.mktemp("failover")
    with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints) as daemons:
        yield daemons


def spread(nodes: dict, line: str, count: int) -> dict[int, str]:
    """`count` submits on a: pid -> the node it runs on."""
    pids = [submit_soon(nodes["a"], line) for _ in range(count)]
    return {pid: keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"] for pid in pids}


def victim_of(where: dict[int, str]) -> str:
    """The node other than a that runs most of the tasks."""
    return collections.Counter(node for node in where.values() if node != "a").most_common(1)[0][0]


def waited(daemon: Daemon, pid: int) -> str | None:
    """What `cat wait` prints on `daemon`, or None while it fails (the task's node is down, not moved yet)."""
    done = subprocess.run(["cat", daemon.path("tasks", str(pid), "wait")], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def trace_lines(daemon: Daemon, kind: str) -> list[list[str]]:
    return [line.split(",") for line in cat(daemon, "trace", "events").splitlines()[1:] if line.split(",")[2] == kind]


def exits(nodes: dict, pids) -> collections.Counter:
    """How many `exit` lines each of `pids` has across the nodes' traces."""
    return collections.Counter(int(fields[3]) for daemon in nodes.values() for fields in trace_lines(daemon, "exit")
                               if fields[3] and int(fields[3]) in pids)


def test_a_killed_nodes_tasks_end_done_elsewhere_exactly_once(nodes):
    """kill -9 of the node running most of 12 tasks: `wait` on a prints done for every one, the moved ones
    with a `failover` line on their new node; the dead node shows `State: down`; restarted, it stops the
    tasks moved away without an exit, and no task has two `exit` lines."""
    all_running(nodes)
    where = spread(nodes, FAILOVER_TASK, 12)
    victim = victim_of(where)
    moved = [pid for pid, node in where.items() if node == victim]
    nodes[victim].kill9()
    for pid in where:
        assert poll_until(lambda: waited(nodes["a"], pid), SETTLE_S, f"wait of task {pid} on a") == "done\n"
    assert status(nodes["a"], victim)["State"] == "down"
    survivors = {name: d for name, d in nodes.items() if name != victim}
    failovers = {int(fields[3]) for d in survivors.values() for fields in trace_lines(d, "failover")}
    assert set(moved) <= failovers, (moved, failovers)
    nodes[victim].start()
    poll_until(lambda: all_up(nodes), SETTLE_S, f"{victim} up again")
    poll_until(lambda: {int(f[3]) for f in trace_lines(nodes[victim], "failover")} >= set(moved), SETTLE_S,
               f"the moved tasks stopped on {victim}")
    assert exits(nodes, set(where)) == collections.Counter(set(where))


def test_a_stopped_node_does_not_run_its_moved_tasks_again_and_rejoins(nodes):
    """SIGSTOP of the node running most of 6 long tasks for 3 x lease_s: its tasks move; after SIGCONT it
    stops them with a `failover` line and rejoins with a higher epoch; killed from a, each task has one
    `exit` line across the nodes, on its new node."""
    all_running(nodes)
    where = spread(nodes, STAYING_TASK, 6)
    victim = victim_of(where)
    moved = [pid for pid, node in where.items() if node == victim]
    before = int(status(nodes["a"], victim)["Epoch"])
    os.kill(nodes[victim].proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3 * LEASE_S)
    finally:
        os.kill(nodes[victim].proc.pid, signal.SIGCONT)
    poll_until(lambda: status(nodes["a"], victim)["State"] == "up"
               and int(status(nodes["a"], victim)["Epoch"]) > before, SETTLE_S, f"{victim} up again")
    poll_until(lambda: {int(f[3]) for f in trace_lines(nodes[victim], "failover")} >= set(moved), SETTLE_S,
               f"the moved tasks stopped on {victim}")
    new_homes = {pid: keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"] for pid in moved}
    assert victim not in new_homes.values(), new_homes
    for pid in where:
        kill(nodes["a"], pid)
    for pid in where:
        assert poll_until(lambda: waited(nodes["a"], pid), SETTLE_S, f"wait of task {pid} on a") == "killed\n"
    assert exits(nodes, set(where)) == collections.Counter(set(where))
    assert all(fields[7] != victim for fields in trace_lines(nodes[victim], "exit") if int(fields[3] or 0) in moved)
