"""Connections without the token that send a byte and wait (red-team finding, 2026-12-06): the peer server
keeps each open for up to REQUEST_S and takes as many as come, so they use up the daemon's descriptors
(1,024 under a default soft limit), and whatever else needs one fails: here the snapshot writer, which
then leaves the journal uncompacted while /ai/health says ok. A cluster node on a real 3-member etcd whose
descriptor limit is lowered to FD_LIMIT with prlimit(1), so that a few hundred connections show it.
"""
import os
import resource
import socket
import subprocess

import pytest

from daemon import Daemon, poll_until, sim_config
from engines import free_port
from etcdcluster import EtcdCluster
from test_peer import HANG_GUARD_S, node_config, token_file

pytestmark = pytest.mark.mount
FD_LIMIT = 300
IDLE_CONNECTIONS = 400  # more than FD_LIMIT


def test_idle_connections_without_the_token_leave_snapshots_working(tmp_path):
    """While more idle connections without the token are open than the daemon has descriptors, snapshots are written."""
    port = free_port()
    with EtcdCluster(tmp_path / "etcd") as cluster:
        config = node_config(tmp_path, "a", token_file(tmp_path, b"flood-token"), cluster.endpoints, port)
        daemon = Daemon(tmp_path / "a" / "ai", tmp_path / "a" / "state", config + "[retention]\nsnapshot_rows = 20\n")
        daemon.start()
        idle = []
        try:
            subprocess.run(["prlimit", "--pid", str(daemon.proc.pid), f"--nofile={FD_LIMIT}"], check=True)
            for _ in range(IDLE_CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", port)))
                idle[-1].sendall(b"G")
            for index in range(40):
                daemon.submit(f"name=t{index} max_tokens=2")
            snapshots = tmp_path / "a" / "state" / "snapshots"
            poll_until(lambda: any(name.endswith(".snap") for name in os.listdir(snapshots)), HANG_GUARD_S / 4,
                       "a snapshot written while the idle connections are open")
        finally:
            for sock in idle:
                sock.close()
            daemon.stop()


def descriptor_limits(pid: int) -> list[str]:
    """The soft and hard `Max open files` of process `pid`, as /proc shows them."""
    line = next(line for line in open(f"/proc/{pid}/limits") if line.startswith("Max open files"))
    return line.split()[3:5]


class StartedUnder(Daemon):
    """A daemon whose process starts under a soft RLIMIT_NOFILE of `soft` (prlimit(1) execs it, keeping its pid):
    the test's own limits stay as they are."""

    def __init__(self, soft: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.soft = soft

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.soft}:", "--", *super().command()]


def test_the_daemon_raises_its_descriptor_soft_limit_to_the_hard_one(tmp_path):
    """A daemon started under a soft RLIMIT_NOFILE of 256 runs with its soft limit at the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard <= 256:
        pytest.skip(f"the hard descriptor limit is {hard}: a soft limit of 256 cannot be raised from")
    daemon = StartedUnder(256, tmp_path / "ai", tmp_path / "state", sim_config(0.01)).start()
    try:
        assert descriptor_limits(daemon.proc.pid) == [str(hard), str(hard)]
    finally:
        daemon.stop()
