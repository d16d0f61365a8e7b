"""Tier 4: settings shared through etcd (cluster/shared.py): three peered daemons on a real 3-member etcd,
an admin's writes to ctl/tenants, tenants/NAME/*, ctl/policy, sched/policy and ctl/models on one node
applied on all of them, with the shell's echo and cat.

Nodes a, b, c (tests/cluster_peers.py) serve the whole module; the tests run in file order and the
last ones stop etcd members and a daemon. Waits poll with generous bounds; nothing asserts a duration.
"""
import concurrent.futures
import errno
import itertools
import os
import subprocess
import time

import pytest

from cluster_peers import peered_nodes
from daemon import Daemon, poll_until
from test_cluster_nodes import FUSE_READY, LONG_TASK, NAMES, SETTLE_S, SHORT_TASK, all_up, keyed
from test_cluster_failover import trace_lines
from test_cluster_nodes import link
from test_cluster_tasks import cat, listed_tasks
from test_cluster_nodes import etcd  # noqa: F401  (the module's 3-member etcd, a fixture)

pytestmark = pytest.mark.skipif(not FUSE_READY,
                                reason="*** needs /dev/fuse and fusermount3: CLUSTER MOUNT TESTS SKIPPED ***")


@pytest.fixture(scope="module")
def nodes(etcd, tmp_path_factory):
    """Daemons a, b, c on `etcd`, each serving peers; stopped by pid at the end."""
    with peered_nodes(tmp_path_factory.mktemp("shared"), etcd.endpoints) as daemons:
        yield daemons


def echo(daemon: Daemon, text: str, *parts) -> subprocess.CompletedProcess:
    """`echo TEXT > FILE` in a shell: its exit status and error message tell the write's outcome."""
    return subprocess.run(["sh", "-c", f'echo "{text}" > {daemon.path(*parts)}'], capture_output=True, text=True)


def shows(daemon: Daemon, parts: tuple, text: str) -> bool:
    """Whether the file reads `text` (a missing one does not)."""
    try:
        return cat(daemon, *parts) == text
    except subprocess.CalledProcessError:
        return False


MARKS = itertools.count(1)


def in_step(nodes) -> None:
    """Wait until every node has applied the settings log as it is now: a marker entry goes after it (a
    tenant of its own, added on a) and every node shows the marker (entries apply in the log's order).
    Equal places alone would not do: an entry put but not yet applied anywhere leaves them equal."""
    marker = f"mark{next(MARKS)}"
    assert echo(nodes["a"], f"add {marker} weight=1", "ctl", "tenants").returncode == 0
    on_every_node(nodes, ("tenants", marker, "weight"), "1\n")


def on_every_node(nodes: dict, parts: tuple, text: str) -> None:
    for daemon in nodes.values():
        poll_until(lambda: shows(daemon, parts, text), SETTLE_S, f"{'/'.join(parts)} = {text!r} on {daemon.mountpoint}")


def write_errno(daemon: Daemon, line: str, *parts) -> int | None:
    """The errno of one write(2) of `line` to the file (opened as `>` does), None if it was accepted
    (the shell's echo reports every failed write as an I/O error)."""
    fd = os.open(daemon.path(*parts), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, line.encode() + b"\n")
        return None
    except OSError as refused:
        return refused.errno
    finally:
        os.close(fd)


def test_a_tenant_added_on_a_is_on_every_node_and_its_write_returns_once_a_applied_it(nodes):
    """`echo "add t1 weight=300" > a/ctl/tenants`: a shows the weight as the write returns, c within the
    watch's delay; a weight written on b then reads the same on a and c, and each trace has `settings` lines."""
    assert echo(nodes["a"], "add t1 weight=300", "ctl", "tenants").returncode == 0
    assert cat(nodes["a"], "tenants", "t1", "weight") == "300\n"
    on_every_node(nodes, ("tenants", "t1", "weight"), "300\n")
    assert echo(nodes["b"], "tokens 5000", "tenants", "t1", "quota").returncode == 0
    on_every_node(nodes, ("tenants", "t1", "quota"), cat(nodes["b"], "tenants", "t1", "quota"))
    assert "tokens 5000" in cat(nodes["c"], "tenants", "t1", "quota")
    for daemon in nodes.values():
        lines = [",".join(fields) for fields in trace_lines(daemon, "settings")]
        assert len(lines) >= 2 and all("applied" in line for line in lines), lines


def test_a_refused_write_is_refused_as_on_one_node_and_reaches_no_node(nodes):
    """A write this node refuses (a tenant that exists, a bad rule) fails with its errno there, as on one
    node, and changes nothing anywhere."""
    assert write_errno(nodes["c"], "add t1 weight=5", "ctl", "tenants") == errno.EEXIST
    in_step(nodes)  # had the entry been put, every node would have applied it by now
    assert all(cat(daemon, "tenants", "t1", "weight") == "300\n" for daemon in nodes.values())
    assert write_errno(nodes["b"], "deny colour=red", "ctl", "policy") == errno.EINVAL
    in_step(nodes)
    assert all(cat(daemon, "ctl", "policy") == "" for daemon in nodes.values())


