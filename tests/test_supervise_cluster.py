"""Tier 3: a real cluster node whose peer server or cluster part meets a bug stays up, serves its peers and its
cluster, and says so in /ai/health (supervise.py).

The fault is injected as test_supervise_mount injects one: the daemon is started through a launcher that makes
one function raise ValueError in its first two calls, as a bug in it would: trio's `SocketListener.accept`, which
the peer server's accept loop calls (restarted: `peer.accept`); `PeerServer.admit`, which each connection calls
first (that connection closed: `peer.connection`); `Router.__aenter__`, which `Cluster.run` enters around the
cluster's loops (restarted: `cluster.run`). Nodes on one real 3-member etcd, each test's under a prefix of its own.
"""
import contextlib
import os

import httpx
import pytest
import trio

from apeinxfs.cluster.peer_client import Peer
from daemon import FUSE_READY, poll_until
from engines import free_port
from etcdcluster import EtcdCluster
from test_peer import CALLER, HANG_GUARD_S, node_config, start_node, submit_on, token_file
from test_supervise_mount import FaultyDaemon, failing, health_rows

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not FUSE_READY, reason="needs /dev/fuse and fusermount3")]
TOKEN = b"supervised-token"
SHORT = "name=short model=sim max_tokens=3"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """One 3-member etcd for the module's nodes."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster.endpoints


@contextlib.contextmanager
def faulty_node(root, name: str, endpoints: list[str], launch: str):
    """Cluster node `name` with a peer server, started through `launch`, once it has pids to give; yields it and
    its URL, and stops it by pid at the end."""
    port = free_port()
    daemon = FaultyDaemon(root / name, launch, config_text=node_config(root, name, token_file(root, TOKEN), endpoints,
                                                                         port))
    try:
        daemon.start()
        poll_until(lambda: "PidsLeft:\t0\n" not in open(daemon.path("cluster")).read(), HANG_GUARD_S, "a pid block")
        yield daemon, f"http://127.0.0.1:{port}"
    finally:
        daemon.stop()


def bug_row(daemon, loop: str) -> str:
    """`daemon`'s /ai/health row of `loop`."""
    [row] = [row for row in health_rows(daemon) if row.startswith(f"Bug:\t{loop}: ")]
    return row


async def test_a_bug_in_the_peer_servers_accept_loop_restarts_it_and_peers_get_answers(tmp_path, etcd):
    """The accept loop fails twice: the node stays up, its row counts 2 failures, restarted, and a peer's
    submit and reads through its peer server are answered."""
    with faulty_node(tmp_path, "b", etcd, failing("trio", "SocketListener", "accept")) as (node, url):
        pid = submit_on(url, TOKEN, SHORT)
        with trio.fail_after(HANG_GUARD_S):
            async with Peer(url, TOKEN) as peer:
                assert await peer.wait(pid, CALLER) == "done\n"
                assert "State:\tZ (exited)\n" in await peer.status(pid, CALLER)
        row = bug_row(node, "peer.accept")
        assert row.startswith("Bug:\tpeer.accept: ValueError at <string>:")
        assert "(2 times, last at " in row and row.endswith("; restarted)")
        assert node.proc.poll() is None


def test_a_bug_in_a_peer_connection_closes_it_alone_and_the_next_is_served(tmp_path, etcd):
    """Admission fails for the first two connections: each is closed unanswered, the third is served, the
    node stays up and its row counts the 2 failures, each closing its connection."""
    with faulty_node(tmp_path, "b", etcd, failing("apeinxfs.cluster.peer_server", "PeerServer", "admit")) as (node, url):
        for _ in range(2):
            with pytest.raises(httpx.TransportError):
                submit_on(url, TOKEN, SHORT)
        pid = submit_on(url, TOKEN, SHORT)
        assert node.status(pid)["Name"] == "short"
        row = bug_row(node, "peer.connection")
        assert row.startswith("Bug:\tpeer.connection: ValueError at <string>:")
        assert "(2 times, last at " in row and row.endswith("; its connection closed)")
        assert node.proc.poll() is None


def test_a_bug_around_the_cluster_loops_restarts_them_and_submits_and_reads_go_on(tmp_path, etcd):
    """B's router fails to open twice as Cluster.run enters it: B joins all the same, reads a task of A
    through its router, its own submits get pids from the cluster, and its row counts 2 failures, restarted."""
    a, a_url = start_node(tmp_path, "a", token_file(tmp_path, TOKEN), etcd)
    try:
        with faulty_node(tmp_path, "b", etcd, failing("apeinxfs.cluster.routing", "Router", "__aenter__")) as (b, _):
            on_a = submit_on(a_url, TOKEN, SHORT)
            poll_until(lambda: os.path.exists(b.path("tasks", str(on_a))), HANG_GUARD_S, "A's task seen on B")
            assert b.status(on_a)["Name"] == "short"
            on_b = b.submit(SHORT)
            assert b.status(on_b)["Name"] == "short" and on_b != on_a
            row = bug_row(b, "cluster.run")
            assert row.startswith("Bug:\tcluster.run: ValueError at <string>:")
            assert "(2 times, last at " in row and row.endswith("; restarted)")
            assert b.proc.poll() is None
    finally:
        a.stop()
