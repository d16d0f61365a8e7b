"""Tier 4: three daemons on a real 3-member etcd, peers of each other: submits placed over the nodes,
and every task's files read and driven from any node with cat, ls and echo.

Nodes a, b, c (own mountpoints and state dirs, `lease_s = 5`, a peer server each on a free
127.0.0.1 port, one shared token) serve the whole module. Waits poll with generous bounds;
nothing asserts a duration.
"""
import os
import subprocess

import pytest

from cluster_peers import peered_nodes
from daemon import Daemon, poll_until
from etcdcluster import EtcdCluster
from test_cluster_nodes import FUSE_READY, LONG_TASK, NAMES, SETTLE_S, keyed, submit_soon

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
MEDIUM_TASK = "model=sim max_tokens=1500 prompt=medium"  # about 3 s at 2 ms a token


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Daemons a, b, c on one 3-member etcd, each serving peers; stopped by pid at the end."""
    root = tmp_path_factory.mktemp("placed")
    with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints) as daemons:
        yield daemons


def cat(daemon: Daemon, *parts) -> str:
    return subprocess.run(["cat", daemon.path(*parts)], capture_output=True, text=True, check=True).stdout


def listed_tasks(daemon: Daemon) -> set[int]:
    return {int(name) for name in os.listdir(daemon.path("tasks"))}


def seen_on(daemon: Daemon, pid: int) -> None:
    """Wait until `daemon` knows task `pid` of another node (its node publishes its pids every second)."""
    poll_until(lambda: os.path.exists(daemon.path("tasks", str(pid))), SETTLE_S, f"task {pid} on {daemon.mountpoint}")


def kill(daemon: Daemon, pid: int) -> None:
    subprocess.run(["sh", "-c", f"echo {pid} > {daemon.path('ctl', 'kill')}"], check=True)


def test_twelve_submits_on_one_node_are_spread_over_all_three(nodes):
    """12 long tasks submitted on a run on every node and `ls tasks` lists them on each; the trace of a
    has a `place` line for each; killed from a, `cat wait` on c prints killed, and their status shows
    `Node:` and reads the same on every node."""
    pids = [submit_soon(nodes["a"], LONG_TASK) for _ in range(12)]
    try:
        where = {pid: keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"] for pid in pids}
        assert set(where.values()) == set(NAMES), where
        for daemon in nodes.values():
            poll_until(lambda: set(pids) <= listed_tasks(daemon), SETTLE_S, f"every pid in ls on {daemon.mountpoint}")
        placed = [line for line in cat(nodes["a"], "trace", "events").splitlines() if line.split(",")[2] == "place"]
        assert len(placed) == 12 and all("pressure" in line for line in placed), placed
    finally:
        for pid in pids:
            kill(nodes["a"], pid)
    for pid in pids:
        assert cat(nodes["c"], "tasks", str(pid), "wait") == "killed\n"
        texts = {cat(d, "tasks", str(pid), "status") for d in nodes.values()}
        assert len(texts) == 1 and f"Node:\t{where[pid]}\n" in texts.pop()


def test_wait_and_stream_of_a_remote_task_read_from_another_node(nodes):
    """A task submitted on b, read from a node that does not run it: `cat wait` prints done, and `cat
    stream` and `cat output` give what they give on the node that runs it."""
    pid = submit_soon(nodes["b"], MEDIUM_TASK)
    owner = keyed(nodes["b"].path("tasks", str(pid), "status"))["Node"]
    other = next(name for name in NAMES if name != owner)
    seen_on(nodes[other], pid)
    assert cat(nodes[other], "tasks", str(pid), "wait") == "done\n"
    streamed = {name: cat(d, "tasks", str(pid), "stream") for name, d in nodes.items()}
    assert len(set(streamed.values())) == 1 and streamed[owner]
    assert cat(nodes[other], "tasks", str(pid), "output") == streamed[owner]


def test_kill_and_ctl_from_another_node_act_on_the_task_where_it_runs(nodes):
    """`echo PID > ctl/kill` on a node that does not run the task kills it there; `echo stop >
    tasks/PID/ctl` from another node stops it."""
    first, second = submit_soon(nodes["a"], LONG_TASK), submit_soon(nodes["a"], LONG_TASK)
    for pid in (first, second):
        owner = keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"]
        other = nodes[next(name for name in NAMES if name != owner)]
        seen_on(other, pid)
        if pid == first:
            kill(other, pid)
        else:
            subprocess.run(["sh", "-c", f"echo stop > {other.path('tasks', str(pid), 'ctl')}"], check=True)
            poll_until(lambda: keyed(nodes[owner].path("tasks", str(pid), "status"))["State"].startswith("T"),
                       SETTLE_S, f"task {pid} stopped on {owner}")
            kill(other, pid)
        assert cat(other, "tasks", str(pid), "wait") == "killed\n"
        assert keyed(nodes[owner].path("tasks", str(pid), "status"))["Exit"] == "killed"


def test_a_child_goes_to_its_parents_node(nodes):
    """A submit with parent=PID written on a goes to the node that runs the parent, wherever that is."""
    parents = [submit_soon(nodes["a"], LONG_TASK) for _ in range(3)]
    try:
        for parent in parents:
            node = keyed(nodes["a"].path("tasks", str(parent), "status"))["Node"]
            child = submit_soon(nodes["a"], f"model=sim max_tokens=2 prompt=child parent={parent}")
            assert keyed(nodes["a"].path("tasks", str(child), "status"))["Node"] == node
            assert cat(nodes[node], "tasks", str(parent), "children") == f"{child}\n"
    finally:
        for parent in parents:
            kill(nodes["a"], parent)


def test_an_idle_node_lists_other_nodes_tasks_as_they_come_and_go(nodes):
    """An idle node that listed tasks before lists another node's new task once that node publishes it, and no
    longer once it was killed: its listing is sorted again as the cluster view changes, not only its kernel."""
    for daemon in nodes.values():
        listed_tasks(daemon)
    pid = submit_soon(nodes["a"], LONG_TASK)
    try:
        owner = keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"]
        observer = nodes[next(name for name in ("c", "b") if name != owner)]
        poll_until(lambda: pid in listed_tasks(observer), SETTLE_S, f"task {pid} in ls tasks of {observer.mountpoint}")
    finally:
        kill(nodes["a"], pid)
    poll_until(lambda: pid not in listed_tasks(observer), SETTLE_S, f"killed {pid} out of ls tasks of {observer.mountpoint}")


def test_a_killed_node_is_passed_over_and_the_trace_says_so(nodes):
    """kill -9 of c: before its lease expires it still looks up, so a's placements try it (once it ranks
    first: tasks placed on a and b weigh them down), find it cannot be connected to, place on a or b instead
    and say so in the `place` line; every submit succeeds."""
    nodes["c"].kill9()
    pids, placed = [], []
    while len(pids) < 12 and not any("c unreachable" in line for line in placed):
        pids.append(submit_soon(nodes["a"], MEDIUM_TASK))
        lines = cat(nodes["a"], "trace", "events").splitlines()
        placed = [line for line in lines if line.split(",")[2] == "place" and any(f"pids {p} on" in line for p in pids)]
    assert {keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"] for pid in pids} <= {"a", "b"}
    assert len(placed) == len(pids) and any("c unreachable" in line for line in placed), placed