def test_two_nodes_adding_the_same_tenant_at_once_agree_on_one(nodes):
    """`add t2 weight=N` on a and on b at once: exactly one write succeeds (the first in etcd's order), the
    other fails with EEXIST, every node has the winner's weight and has refused the same entries."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        writes = {name: pool.submit(write_errno, nodes[name], f"add t2 weight={weight}", "ctl", "tenants")
                  for name, weight in (("a", 111), ("b", 222))}
        outcomes = {name: write.result() for name, write in writes.items()}
    winners = [name for name, refused in outcomes.items() if refused is None]
    assert len(winners) == 1 and errno.EEXIST in outcomes.values(), outcomes
    on_every_node(nodes, ("tenants", "t2", "weight"), "111\n" if winners == ["a"] else "222\n")
    in_step(nodes)
    # the later write was refused by every node (1), or by its own before etcd if the first had reached it (0)
    refused = {link(daemon)["SettingsRefused"] for daemon in nodes.values()}
    assert refused in ({"0"}, {"1"}), refused


def test_a_policy_rule_written_on_b_refuses_a_submit_on_c(nodes):
    """`deny tenant=t1` into b's ctl/policy: a submit in t1 on c is refused with EACCES, wherever it is
    placed; the rule reads the same on every node, and emptied on c it is gone everywhere."""
    assert echo(nodes["b"], "deny tenant=t1", "ctl", "policy").returncode == 0
    on_every_node(nodes, ("ctl", "policy"), "deny tenant=t1\n")
    assert write_errno(nodes["c"], f"tenant=t1 {SHORT_TASK}", "ctl", "submit") == errno.EACCES
    assert subprocess.run(["sh", "-c", f": > {nodes['c'].path('ctl', 'policy')}"]).returncode == 0
    on_every_node(nodes, ("ctl", "policy"), "")
    assert write_errno(nodes["c"], f"tenant=t1 {SHORT_TASK}", "ctl", "submit") is None


def test_the_scheduling_policy_written_on_c_is_every_nodes(nodes):
    """`echo vtc > c/sched/policy`: every node schedules by vtc."""
    assert echo(nodes["c"], "vtc", "sched", "policy").returncode == 0
    on_every_node(nodes, ("sched", "policy"), "vtc\n")


def test_a_model_added_on_a_is_submittable_on_b_and_removed_everywhere(nodes):
    """`add m2 driver=sim` on a: /models/m2 on every node, a submit of model=m2 on b runs to the end;
    `remove m2` on c removes it everywhere."""
    assert echo(nodes["a"], "add m2 driver=sim", "ctl", "models").returncode == 0
    for daemon in nodes.values():
        poll_until(lambda: os.path.isdir(daemon.path("models", "m2")), SETTLE_S, f"m2 on {daemon.mountpoint}")
    poll_until(lambda: all("m2" in keyed(nodes["b"].path("nodes", name, "status"))["Models"] for name in NAMES),
               SETTLE_S, "every record lists m2")
    pid = nodes["b"].submit("model=m2 max_tokens=2 prompt=hi")
    assert "done" in cat(nodes["b"], "tasks", str(pid), "wait")
    assert echo(nodes["c"], "remove m2", "ctl", "models").returncode == 0
    for daemon in nodes.values():
        poll_until(lambda: not os.path.exists(daemon.path("models", "m2")), SETTLE_S, f"m2 gone on {daemon.mountpoint}")


QUOTA_TASK = f"tenant=tq {LONG_TASK}"


def submitted(daemon: Daemon, line: str = QUOTA_TASK) -> tuple[int | None, int | None]:
    """(pid, None) of one write of `line` to ctl/submit, or (None, errno) if refused; a refusal for want
    of pids (EAGAIN: the node waits for its next block of 4) is tried again, for SETTLE_S at most."""
    return poll_until(lambda: submit_once(daemon, line), SETTLE_S,
                      f"a submit of {line!r} on {daemon.mountpoint} not refused with EAGAIN (no pid block came)")


def submit_once(daemon: Daemon, line: str) -> tuple[int | None, int | None] | None:
    """(pid, None) of one write of `line` to ctl/submit, (None, errno) if refused, None if refused with EAGAIN."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_RDWR)
    try:
        os.write(fd, line.encode() + b"\n")
        return int(os.read(fd, 64)), None
    except OSError as refused:
        return None if refused.errno == errno.EAGAIN else (None, refused.errno)
    finally:
        os.close(fd)


