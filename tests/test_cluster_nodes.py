"""Tier 4: three daemons on a real 3-member etcd: /nodes everywhere, one leader, epochs, quorum loss.

One etcd cluster and three daemons (nodes a, b, c; own mountpoints and state dirs;
`lease_s = 5`, pid blocks of 4) serve the whole module; the tests run in file order and
the last one kills a daemon. Waits poll (tests/daemon.poll_until) with generous bounds;
nothing asserts a duration.
"""
import errno
import os
import signal
import subprocess
import time

import pytest

from daemon import APEINXFS, FAST_CONFIG, FUSE_READY, Daemon, poll_until
from etcdcluster import EtcdCluster, free_ports
from test_storage_mount import submit

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
NAMES = ("a", "b", "c")
LEASE_S = 5
SETTLE_S = 60  # the most any change may take to show (a lease, a watch, an etcd election, a loaded VM)
SHORT_TASK = "model=sim max_tokens=2 prompt=hi"
LONG_TASK = "model=sim max_tokens=20000 prompt=stay"  # runs for about 40 s at 2 ms a token


def cluster_config(name: str, endpoints: list[str], pid_block: int = 4) -> str:
    urls = ", ".join(f'"{url}"' for url in endpoints)
    return (FAST_CONFIG + f'\n[daemon]\nnode = "{name}"\n[cluster]\netcd = [{urls}]\nlease_s = {LEASE_S}\n'
            f'pid_block = {pid_block}\nprefix = "test-cluster/"\n')


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def nodes(etcd, tmp_path_factory):
    """Three daemons a, b, c on `etcd`, by name; each stopped (by pid) at the end."""
    root = tmp_path_factory.mktemp("nodes")
    daemons = {name: Daemon(root / name / "ai", root / name / "state", cluster_config(name, etcd.endpoints))
               for name in NAMES}
    try:
        for daemon in daemons.values():
            daemon.start()
        yield daemons
    finally:
        stop_all(daemons)


def stop_all(daemons: dict) -> None:
    """Stop each daemon by pid (one a test stopped is continued first, so that it can unmount)."""
    for daemon in daemons.values():
        if daemon.proc is not None and daemon.proc.poll() is None:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        daemon.stop()


def submit_or_none(daemon: Daemon, line: str = SHORT_TASK) -> int | None:
    """The pid, or None if refused with EAGAIN (a node waiting for its next pid block)."""
    try:
        return submit(daemon, line)
    except OSError as refused:
        assert refused.errno == errno.EAGAIN, refused
        return None


def submit_soon(daemon: Daemon, line: str = SHORT_TASK) -> int:
    """Submit, trying again while the node waits for its next pid block (a burst can outrun the grants)."""
    return poll_until(lambda: submit_or_none(daemon, line), SETTLE_S, f"a submit on {daemon.mountpoint}")


def keyed(path: str) -> dict:
    """A file of `Key:<TAB>value` lines as a dict."""
    with open(path) as file:
        return dict(line.rstrip("\n").split(":\t", 1) for line in file)


def status(daemon: Daemon, name: str) -> dict:
    """/nodes/NAME/status as read on `daemon`."""
    return keyed(daemon.path("nodes", name, "status"))


def link(daemon: Daemon) -> dict:
    """/cluster as read on `daemon`: its own link to the cluster."""
    return keyed(daemon.path("cluster"))


def listed(daemon: Daemon) -> list[str]:
    return subprocess.run(["ls", daemon.path("nodes")], capture_output=True, text=True, check=True).stdout.split()


def joins_and_leads(daemon: Daemon, name: str) -> None:
    """Wait until `daemon` lists itself, node `name`, up and leading (up comes before the election is won), with
    etcd ok in its /cluster."""
    poll_until(lambda: name in listed(daemon) and status(daemon, name)["Leader"] == "yes", SETTLE_S,
               f"{name} up and leading in its own /nodes")
    assert status(daemon, name)["State"] == "up" and link(daemon)["Etcd"] == "ok"


def all_up(daemons: dict) -> bool:
    return all(listed(d) == list(NAMES) and all(status(d, n)["State"] == "up" for n in NAMES)
               for d in daemons.values())


def test_a_node_that_cannot_reach_etcd_mounts_reads_and_refuses_submits_with_eagain(tmp_path):
    """With no etcd member listening the daemon still mounts; /cluster says why etcd is unavailable,
    local files read, /nodes lists nothing known yet, and a submit fails with EAGAIN (no pid block)."""
    with Daemon(tmp_path / "ai", tmp_path / "state", cluster_config("lone", [f"http://127.0.0.1:{free_ports(1)[0]}"])) \
            as lone:
        poll_until(lambda: link(lone)["Etcd"] == "unavailable", SETTLE_S, "etcd unavailable in /cluster")
        assert "cannot connect" in link(lone)["Reason"] and link(lone)["PidsLeft"] == "0"
        assert listed(lone) == [] and keyed(lone.path("health"))["State"] == "ok"
        with pytest.raises(OSError) as refused:
            submit(lone, SHORT_TASK)
        assert refused.value.errno == errno.EAGAIN


