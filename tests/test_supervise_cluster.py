"""Tier 3: a real cluster node whose peer server or cluster part meets a bug stays up, serves its peers and its
cluster, and says so in /ai/health (supervise.py).

The fault is injected as test_supervise_mount injects one: the daemon is started through a launcher that makes
one function raise ValueError in its first two calls, as a bug in it would: trio's `SocketListener.accept`, which
the peer server's accept loop calls (restarted: `peer.accept`); `PeerServer.admit`, which each connection calls
first (that connection closed: `peer.connection`); and a task in `Cluster.run`'s nursery that raises while a
trigger file exists (restarted: `cluster.run`). Nodes on one real 3-member etcd, each test's under a prefix of its own.
"""
import contextlib
import errno
import os

import httpx
import pytest
import trio

from apeinxfs.cluster.peer_client import Peer
from daemon import FUSE_READY, poll_until
from engines import free_port
from etcdcluster import EtcdCluster
from test_cluster_settings import write_errno
from test_peer import CALLER, HANG_GUARD_S, node_config, start_node, submit_on, token_file
from test_supervise_mount import FaultyDaemon, failing, health_rows

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not FUSE_READY, reason="needs /dev/fuse and fusermount3")]
TOKEN = b"supervised-token"
SHORT = "name=short model=sim max_tokens=3"
NURSERY_BUG = """
import os, sys
import trio
from apeinxfs.cli import main
from apeinxfs.cluster.daemon import Cluster
real_follow = Cluster.follow
async def bug_when_there(path):
    while not os.path.exists(path):
        await trio.sleep(0.05)
    raise ValueError("a bug in a task of the cluster's nursery")
async def follow(self, nursery):
    nursery.start_soon(bug_when_there, {trigger!r})
    await real_follow(self, nursery)
Cluster.follow = follow
sys.exit(main())
"""  # LAUNCH (test_supervise_mount) whose Cluster.run fails, a bug ending its nursery, while file `trigger` exists


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


def submitted_unless_refused(url: str) -> int | None:
    """submit_on the node at `url`; None if it refused the connection (its accept loop waits for its restart)."""
    try:
        return submit_on(url, TOKEN, SHORT)
    except httpx.ConnectError:
        return None


def bug_row(daemon, loop: str) -> str:
    """`daemon`'s /ai/health row of `loop`."""
    [row] = [row for row in health_rows(daemon) if row.startswith(f"Bug:\t{loop}: ")]
    return row


async def test_a_bug_in_the_peer_servers_accept_loop_restarts_it_and_peers_get_answers(tmp_path, etcd):
    """The accept loop fails twice: the node stays up, its row counts 2 failures, restarted, and once it
    listens again (a peer is refused until then: nothing sent) a peer's submit and reads are answered."""
    with faulty_node(tmp_path, "b", etcd, failing("trio", "SocketListener", "accept")) as (node, url):
        pid = poll_until(lambda: submitted_unless_refused(url), HANG_GUARD_S, "the peer server listening again")
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


def test_while_cluster_run_waits_for_its_restart_files_of_other_nodes_read_on_and_settings_writes_wait(tmp_path,
                                                                                                      etcd):
    """While a trigger file exists B's Cluster.run fails (a bug in a task of its nursery): a file of A's task that
    B's mount opened before reads on through B's router, and a settings write on B gets EAGAIN (its entry not seen
    back), where both got EIO (their clients closed); once the trigger is gone B's loops start again, apply that
    write and place a submit, and `cluster.run`'s row counts the failures, restarted."""
    trigger = tmp_path / "trigger"
    a, a_url = start_node(tmp_path, "a", token_file(tmp_path, TOKEN), etcd)
    try:
        with faulty_node(tmp_path, "b", etcd, NURSERY_BUG.format(trigger=str(trigger))) as (b, _):
            on_a = submit_on(a_url, TOKEN, SHORT)
            poll_until(lambda: os.path.exists(b.path("tasks", str(on_a))), HANG_GUARD_S, "A's task seen on B")
            poll_until(lambda: b.status(on_a)["State"] == "Z (exited)", HANG_GUARD_S, "A's task done")
            with open(b.path("tasks", str(on_a), "output"), "rb", buffering=0) as output:
                first = output.read(2)
                trigger.touch()
                poll_until(lambda: any(row.startswith("Bug:\tcluster.run: ") for row in health_rows(b)),
                           HANG_GUARD_S, "the cluster.run row")
                assert first + output.read() == open(a.path("tasks", str(on_a), "output"), "rb").read()
                assert write_errno(b, "add t9 weight=1", "ctl", "tenants") == errno.EAGAIN
            trigger.unlink()
            poll_until(lambda: os.path.exists(b.path("tenants", "t9", "weight")), HANG_GUARD_S, "the write applied")
            assert b.status(b.submit(SHORT))["Name"] == "short"
            row = bug_row(b, "cluster.run")
            assert row.startswith("Bug:\tcluster.run: ValueError at <string>:") and row.endswith("; restarted)")
            assert b.proc.poll() is None
    finally:
        a.stop()