def kill_all(nodes: dict, pids: list[int]) -> None:
    """Kill `pids` from a and wait until every node lists only its own of them (exited): the others' records
    no longer count them live."""
    for pid in pids:
        assert echo(nodes["a"], str(pid), "ctl", "kill").returncode == 0
    for name, daemon in nodes.items():
        poll_until(lambda: all(keyed(daemon.path("tasks", str(pid), "status"))["Node"] == name
                               for pid in set(pids) & listed_tasks(daemon)),
                   SETTLE_S, f"{pids} ended as seen on {daemon.mountpoint}")


def test_a_task_quota_holds_across_the_nodes_once_their_use_is_published(nodes):
    """tq with `quota tasks 4` (written on a): 4 long tasks submitted on a, b, c, a; once every node lists
    them a fifth is EDQUOT on every node, however it is placed."""
    assert echo(nodes["a"], "add tq", "ctl", "tenants").returncode == 0
    assert echo(nodes["a"], "tasks 4", "tenants", "tq", "quota").returncode == 0
    on_every_node(nodes, ("tenants", "tq", "quota"), cat(nodes["a"], "tenants", "tq", "quota"))
    pids = [submitted(nodes[name])[0] for name in "abca"]
    try:
        assert None not in pids, pids
        for daemon in nodes.values():
            poll_until(lambda: set(pids) <= listed_tasks(daemon), SETTLE_S,
                       f"the 4 tasks listed on {daemon.mountpoint}")
        assert [submitted(daemon)[1] for daemon in nodes.values()] == [errno.EDQUOT] * 3
    finally:
        kill_all(nodes, [pid for pid in pids if pid is not None])


def test_a_burst_on_three_nodes_at_once_overdraws_the_task_quota_within_the_bound(nodes):
    """Measured: tq (`quota tasks 4`) gets 4 submits on each of a, b, c at once, 3 rounds; what is admitted
    over 4 is printed (docs/cluster.md has the figures). Each node admits at most the quota counting what it
    has seen, so at most 12; at least 4 pass; once published, a further submit is EDQUOT."""
    over = []
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            bursts = [pool.submit(lambda d: [submitted(d) for _ in range(4)], daemon) for daemon in nodes.values()]
            results = [result for burst in bursts for result in burst.result()]
        pids = [pid for pid, _ in results if pid is not None]
        try:
            assert {refused for _, refused in results} <= {None, errno.EDQUOT} and 4 <= len(pids) <= 12, results
            over.append(len(pids) - 4)
            for daemon in nodes.values():
                poll_until(lambda: set(pids) <= listed_tasks(daemon), SETTLE_S,
                           f"the burst's tasks listed on {daemon.mountpoint}")
            assert submitted(nodes["b"])[1] == errno.EDQUOT
        finally:
            kill_all(nodes, pids)
    print(f"task quota 4, 4 submits on each of 3 nodes at once: admitted over the quota in each round: {over}")


def test_a_node_that_was_down_catches_up_and_its_journal_replays_the_same(nodes):
    """c stopped; a tenant added on a meanwhile; c started again on its state shows it (read from etcd
    once), and every entry applied once: the same `settings` lines as a's."""
    nodes["c"].stop()
    assert echo(nodes["a"], "add t3 weight=333", "ctl", "tenants").returncode == 0
    nodes["c"].start()
    poll_until(lambda: all_up(nodes), SETTLE_S, "c up again")
    on_every_node(nodes, ("tenants", "t3", "weight"), "333\n")

    def revisions(daemon):
        return [fields[-1].split(":")[0] for fields in trace_lines(daemon, "settings")]
    assert revisions(nodes["c"]) == revisions(nodes["a"])


def test_without_a_quorum_a_settings_write_fails_with_eagain_and_works_once_it_is_back(nodes, etcd):
    """Two of three etcd members killed: `add t4` fails with EAGAIN and a reason (timed, not asserted),
    nothing changes; with the members back it works on every node."""
    killed = [i for i in range(3) if i != etcd.leader_index()][:1] + [etcd.leader_index()]
    with etcd.down(*killed):
        started = time.monotonic()
        refused = write_errno(nodes["a"], "add t4", "ctl", "tenants")
        print(f"settings write without a quorum refused after {time.monotonic() - started:.1f}s")
        assert refused == errno.EAGAIN
        assert not os.path.exists(nodes["a"].path("tenants", "t4"))
    poll_until(lambda: echo(nodes["a"], "add t4", "ctl", "tenants").returncode == 0  # EAGAIN until the quorum is back
               or os.path.exists(nodes["a"].path("tenants", "t4")), SETTLE_S, "add t4 with a quorum")
    on_every_node(nodes, ("tenants", "t4", "weight"), "100\n")
