"""Tier 4: one write of many lines to ctl/submit on a cluster node, its lines placed across the nodes.

Three daemons a, b, c on a real 3-member etcd, peers of each other (tests/cluster_peers.py), with
pid blocks of 1,000 so that no node runs short of pids within a write. Writes go through a
read-write fd of a's ctl/submit, as a script's would, and the reply is read back on it. Waits
poll with generous bounds; nothing asserts a duration.
"""
import errno
import logging
import os
import signal

import pytest

from cluster_peers import all_running, peered_nodes
from daemon import Daemon, poll_until
from etcdcluster import EtcdCluster
from test_cluster_nodes import FUSE_READY, NAMES, SETTLE_S, keyed, status
from test_cluster_settings import echo, on_every_node
from test_cluster_tasks import cat

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")
log = logging.getLogger(__name__)
LONG = "model=sim max_tokens=20000 prompt=stay"  # runs for about 40 s at 2 ms a token
MEDIUM = "model=sim max_tokens=1500 prompt=medium"  # about 3 s: b may run its lines once continued


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Daemons a, b, c on one 3-member etcd, each serving peers; stopped by pid at the end."""
    root = tmp_path_factory.mktemp("split")
    with EtcdCluster(root / "etcd") as etcd, peered_nodes(root, etcd.endpoints, pid_block=1000) as daemons:
        yield daemons


def write_lines(daemon: Daemon, lines: list[str]) -> tuple[int, list[str]]:
    """One write(2) of `lines` to the node's ctl/submit: 0 or the errno it failed with, and the reply read back."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_RDWR)
    try:
        try:
            os.write(fd, "".join(f"{line}\n" for line in lines).encode())
            failed = 0
        except OSError as exc:
            failed = exc.errno
        return failed, os.read(fd, 1 << 20).decode().splitlines()
    finally:
        os.close(fd)


def jobs(tag: str, count: int, task: str = LONG) -> list[str]:
    return [f"name={tag}{number} {task}" for number in range(count)]


def idle(daemons: dict) -> None:
    """Wait until a sees every node up with no live task in its last record (so placement sees equal nodes)."""
    all_running(daemons)
    poll_until(lambda: all(status(daemons["a"], name)["TasksLive"] == "0" for name in NAMES), SETTLE_S,
               "no live task on any node, as a sees them")


def listed(daemon: Daemon) -> set[int]:
    """The live pids every node's record lists, as the node's view holds them (/nodes/NAME/tasks)."""
    found = set()
    for name in NAMES:
        with open(daemon.path("nodes", name, "tasks")) as tasks:
            found |= {int(line) for line in tasks if line.strip()}
    return found


def seen_alone_on_b(daemon: Daemon, pid: int) -> None:
    """Wait until the node's view has task `pid` as b's one live task: in b's live keys (which the dry run
    reads for a parent's tenant) and in b's record (one slot fewer free, which placement reads); they are
    published apart."""
    poll_until(lambda: pid in listed(daemon) and status(daemon, "b")["TasksLive"] == "1", SETTLE_S,
               f"task {pid} live on b, in b's live keys and record")


def kill_all(daemon: Daemon, pids: list[int]) -> None:
    """A test's cleanup: kill `pids` through the node's ctl/kill once its view lists each live on its node (a
    record of that node newer than their placement, so the node counts them as pending there no more and the
    next test's placement sees the nodes as their records say). A refusal (an exited task: EBUSY) or a wait
    that runs out is logged, never raised over the test's own failure."""
    try:
        poll_until(lambda: set(pids) <= listed(daemon), SETTLE_S, f"records listing tasks {pids}")
    except AssertionError as exc:
        log.warning("cleanup: %s", exc)
    for pid in pids:
        try:
            with open(daemon.path("ctl", "kill"), "w") as ctl:
                ctl.write(f"{pid}\n")
        except OSError as exc:
            log.warning("cleanup: kill %d: %s", pid, exc)


def node_and_name(daemon: Daemon, pid: int) -> tuple[str, str]:
    found = keyed(daemon.path("tasks", str(pid), "status"))
    return found["Node"], found["Name"]


def names_on(daemon: Daemon) -> set[str]:
    """The names of the tasks the node itself holds (its own /tasks, local ones only, live or exited); another
    node's task listed there may be gone by the time its status is read (its node forgot it): not this node's."""
    own = os.path.basename(os.path.dirname(daemon.mountpoint))
    found = set()
    for entry in os.listdir(daemon.path("tasks")):
        try:
            task = keyed(daemon.path("tasks", entry, "status"))
        except FileNotFoundError:
            continue
        if task["Node"] == own:
            found.add(task["Name"])
    return found


