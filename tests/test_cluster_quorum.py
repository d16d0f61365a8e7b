"""Tier 4: a submit is acknowledged only once failover can move it; fencing at once; quorum loss.

Three daemons a, b, c, peers of each other, on a real 3-member etcd (`lease_s = 5`): a
task whose submit was answered moves even when its node is killed at once after the
answer (its key is in etcd before the answer); a node back from SIGSTOP for 3 x lease_s
holds its engines (a `fence` line) before it stops its moved tasks, and releases them
once it has checked with etcd; with two etcd members killed a submit fails with EAGAIN
and a reason, leaving nothing running, reads answer, and once they return submits work
and every acknowledged task is there. Waits poll with generous bounds; nothing is timed (a
submit's refusal after the quorum loss names the bound it waited).
"""
import errno
import os
import signal
import threading
import time

import pytest
import trio

from cluster_peers import peered_nodes
from apeinxfs.cluster import failover
from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.taskkeys import TaskKey
from daemon import Daemon, poll_until
from etcdcluster import EtcdCluster
from test_cluster_failover import FAILOVER_TASK as MOVED_TASK, STAYING_TASK, trace_lines, waited
from test_cluster_nodes import (FUSE_READY, LEASE_S, SETTLE_S, all_up, cluster_config, keyed, link, status,
                                submit_soon)

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(etcd, daemons a, b, c by name), peers of each other; stopped by pid at the end."""
    root = tmp_path_factory.mktemp("quorum")
    with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints) as daemons:
        yield etcd, daemons


def write_submit(daemon: Daemon, text: str) -> tuple[list[int], OSError | None, str]:
    """One write(2) of `text` to ctl/submit: the pids replied, the write's error (or None), the reply."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_RDWR)
    try:
        try:
            os.write(fd, text.encode())
        except OSError as refused:
            return [], refused, os.read(fd, 4096).decode()
        reply = os.read(fd, 1 << 16).decode()
        return [int(pid) for pid in reply.split()], None, reply
    finally:
        os.close(fd)


def test_an_answered_submit_is_moved_even_if_its_node_dies_right_after_the_answer(cluster):
    """A 3-line write on a, its lines placed over the idle nodes (the first on a itself: equal pressure goes
    to this node), then kill -9 of a at once: each task has its key already, so every one ends `done`
    through `wait` on b, and the one on a moved there with a `failover` line from node a."""
    _, nodes = cluster
    pids, error, reply = write_submit(nodes["a"], MOVED_TASK + "\n" + MOVED_TASK + "\n" + MOVED_TASK + "\n")
    nodes["a"].kill9()
    assert error is None and len(pids) == 3, reply
    for pid in pids:
        assert poll_until(lambda: waited(nodes["b"], pid), SETTLE_S, f"wait of task {pid} on b") == "done\n"
    moved_from_a = {int(fields[3]) for name in ("b", "c") for fields in trace_lines(nodes[name], "failover")
                    if "moved here from node a" in ",".join(fields)}
    assert pids[0] in moved_from_a and moved_from_a <= set(pids), (pids, moved_from_a)
    nodes["a"].start()
    poll_until(lambda: all_up(nodes), SETTLE_S, "a up again")


def test_a_node_back_from_sigstop_holds_its_engines_before_it_stops_its_moved_tasks(cluster):
    """SIGSTOP for 3 x lease_s of the node running a 2-line write's first long task (and its second if it was
    placed there too): after SIGCONT its trace has a `fence` line holding its engines (its lease may have
    expired), then the `failover` lines of its moved tasks, then a `fence` line releasing them; no moved
    task has an `exit` line there."""
    _, nodes = cluster
    written, error, reply = write_submit(nodes["b"], STAYING_TASK + "\n" + STAYING_TASK + "\n")
    assert error is None and len(written) == 2, reply
    homes = {pid: keyed(nodes["b"].path("tasks", str(pid), "status"))["Node"] for pid in written}
    victim = nodes[homes[written[0]]]  # the lines may be placed on two nodes: the first's is stopped
    pids = [pid for pid in written if homes[pid] == homes[written[0]]]
    poll_until(lambda: all(int(victim.status(pid)["TokensOut"]) > 100 for pid in pids), SETTLE_S, "tokens made")
    tokens_before = [int(victim.status(pid)["TokensOut"]) for pid in pids]
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3 * LEASE_S)
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    poll_until(lambda: {int(f[3]) for f in trace_lines(victim, "failover")} >= set(pids), SETTLE_S,
               "the moved tasks stopped")
    fences = [(int(f[0]), ",".join(f[8:])) for f in trace_lines(victim, "fence")]
    held = [seq for seq, detail in fences if "held: the lease of node" in detail]
    moved = [int(f[0]) for f in trace_lines(victim, "failover") if int(f[3]) in pids]
    assert held and held[0] < min(moved), (fences, moved)
    poll_until(lambda: any("released" in ",".join(f[8:]) and int(f[0]) > max(moved)
                           for f in trace_lines(victim, "fence")), SETTLE_S, "the engines released")
    assert not [f for f in trace_lines(victim, "exit") if int(f[3] or 0) in pids]
    print("tokens made before SIGSTOP and in all, on the stopped node:", tokens_before,
          [int(victim.status(pid)["TokensOut"]) for pid in pids])
    for pid in written:
        os.system(f"echo {pid} > {nodes['a'].path('ctl', 'kill')}")
    poll_until(lambda: all_up(nodes), SETTLE_S, "every node up again")


