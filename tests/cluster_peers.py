"""Three daemons a, b, c on one etcd, peers of each other: the setup the cluster tests share.

`peered_nodes(root, endpoints)` starts them (own mountpoints and state dirs under `root`,
`lease_s = 5`, a peer server each on a free 127.0.0.1 port, a token file each, NAME/token, all
holding one token: test_cluster_token_rotate.py edits them one by one), waits until
each sees all three up, yields them by name, and stops each by pid at the end (a stopped
one is continued first, so that it can unmount). `all_running(daemons)` starts again one an
earlier test left dead, so that one failure does not fail every test after it.
"""
import contextlib
import os

from daemon import Daemon, poll_until
from engines import free_port
from test_cluster_nodes import NAMES, SETTLE_S, all_up, cluster_config, stop_all
from test_peer import token_file


@contextlib.contextmanager
def peered_nodes(root, endpoints: list[str], more_config: str = "", pid_block: int = 4):
    """Daemons a, b, c on `endpoints`, each serving peers, by name (with `more_config` after their
    [cluster] section, and blocks of `pid_block` pids); stopped by pid at the end."""
    token = b"placed-" + os.urandom(8).hex().encode()
    for name in NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    daemons = {name: Daemon(root / name / "ai", root / name / "state",
                            cluster_config(name, endpoints, pid_block)
                            + f'advertise = "127.0.0.1:{free_port()}"\n'
                            f'token_file = "{token_file(root / name, token)}"\n' + more_config)
               for name in NAMES}
    try:
        for daemon in daemons.values():
            daemon.start()
        poll_until(lambda: all_up(daemons), SETTLE_S, "a, b and c up as seen from every node")
        yield daemons
    finally:
        stop_all(daemons)


def all_running(daemons: dict) -> None:
    """Start again any daemon that is not running (an earlier test failed before restarting it), then
    wait until each sees all three up."""
    for daemon in daemons.values():
        if daemon.proc.poll() is not None:
            daemon.start()
    poll_until(lambda: all_up(daemons), SETTLE_S, "a, b and c up as seen from every node")