def place_lines(daemon: Daemon, pids: list[int]) -> list[str]:
    with open(daemon.path("trace", "events")) as trace:
        placed = [line for line in trace if line.split(",")[2] == "place"]
    return [line for line in placed if any(f" {pid} " in line or f" {pid}-" in line for pid in pids)]


def test_a_twelve_line_write_lands_on_every_node_with_its_pids_in_line_order(nodes):
    """12 lines in one write on a, the cluster idle: 4 run on each node, the reply's pids are the lines'
    in order (pid i is the task of line i), and a's trace has one `place` line per node."""
    idle(nodes)
    failed, replies = write_lines(nodes["a"], jobs("even", 12))
    assert failed == 0 and len(replies) == 12 and all(reply.isdigit() for reply in replies), replies
    pids = [int(reply) for reply in replies]
    try:
        where = [node_and_name(nodes["a"], pid) for pid in pids]
        assert [name for _, name in where] == [f"even{number}" for number in range(12)]
        assert sorted(node for node, _ in where) == sorted(NAMES * 4), where
        placed = place_lines(nodes["a"], pids)
        assert len(placed) == 3 and all("pressure" in line for line in placed), placed
    finally:
        kill_all(nodes["a"], pids)


def test_an_invalid_line_among_valid_ones_is_refused_alone_and_nothing_runs(nodes):
    """A write of 5 lines whose third is malformed fails EINVAL on a with that line's reason only, and none
    of its lines runs on any node."""
    idle(nodes)
    lines = jobs("bad", 5)
    lines[2] = "name=bad2 model=sim max_tokens=x"
    failed, replies = write_lines(nodes["a"], lines)
    assert failed == errno.EINVAL and len(replies) == 1 and replies[0].startswith("error: line 3: "), replies
    assert not any(name.startswith("bad") for daemon in nodes.values() for name in names_on(daemon))


def test_a_write_over_its_tenants_task_quota_is_refused_whole_before_any_line_leaves(nodes):
    """Tenant tq (`quota tasks 2`) and a write on a of 4 of its lines, a blank line after the first, that would
    spread over a, b and c: a refuses it whole with EDQUOT and a single node's replies (its third task is line
    4, its fourth line 5), and none of its lines runs on any node; the same lines out of tq (placed alike: the
    refused write placed nothing) run on more than one node, so the write was spread."""
    idle(nodes)
    assert echo(nodes["a"], "add tq", "ctl", "tenants").returncode == 0
    assert echo(nodes["a"], "tasks 2", "tenants", "tq", "quota").returncode == 0
    on_every_node(nodes, ("tenants", "tq", "quota"), cat(nodes["a"], "tenants", "tq", "quota"))
    lines = jobs("quota", 4, "tenant=tq " + LONG)
    failed, replies = write_lines(nodes["a"], lines[:1] + [""] + lines[1:])
    try:
        assert failed == errno.EDQUOT and replies == [
            f"error: line {number}: tenant tq has 2 live tasks; its quota allows 2" for number in (4, 5)], replies
        assert not any(name.startswith("quota") for daemon in nodes.values() for name in names_on(daemon))
    finally:
        kill_all(nodes["a"], [int(reply) for reply in replies if reply.isdigit()])
    spread = [line.replace("tenant=tq ", "") for line in lines]  # placed as tq's were: that write placed nothing
    failed, replies = write_lines(nodes["a"], spread[:1] + [""] + spread[1:])
    pids = [int(reply) for reply in replies if reply.isdigit()]
    try:
        assert failed == 0 and len(pids) == 4, replies
        assert len({node_and_name(nodes["a"], pid)[0] for pid in pids}) > 1, "the write was not spread"
    finally:
        kill_all(nodes["a"], pids)