def test_two_etcd_members_killed_a_submit_fails_with_eagain_and_nothing_acknowledged_is_lost(cluster):
    """With two of three members killed, a submit fails with EAGAIN and a reason naming the bound it waited
    (not a hang), and the refused task is not left running; reads answer; once they return, submits work
    again and every acknowledged task is there."""
    etcd, nodes = cluster
    acked = [submit_soon(nodes["a"]) for _ in range(4)]
    with etcd.down(0):
        acked += [submit_soon(nodes["a"]) for _ in range(4)]  # one member down: submits go on
        poll_until(lambda: all(int(link(d)["PidsLeft"]) >= 2 for d in nodes.values()), SETTLE_S,
                   "every node holding pids (blocks of 4), so the refusal is for the key, not for a pid")
        with etcd.down(1):
            pids, error, reply = write_submit(nodes["a"], MOVED_TASK + "\n")
            assert error is not None and error.errno == errno.EAGAIN, (pids, reply)
            bound = f"within {failover.SETTLE_S + failover.SETTLE_LINE_S:.0f}s"  # one line's
            assert "could not record tasks" in reply and bound in reply and "try again" in reply, reply
            refused = [int(f[3]) for name in nodes for f in trace_lines(nodes[name], "exit")
                       if "refused at its submit" in ",".join(f)]
            assert refused, "the refused task ended where it was submitted"
            assert status(nodes["a"], "b")["Name"] == "b" and nodes["a"].status(acked[0])["Pid"] == str(acked[0])
            poll_until(lambda: link(nodes["a"])["Etcd"] == "unavailable", SETTLE_S, "node a sees no etcd quorum")
    acked.append(submit_soon(nodes["a"]))
    poll_until(lambda: all_up(nodes), SETTLE_S, "a, b and c up again as seen from every node")
    for pid in acked:
        assert keyed(nodes["a"].path("tasks", str(pid), "status"))["Pid"] == str(pid)
    for pid in refused:
        assert keyed(nodes["a"].path("tasks", str(pid), "status"))["Exit"].startswith("failed")


def task_key(endpoints: list[str], pid: int) -> TaskKey | None:
    """Task `pid`'s key as etcd holds it (tests' prefix), or None."""
    async def read() -> TaskKey | None:
        async with Etcd(endpoints) as etcd:
            kv = await etcd.get(f"test-cluster/tasks/{pid}".encode())
            return TaskKey.from_json(kv.value) if kv else None
    return trio.run(read)


def test_a_node_killed_while_a_submit_waits_for_its_key_puts_the_key_at_its_restart(cluster, tmp_path):
    """Node d (no peers) journals a submit while etcd has no quorum and is killed -9 while the write waits:
    the write gets no pid; restarted with the quorum back, d puts the task's key (owner d) and runs it."""
    etcd, _ = cluster
    d = Daemon(tmp_path / "ai", tmp_path / "state", cluster_config("d", etcd.endpoints))
    d.start()
    try:
        poll_until(lambda: int(link(d)["PidsLeft"]) > 0, SETTLE_S, "d granted pids")
        with etcd.down(0, 1):
            answers: list = []

            def write() -> None:
                try:
                    answers.append(write_submit(d, MOVED_TASK + "\n"))
                except OSError as cut:  # the reply's read on the dead mount
                    answers.append(([], cut, ""))
            writer = threading.Thread(target=write)
            writer.start()
            poll_until(lambda: trace_lines(d, "submit"), SETTLE_S, "the task journaled on d")  # its own tasks only
            d.kill9()
            writer.join()
            assert answers and not answers[0][0] and answers[0][1].errno in (errno.ENOTCONN, errno.ECONNABORTED), answers
        d.start()
        [pid] = [int(fields[3]) for fields in poll_until(lambda: trace_lines(d, "submit"), SETTLE_S, "d replayed")]
        key = poll_until(lambda: task_key(etcd.endpoints, pid), SETTLE_S, f"the key of task {pid} in etcd")
        assert key.owner == "d" and key.epoch == 1
        assert poll_until(lambda: waited(d, pid), SETTLE_S, f"wait of task {pid} on d") == "done\n"
    finally:
        d.stop()
