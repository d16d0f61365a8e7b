"""Tier 4: the peers' shared token rotated on three running daemons, without a restart (docs/cluster.md).

Nodes a, b, c (tests/cluster_peers.py: a token file each) on a real 3-member etcd, with a long task
on each node as a parent, so that a child submitted on one node is forwarded to its parent's node.
The three steps, `old` -> `old NEW` -> `NEW old` -> `NEW` (one a line), are each taken node by node,
the file written aside and renamed in; after each node's edit its /ai/cluster PeerToken row says ok,
and a child is submitted from every node to every other: each forwarded submit succeeds. After each
step every node's peer server accepts exactly the tokens its file holds (asked directly over HTTP).
An edit that does not load is not taken: PeerToken says why, and forwarding goes on with the tokens
before. The daemons keep their pids throughout.
"""
import os
import subprocess

import httpx
import pytest

from cluster_peers import peered_nodes
from daemon import Daemon, poll_until
from etcdcluster import EtcdCluster
from test_cluster_nodes import FUSE_READY, LONG_TASK, NAMES, SETTLE_S, keyed, link, status, submit_soon
from test_peer import CALLER_JSON
from test_renewal import edit

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
KEPT = "; the tokens loaded before stay in use"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(root, daemons a, b, c) on one 3-member etcd, each serving peers with its own token file root/NAME/token;
    stopped by pid at the end."""
    root = tmp_path_factory.mktemp("rotate")
    with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints) as daemons:
        yield root, daemons


@pytest.fixture(scope="module")
def parents(cluster):
    """{node: pid} of a long task running on each node (submitted on a until placement put one on each); killed
    at the end."""
    _, nodes = cluster
    placed: dict[int, str] = {}
    try:
        while set(placed.values()) != set(NAMES) and len(placed) < 12:
            pid = submit_soon(nodes["a"], LONG_TASK)
            placed[pid] = keyed(nodes["a"].path("tasks", str(pid), "status"))["Node"]
        for pid in placed:
            for daemon in nodes.values():
                poll_until(lambda: os.path.exists(daemon.path("tasks", str(pid))), SETTLE_S, f"task {pid} seen")
        yield {node: pid for pid, node in placed.items()}
    finally:
        for pid in placed:
            subprocess.run(["sh", "-c", f"echo {pid} > {nodes['a'].path('ctl', 'kill')}"], check=False)


def forward_everywhere(nodes: dict[str, Daemon], parents: dict[str, int]) -> None:
    """From every node, a child of every other node's parent: each submit succeeds and runs on the parent's node."""
    for sender, daemon in nodes.items():
        for receiver, parent in parents.items():
            if receiver != sender:
                child = submit_soon(daemon, f"model=sim max_tokens=2 prompt=child parent={parent}")
                assert keyed(daemon.path("tasks", str(child), "status"))["Node"] == receiver


def accepted(nodes: dict[str, Daemon], name: str, tokens: list[bytes]) -> set[bytes]:
    """Which of `tokens` node `name`'s peer server accepts (a request with any other is answered 401)."""
    address = status(nodes[name], name)["Advertise"]
    return {token for token in tokens
            if httpx.get(f"http://{address}/v1/tasks/1/status", trust_env=False,
                         headers={"authorization": f"Bearer {token.decode()}", "apeinx-caller": CALLER_JSON}
                         ).status_code != 401}


def test_a_token_rotated_in_three_steps_node_by_node_never_refuses_a_forwarded_submit(cluster, parents):
    """old -> old,new -> new,old -> new, each step taken node by node: after every node's edit each forwarded
    submit between any two nodes succeeds, and after each step every node accepts exactly its file's tokens."""
    root, nodes = cluster
    pids = {name: daemon.proc.pid for name, daemon in nodes.items()}
    old, new = (root / "a" / "token").read_bytes().strip(), b"rotated-" + os.urandom(8).hex().encode()
    forward_everywhere(nodes, parents)
    for lines, tokens in (([old, new], {old, new}), ([new, old], {old, new}), ([new], {new})):
        for name, daemon in nodes.items():
            edit(root / name / "token", b"".join(line + b"\n" for line in lines))
            assert link(daemon)["PeerToken"] == "ok"
            forward_everywhere(nodes, parents)
        assert {name: accepted(nodes, name, [old, new]) for name in NAMES} == dict.fromkeys(NAMES, tokens), lines
    assert {name: daemon.proc.pid for name, daemon in nodes.items() if daemon.proc.poll() is None} == pids


@pytest.mark.parametrize("text, mode, words", [(b"{token}\nnext\n", 0o644, "is readable by every user (mode 0644)"),
                                               (b"{token}\nnext token\n", 0o600, "printable ASCII without spaces"),
                                               (b"\n", 0o600, "is empty")])
def test_an_edit_that_does_not_load_is_not_taken_and_forwarding_goes_on(cluster, parents, text, mode, words):
    """A token file of b edited badly: b's PeerToken row says why and that the tokens before stay, forwarded
    submits to and from b go on with them; the file mended, the row says ok."""
    root, nodes = cluster
    path = root / "b" / "token"
    token = path.read_bytes().strip().splitlines()[0]
    edit(path, text.replace(b"{token}", token), mode)
    row = link(nodes["b"])["PeerToken"]
    assert row.startswith(f"not taken: token file {path}") and words in row and row.endswith(KEPT), row
    forward_everywhere(nodes, parents)
    assert accepted(nodes, "b", [token, b"next"]) == {token}
    edit(path, token + b"\n")
    assert link(nodes["b"])["PeerToken"] == "ok"