def test_every_node_lists_all_three_up_with_the_same_status_and_one_leader(nodes):
    """`ls nodes` shows a, b, c on each node; each node's status reads the same on all three; one leads."""
    poll_until(lambda: all_up(nodes), SETTLE_S, "a, b and c up as seen from every node")
    same = poll_until(lambda: all(len({tuple(sorted(status(d, n).items())) for d in nodes.values()}) == 1
                                  for n in NAMES) and status(nodes["a"], "a"), SETTLE_S, "the same status everywhere")
    assert {"State", "Epoch", "Leader", "Gpus", "SlotsFree", "KVPagesFree", "TasksRunning", "LastSeen"} <= set(same)
    leaders = [n for n in NAMES if status(nodes["a"], n)["Leader"] == "yes"]
    assert len(leaders) == 1 and status(nodes["a"], "a")["Gpus"] == "2"


def test_pids_are_unique_cluster_wide_and_listed_under_their_node(nodes):
    """Tasks submitted on each node get pids no other node gives; a running one shows in its node's tasks."""
    pids = {name: [submit_soon(d) for _ in range(6)] for name, d in nodes.items()}
    every = [pid for some in pids.values() for pid in some]
    assert len(set(every)) == len(every)
    long = submit_soon(nodes["b"], LONG_TASK)
    poll_until(lambda: str(long) in open(nodes["a"].path("nodes", "b", "tasks")).read().split(), SETTLE_S,
               f"pid {long} in /nodes/b/tasks on node a")
    with open(nodes["b"].path("ctl", "kill"), "w") as kill:
        kill.write(f"{long}\n")


def test_a_stopped_node_goes_down_and_rejoins_with_a_higher_epoch(nodes):
    """SIGSTOP of c for 3 x lease_s shows it down on a; after SIGCONT it is up again with a higher epoch."""
    before = int(status(nodes["a"], "c")["Epoch"])
    os.kill(nodes["c"].proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        poll_until(lambda: status(nodes["a"], "c")["State"] == "down", SETTLE_S, "c down on a")
        poll_until(lambda: status(nodes["b"], "c")["State"] == "down", SETTLE_S, "c down on b")
        time.sleep(max(0.0, stopped + 3 * LEASE_S - time.monotonic()))  # stopped 3 x lease_s in all
    finally:
        os.kill(nodes["c"].proc.pid, signal.SIGCONT)
    for seen_on in NAMES:
        poll_until(lambda: status(nodes[seen_on], "c")["State"] == "up"
                   and int(status(nodes[seen_on], "c")["Epoch"]) > before, SETTLE_S, f"c up again on {seen_on}")
    assert sum(status(nodes["a"], n)["Leader"] == "yes" for n in NAMES) == 1


def test_one_etcd_member_killed_submits_go_on_two_killed_they_fail_with_eagain(nodes, etcd):
    """One member down: submits past several pid blocks work; two down: a submit fails with EAGAIN (its
    task's key cannot be written) while reads work; members back: submits work and every pid acknowledged
    is still there."""
    with etcd.down(0):
        pids = [submit_soon(nodes["a"]) for _ in range(10)]  # more than 2 blocks of 4
        with etcd.down(1):
            with pytest.raises(OSError) as refused:
                submit(nodes["a"], SHORT_TASK)
            assert refused.value.errno == errno.EAGAIN
            poll_until(lambda: link(nodes["a"])["Etcd"] == "unavailable", SETTLE_S, "node a sees no etcd quorum")
            assert link(nodes["a"])["Reason"].startswith("etcd: "), link(nodes["a"])  # etcd's own words
            assert status(nodes["a"], "b")["Name"] == "b" and nodes["a"].status(pids[0])["State"]
    later = submit_soon(nodes["a"])
    assert link(nodes["a"])["Etcd"] == "ok"
    for pid in pids + [later]:
        assert nodes["a"].status(pid)["Pid"] == str(pid)
    poll_until(lambda: all_up(nodes), SETTLE_S, "a, b and c up again as seen from every node")


def test_a_killed_daemon_shows_down_on_the_others_and_its_journal_replays(nodes):
    """kill -9 of node c's daemon: a and b show c `State: down`, with its last record, and still list it;
    c's journal, pid blocks included, replays to the same trace (`apeinxfs replay --verify`)."""
    nodes["c"].kill9()
    for seen_on in ("a", "b"):
        poll_until(lambda: status(nodes[seen_on], "c")["State"] == "down", SETTLE_S, f"c down on {seen_on}")
        assert listed(nodes[seen_on]) == list(NAMES) and status(nodes[seen_on], "c")["Leader"] == "no"
    verified = subprocess.run(APEINXFS + ["replay", "--verify", nodes["c"].state_dir], capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.startswith("OK:"), verified.stdout + verified.stderr
