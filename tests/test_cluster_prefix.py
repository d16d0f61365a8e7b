"""Tier 4: placement's prefix affinity on three daemons on a real 3-member etcd: after a task with a long
prompt ran on one node, submits sharing its prompt's leading blocks, made on the other nodes, go there.

Nodes a, b, c (own mountpoints and state dirs, `lease_s = 5`, a peer server each, one shared
token; tests/cluster_peers.py) serve the module. The sim model's pages hold 512 tokens, so a
prompt of 1,600 words has 3 full blocks that later prompts share. Waits poll with generous
bounds; nothing asserts a duration. Each task is waited for before the next submit, so node X
has at most one task of the test's in any record, and never more than a slot or two busier than
the others (its cached blocks count as 3 free slots).
"""
import csv

import pytest

from cluster_peers import peered_nodes
from daemon import Daemon, poll_until
from etcdcluster import EtcdCluster
from test_cluster_nodes import FUSE_READY, NAMES, SETTLE_S, keyed, status, submit_soon
from test_cluster_tasks import cat

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
SHARED = " ".join(f"w{index}" for index in range(1600))  # BOS + 1,600 words: 3 full blocks of 512 tokens


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Daemons a, b, c on one 3-member etcd, each serving peers; stopped by pid at the end."""
    root = tmp_path_factory.mktemp("prefix")
    with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints) as daemons:
        yield daemons


def asked(question: str) -> str:
    return f'model=sim max_tokens=2 prompt="{SHARED} {question}"'


def node_of(daemon: Daemon, pid: int) -> str:
    return keyed(daemon.path("tasks", str(pid), "status"))["Node"]


def place_line(daemon: Daemon, pid: int) -> str:
    """The message of the `place` line of `pid` in `daemon`'s trace."""
    rows = csv.reader(cat(daemon, "trace", "events").splitlines())
    return next(row[-1] for row in rows if row[2] == "place" and f"pids {pid} on" in row[-1])


def test_submits_sharing_a_cached_prompt_prefix_go_to_the_node_that_holds_it(nodes):
    """A long-prompt task runs on node X; once X's record shows its 3 prompt blocks everywhere, submits with
    the same first 1,600 words made on each other node are placed on X, their `place` lines say
    `prefix: 3 blocks cached`, and a prompt sharing nothing goes by pressure as before."""
    first = submit_soon(nodes["a"], asked("first"))
    holder = node_of(nodes["a"], first)
    assert cat(nodes[holder], "tasks", str(first), "wait") == "done\n"
    for name in NAMES:
        poll_until(lambda: int(status(nodes[name], holder)["PrefixBlocks"]) >= 3, SETTLE_S,
                   f"{holder}'s cached prompt blocks in its record as node {name} reads it")
    others = [name for name in NAMES if name != holder]
    for name in others:
        for question in ("second", "third"):
            pid = submit_soon(nodes[name], asked(f"{question} from {name}"))
            assert node_of(nodes[name], pid) == holder
            line = place_line(nodes[name], pid)
            assert line.startswith(f"pids {pid} on node {holder}: ") and "prefix: 3 blocks cached" in line, line
            assert cat(nodes[holder], "tasks", str(pid), "wait") == "done\n"  # one at a time: X stays idle
    plain = submit_soon(nodes[others[0]], 'model=sim max_tokens=2 prompt="nothing shared"')
    assert "prefix" not in place_line(nodes[others[0]], plain)