def test_a_child_of_a_task_on_another_node_counts_in_its_parents_tenant_before_any_line_leaves(nodes):
    """Tenant tp (`quota tasks 2`) with one task on b: a write on a of a line of tp (placed on a, b being busier)
    and a child of that task (placed on b) is refused whole on a with EDQUOT at line 2, as a single node refuses
    it, and neither runs."""
    idle(nodes)
    assert echo(nodes["a"], "add tp", "ctl", "tenants").returncode == 0
    assert echo(nodes["a"], "tasks 2", "tenants", "tp", "quota").returncode == 0
    on_every_node(nodes, ("tenants", "tp", "quota"), cat(nodes["a"], "tenants", "tp", "quota"))
    failed, replies = write_lines(nodes["b"], [f"name=tparent tenant=tp {LONG}"])
    parent = int(replies[0])
    try:
        assert failed == 0 and node_and_name(nodes["b"], parent)[0] == "b", replies
        seen_alone_on_b(nodes["a"], parent)  # so the first line goes to a, and the dry run counts the child in tp
        lines = [f"name=tfree tenant=tp {LONG}", f"name=tchild parent={parent} {LONG}"]
        failed, replies = write_lines(nodes["a"], lines)
        assert failed == errno.EDQUOT and replies == [
            "error: line 2: tenant tp has 2 live tasks (1 on other nodes); its quota allows 2"], replies
        assert not {"tfree", "tchild"} & {name for daemon in nodes.values() for name in names_on(daemon)}
    finally:
        kill_all(nodes["a"], [parent] + [int(reply) for reply in replies if reply.isdigit()])


def test_a_lost_answer_is_reported_unknown_and_not_run_elsewhere(nodes):
    """b stopped (SIGSTOP) just before a 12-line write on a: its lines' answer is lost, so the write fails
    EREMOTEIO (partly run), those lines' replies say their outcome is unknown, the other lines' pids stand and
    run on a and c, and no line of b's runs on a or c."""
    idle(nodes)
    os.kill(nodes["b"].proc.pid, signal.SIGSTOP)
    try:
        failed, replies = write_lines(nodes["a"], jobs("lost", 12, MEDIUM))
    finally:
        os.kill(nodes["b"].proc.pid, signal.SIGCONT)
    assert failed == errno.EREMOTEIO and len(replies) == 12, (failed, replies)
    unknown = [number for number, reply in enumerate(replies) if not reply.isdigit()]
    assert unknown and all("outcome is unknown" in replies[number] and f"line {number + 1}: node b:"
                           in replies[number] for number in unknown), replies
    pids = [int(reply) for reply in replies if reply.isdigit()]  # medium tasks: they end by themselves
    assert len(pids) == 12 - len(unknown) and {node_and_name(nodes["a"], pid)[0] for pid in pids} <= {"a", "c"}
    elsewhere = names_on(nodes["a"]) | names_on(nodes["c"])
    assert not {f"lost{number}" for number in unknown} & elsewhere


def test_a_node_unreachable_before_the_write_gets_none_of_it(nodes):
    """kill -9 of c just before a 12-line write on a (c still looks up): a cannot connect to it, places
    c's lines again on a and b, every line gets a pid, and the `place` lines say c was unreachable."""
    idle(nodes)
    nodes["c"].kill9()
    failed, replies = write_lines(nodes["a"], jobs("passed", 12))
    assert failed == 0 and all(reply.isdigit() for reply in replies) and len(replies) == 12, replies
    pids = [int(reply) for reply in replies]
    try:
        assert {node_and_name(nodes["a"], pid)[0] for pid in pids} == {"a", "b"}
        placed = place_lines(nodes["a"], pids)
        assert placed and all("c unreachable" in line for line in placed), placed
    finally:
        kill_all(nodes["a"], pids)


def test_lines_placed_again_count_the_tasks_that_answered_before_them(nodes):
    """kill -9 of c, then a write on a of 12 lines and 6 children of a task on b: placed first a 5, b 9 (3 and
    the children), c 4. c's 4 lines, placed again once a and b answered, count a's 5 and b's 9 as pending there
    and all go to a (a 9, b 9); with a and b as their records say (a one slot freer), b would get one of them."""
    idle(nodes)
    failed, replies = write_lines(nodes["b"], [LONG.replace("prompt=stay", "prompt=parent")])
    parent = int(replies[0])
    assert failed == 0 and node_and_name(nodes["b"], parent)[0] == "b", replies
    seen_alone_on_b(nodes["a"], parent)
    nodes["c"].kill9()
    lines = jobs("free", 12) + [f"name=child{number} parent={parent} {LONG}" for number in range(6)]
    failed, replies = write_lines(nodes["a"], lines)
    pids = [int(reply) for reply in replies if reply.isdigit()]
    try:
        assert failed == 0 and len(pids) == 18, replies
        where = [node_and_name(nodes["a"], pid)[0] for pid in pids]
        placed = place_lines(nodes["a"], pids)
        assert (where.count("a"), where.count("b")) == (9, 9) and len(placed) == 3, (where, placed)
        # a's 5 counted: as placed since its record, or in a record a published since (1 s after a change)
        assert "on node a: pressure -11 (" in placed[-1], placed
    finally:
        kill_all(nodes["a"], pids + [parent])
