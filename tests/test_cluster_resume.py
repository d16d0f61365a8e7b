"""Tier 4: a moved task goes on from its replicated output, on three daemons and a real 3-member etcd.

A long task runs on node b or c, which puts its output into etcd every `replicate_s` (2 s by
default); the test reads that key straight from etcd, kills the node with -9 once it holds
tokens, and finds the task done on its new node, whose `failover` line says after which token
it resumed, with the output it had then at the head of its own, the replica gone after the exit,
and the task's key gone once the new node reaped the task (`task_age_s`).
Waits poll with generous bounds; nothing asserts a duration.
"""
import base64
import json
import re

import httpx
import pytest

from cluster_peers import peered_nodes
from daemon import poll_until
from etcdcluster import EtcdCluster
from test_cluster_failover import exits, trace_lines, waited
from test_cluster_nodes import FUSE_READY, SETTLE_S, keyed, submit_soon
from test_cluster_tasks import cat

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
LONG_TASK = "model=sim max_tokens=8000 prompt=resume"  # about 16 s at 2 ms a token
OUTPUT_PREFIX = "test-cluster.out/"  # Keys.output of the tests' prefix "test-cluster/"
REAPED_AFTER = "[retention]\ntask_age_s = 20\n"  # long enough for the test's reads of the exited task


def replicated(etcd: EtcdCluster, pid: int, prefix: str = OUTPUT_PREFIX) -> dict | None:
    """Task `pid`'s replicated output (or the value of another key `prefix` + pid) as etcd holds it, read
    from the first member that answers."""
    key = base64.b64encode(f"{prefix}{pid}".encode()).decode()
    for url in etcd.endpoints:
        try:
            kvs = httpx.post(f"{url}/v3/kv/range", json={"key": key}, timeout=5.0).json().get("kvs", [])
        except httpx.HTTPError:
            continue
        return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None
    raise AssertionError("no etcd member answered")


def placed_off(nodes: dict, line: str) -> tuple[int, str]:
    """Submit `line` on a until a task lands on another node: (its pid, its node)."""
    for _ in range(12):
        pid = submit_soon(nodes["a"], line)
        if (home := keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"]) != "a":
            return pid, home
    raise AssertionError("12 submits on a, all placed on a")


def test_a_killed_nodes_task_resumes_elsewhere_from_its_replicated_output(tmp_path):
    """kill -9 of the node running a long task once etcd holds some of its output: the task ends done
    on another node, its `failover` line says it resumed after at least those tokens, its output begins
    with what was replicated, it has one `exit` line, its replica is deleted after the exit, and its key
    once its new node has reaped it."""
    with EtcdCluster(tmp_path / "etcd") as etcd, peered_nodes(tmp_path, etcd.endpoints, REAPED_AFTER) as nodes:
        pid, home = placed_off(nodes, LONG_TASK)
        replica = poll_until(lambda: (r := replicated(etcd, pid)) and r["tokens"] >= 200 and r, SETTLE_S,
                             f"task {pid}'s output replicated from {home}")
        nodes[home].kill9()
        assert poll_until(lambda: waited(nodes["a"], pid), SETTLE_S, f"wait of task {pid} on a") == "done\n"
        survivors = {name: daemon for name, daemon in nodes.items() if name != home}
        lines = [",".join(fields) for d in survivors.values() for fields in trace_lines(d, "failover")
                 if int(fields[3]) == pid]
        assert len(lines) == 1, lines
        assert int(re.search(r"resumes after token (\d+)", lines[0])[1]) >= replica["tokens"], lines
        assert cat(nodes["a"], "tasks", str(pid), "output").startswith(replica["output"])
        assert exits(survivors, {pid}) == {pid: 1}
        poll_until(lambda: replicated(etcd, pid) is None, SETTLE_S, f"task {pid}'s replica deleted after its exit")
        assert replicated(etcd, pid, "test-cluster/tasks/")["exited"]  # kept while the task is: where it ran
        poll_until(lambda: replicated(etcd, pid, "test-cluster/tasks/") is None, SETTLE_S,
                   f"task {pid}'s key deleted once reaped")
