"""Tier 2: a write to ctl/kill or /tasks/PID/ctl of a task on another node (cluster/routing.py `route_kill`,
`route_ctl`) is sent there without its blank lines; its refusal names lines as a single node names them.
Node a is a Router over a stand-in cluster (tests/standin_cluster.py); node b's peer is a fake that runs the
lines through a second Runtime's ctl commands, as b's peer server does. In process: no FUSE, no etcd."""
import errno

import pytest
import trio

import standin_cluster
from apeinxfs.cluster import routing
from apeinxfs.cluster.records import NodeRecord
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.nodes import ctl
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from standin_cluster import runtime
from test_rejects import rejects

PID = 5000  # tasks a placed on b (PID and PID + 1), which b does not hold (killed and forgotten)


class PeerB:
    """b's peer: a write's lines run through b's ctl/kill or /tasks/PID/ctl command, as its peer server runs them."""

    def __init__(self, rt):
        self.rt = rt

    async def kill(self, pids, caller):
        return ctl.kill(self.rt)([str(pid).encode() for pid in pids], caller)

    async def ctl(self, pid, lines, caller):
        return ctl.task_ctl(self.rt, pid)([line.encode() for line in lines], caller)


@pytest.fixture
def router(tmp_path):
    """a's router, which placed tasks PID and PID + 1 on b and reaches b through PeerB."""
    made = standin_cluster.router(runtime(tmp_path / "a"), [NodeRecord(name="b", epoch=1, seen_us=0,
                                                                       advertise="127.0.0.1:1")])
    made.placed[PID] = made.placed[PID + 1] = "b"
    made.peers["http://127.0.0.1:1"] = PeerB(runtime(tmp_path / "b"))
    Tree(made.rt)  # a's tree: its ctl files' refused writes are recorded at their paths in it
    return made


def refusal(route, lines: list[str]) -> ApeinxError:
    async def run():
        forwarded = await route(lines, Caller())
        await forwarded.remote(None)
    with pytest.raises(ApeinxError) as caught:
        trio.run(run)
    return caught.value


def test_a_forwarded_kill_names_its_refused_line_as_the_writes(router):
    """`\\n\\n5000\\n` to a's ctl/kill, 5000 placed on b which holds no such task: refused ENOENT naming line 3,
    as a single node names it; two pids with a blank line between name the second line 3 too."""
    exc = refusal(router.route_kill, ["", "", str(PID)])
    assert (exc.errno, exc.reply()) == (errno.ENOENT, [f"error: line 3: no task {PID}"])
    exc = refusal(router.route_kill, [str(PID + 1), "", str(PID)])
    assert exc.reply() == [f"error: line 1: no task {PID + 1}", f"error: line 3: no task {PID}"]


def test_a_forwarded_task_ctl_names_its_refused_line_as_the_writes(router):
    """`\\nprio 5\\n` to /tasks/5000/ctl on a, sent to b which holds no such task: its refusal names line 2."""
    exc = refusal(router.route_ctl(PID, "b"), ["", "prio 5"])
    assert exc.errno == errno.ENOENT and exc.reply()[0].startswith("error: line 2: "), exc.reply()


def test_a_pid_another_nodes_live_key_lists_is_that_nodes(tmp_path):
    """Pid 3000, placed by no one and in no pid block a knows, listed by b's live key of tenant t: its owner is
    b (of tenant t), a pid no node lists is none's."""
    made = standin_cluster.router(runtime(tmp_path / "a"), [NodeRecord(name="b", epoch=1, seen_us=0)],
                                  {"b": {"t": "2999-3000"}})
    assert (made.owner(3000), made.live_tenant(3000, "b"), made.owner(3001)) == ("b", "t", None)


def test_a_kill_of_pids_on_several_nodes_looks_each_pid_up_once(tmp_path, monkeypatch):
    """The check of a kill of pids on several nodes (`check_seen`) looks each pid on b up once in pid ranges,
    b's live keys naming 50 tenants: for an admin, and for a user, refused ENOENT for another tenant's pid."""
    live = {"b": {f"t{index}": str(3000 + index) for index in range(50)}}
    made = standin_cluster.router(runtime(tmp_path / "a"), [NodeRecord(name="b", epoch=1, seen_us=0)], live)
    looked_up, holds = [], routing.holds
    monkeypatch.setattr(routing, "holds", lambda ranges, pid: looked_up.append(pid) or holds(ranges, pid))
    owners = {3000 + index: "b" for index in range(50)}
    made.check_seen(owners, Caller(role="admin", tenant="t0"))
    made.check_seen({3049: "b"}, Caller(uid=1000, role="user", tenant="t49"))
    with pytest.raises(ApeinxError) as refused:
        made.check_seen({3000: "b"}, Caller(uid=1000, role="user", tenant="t49"))
    assert refused.value.errno == errno.ENOENT
    assert looked_up == [*owners, 3049, 3000]


async def test_a_remote_tasks_ctl_applies_the_daemons_limits_before_routing_and_journals_their_refusal(router):
    """/tasks/PID/ctl of a task on b opens descriptors with a's limits: a write over write_lines is E2BIG before
    b sees a line, leaving one reject line naming the file on a, and an unfinished line counts for the uid."""
    router.rt.buffers.write_lines = 2
    handle = router.task_dir(PID, "b").child("ctl").open(Caller(), writing=True, reading=False)
    with pytest.raises(ApeinxError) as refused:
        await handle.write_async(b"prio 5\n" * 3)
    assert refused.value.errno == errno.E2BIG and rejects(router.rt) == [
        f"/tasks/{PID}/ctl: a write holds at most 2 lines (limits.write_lines), not 3: split it (uid 0)"]
    await handle.write_async(b"prio")
    assert router.rt.buffers.held == {0: 4}
