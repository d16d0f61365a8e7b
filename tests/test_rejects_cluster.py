"""Tier 2: on which node a write refused in a cluster leaves its one `reject` line (apeinxfs(5), ERRORS), in
process over real sockets: node a's Router over a stand-in cluster (tests/standin_cluster.py) whose peer is
a real Peer client of node b's real PeerServer (its own Runtime and Tree), of a port nobody listens on, or of
one that takes the request and never answers; and a cluster node's settings written to a real etcd client
whose members cannot be connected to or never answer.

A write refused by b's write leaves b's line; refused by b before any write ran there, or never sent, a's;
one whose outcome is unknown (an answer lost, etcd silent) or that applies later (TryAgain) none; a split
write partly run leaves the refusing nodes' lines and a's for the lines whose answers were lost."""
import contextlib
import csv
import errno
import io
import socket

import attrs
import pytest
import trio
import trio.testing

import standin_cluster
from apeinxfs.cluster import peer_server
from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.peer_client import Peer
from apeinxfs.cluster.peer_server import PeerServer, prepare
from apeinxfs.cluster.peer_wire import REJECTS_HEADER, TokenFile, Tokens
from apeinxfs.cluster.records import NodeRecord
from apeinxfs.kernel.errors import ApeinxError, Denied
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from engines import free_port
from test_nodes import resolve
from test_rejects import rejects
from test_shared_settings import EchoEtcd, add, ctl_tenants, node

TOKEN = b"rejects-" + b"0" * 16
ADMIN = Caller(uid=0, pid=10)
USER = Caller(uid=1000, gid=1000, pid=11, role="user")
LINE = "model=sim max_tokens=5 prompt=x"
TIMEOUT_S = 0.5  # a's patience with a silent peer or etcd member (never asserted: only what it leaves)


@contextlib.asynccontextmanager
async def serving(tree):
    """b's PeerServer over `tree` on a free port of 127.0.0.1, its URL yielded while it serves."""
    listening = prepare(f"127.0.0.1:{free_port()}", TokenFile.fixed(Tokens((TOKEN,))))
    async with trio.open_nursery() as nursery:
        await nursery.start(PeerServer(tree, listening.tokens, 8, stall_s=10.0).serve, listening)
        yield f"http://127.0.0.1:{listening.port}"
        nursery.cancel_scope.cancel()


@contextlib.contextmanager
def silent():
    """The URL of a port that takes connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def closed():
    """The URL of a port nobody listens on (connections refused: nothing is sent)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


def a_router(tmp_path, url: str, records=(), models=("sim",)):
    """Node a's Router, which reaches node b (holding `models`) at `url` through a real Peer client, and a's tree."""
    router = standin_cluster.router(standin_cluster.runtime(tmp_path / "a"),
                                    [*records, NodeRecord(name="b", epoch=1, seen_us=0, slots_free=8,
                                                          kv_pages_free=100, models=models, advertise="b")])
    router.peers["http://b"] = Peer(url, TOKEN, timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S)
    return router, Tree(router.rt)  # a's tree: its ctl files' refused writes are recorded at their paths in it


def submitted(tree, caller, line: str) -> int:
    """The pid of `line` submitted on `tree`'s node by `caller`."""
    handle = resolve(tree, "/ctl/submit").open(caller, writing=True, reading=True)
    handle.write(f"{line}\n".encode())
    return int(handle.reply)


def no_task(tree_b, monkeypatch) -> tuple[int, str]:
    return 4242, "stop"


def another_tenants_task(tree_b, monkeypatch) -> tuple[int, str]:
    resolve(tree_b, "/ctl/tenants").open(ADMIN, writing=True, reading=False).write(b"add t2\n")
    return submitted(tree_b, ADMIN, f"{LINE} tenant=t2"), "stop"


def a_line_b_refuses(tree_b, monkeypatch) -> tuple[int, str]:
    return submitted(tree_b, USER, LINE), "bogus"


def over_bs_body_limit(tree_b, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(peer_server, "BODY_MAX", 10)  # b answers 413 before any write runs
    return submitted(tree_b, USER, LINE), "prio 3 " + "x" * 20


@pytest.mark.parametrize("case, code, lines_on", [
    (no_task, errno.ENOENT, "a"),  # b: "no /tasks/4242/ctl on this node" at resolve
    (another_tenants_task, errno.ENOENT, "a"),  # b: Hidden at resolve
    (over_bs_body_limit, errno.EIO, "a"),  # b: an empty 413
    (a_line_b_refuses, errno.EINVAL, "b"),  # b's write refused the line
])
async def test_a_forwarded_task_ctl_write_leaves_one_reject_line_on_the_node_that_judged_it(
        tmp_path, monkeypatch, case, code, lines_on):
    """A user's write on a to /tasks/PID/ctl of a task a places on b, refused by b before any write ran there
    (no such task, another tenant's, a body too large) leaves one reject line on a; refused by b's write, one
    on b; never one on both."""
    tree_b = Tree(standin_cluster.runtime(tmp_path / "b"))
    pid, line = case(tree_b, monkeypatch)
    async with serving(tree_b) as url:
        router, _ = a_router(tmp_path, url)
        handle = router.task_dir(pid, "b").child("ctl").open(USER, writing=True, reading=False)
        with pytest.raises(ApeinxError) as refused:
            await handle.write_async(f"{line}\n".encode())
    assert refused.value.errno == code
    lines = {"a": rejects(router.rt), "b": rejects(tree_b.rt)}
    assert [len(lines["a"]), len(lines["b"])] == ([1, 0] if lines_on == "a" else [0, 1]), lines
    assert lines[lines_on] == [f"/tasks/{pid}/ctl: {refused.value.reason} (uid {USER.uid})"]



@pytest.mark.parametrize("says, on_b, word", [(True, 0, "here"), (False, 1, "peer")])
async def test_a_refusal_at_bs_resolve_is_journaled_on_b_only_for_an_asking_node_that_does_not_journal_it(
        tmp_path, says, on_b, word):
    """A write to a task b does not have, refused at b's resolve: b journals it (and says so) only when the
    request lacks Apeinx-Rejects, as an older asking node's does (it takes every peer's refusal as journaled)."""
    tree_b = Tree(standin_cluster.runtime(tmp_path / "b"))
    async with serving(tree_b) as url, Peer(url, TOKEN) as peer:
        headers = peer.headers(USER, {})
        if not says:
            del headers[REJECTS_HEADER]
        response = await peer.http.request("POST", "tasks/4242/ctl", headers=headers, content=b"stop\n")
    assert response.status_code == 404 and response.json()["reject_line"] == word
    assert rejects(tree_b.rt) == [f"/tasks/4242/ctl: no /tasks/4242/ctl on this node (uid {USER.uid})"][:on_b]



def denials(rt) -> list[tuple[str, str, str]]:
    """The (uid, action, detail) of the audit trail's denied lines, in order."""
    rows = csv.DictReader(io.StringIO(rt.kernel.audit.view()[0].decode()))
    return [(row["uid"], row["action"], row["detail"]) for row in rows if row["result"] == "denied"]


async def test_a_role_refused_at_bs_resolve_is_journaled_and_audited_on_a_only(tmp_path):
    """A viewer's write on a to the ctl of a task on b, refused by b's resolve for the role (EACCES, before any
    write ran there): a writes its reject line and audits the denial, once; b writes neither."""
    tree_b = Tree(standin_cluster.runtime(tmp_path / "b"))
    pid = submitted(tree_b, USER, LINE)
    viewer = Caller(uid=4243, gid=4243, pid=12, role="viewer")
    async with serving(tree_b) as url:
        router, _ = a_router(tmp_path, url)
        handle = router.task_dir(pid, "b").child("ctl").open(viewer, writing=True, reading=False)
        with pytest.raises(Denied) as refused:
            await handle.write_async(b"prio 3\n")
    path = f"/tasks/{pid}/ctl"
    assert rejects(router.rt) == [f"{path}: {refused.value.reason} (uid 4243)"] and rejects(tree_b.rt) == []
    assert denials(router.rt) == [("4243", path, refused.value.reason)] and denials(tree_b.rt) == []

async def test_a_bug_in_bs_write_leaves_no_reject_line_on_either_node(tmp_path, monkeypatch):
    """A write of a task's ctl that hits a bug in b's daemon fails EIO on a and leaves no reject line on a or b
    (its lines may have run there), as a bug on one node writes none."""
    tree_b = Tree(standin_cluster.runtime(tmp_path / "b"))
    pid = submitted(tree_b, USER, LINE)

    def bug(events):
        raise ZeroDivisionError("a bug in b's commit")
    monkeypatch.setattr(tree_b.rt, "commit_checked", bug)
    async with serving(tree_b) as url:
        router, _ = a_router(tmp_path, url)
        handle = router.task_dir(pid, "b").child("ctl").open(USER, writing=True, reading=False)
        with pytest.raises(ApeinxError) as refused:
            await handle.write_async(b"prio 3\n")
    assert refused.value.errno == errno.EIO and "internal error" in refused.value.reason
    assert [rejects(router.rt), rejects(tree_b.rt)] == [[], []]

@pytest.mark.parametrize("peer, code, here", [
    (closed, errno.EHOSTDOWN, 1),  # nothing was sent: no node judged it, a did
    (silent, errno.EHOSTDOWN, 0),  # sent, no answer: its outcome is unknown
])
async def test_a_forwarded_write_never_answered_leaves_no_reject_line_and_one_never_sent_leaves_it_here(
        tmp_path, peer, code, here):
    """A write to the ctl of a task on b when b cannot be connected to is refused here, with a reject line here;
    when b takes the request and never answers, its outcome is unknown and no node writes a reject line."""
    with peer() as url:
        router, _ = a_router(tmp_path, url)
        handle = router.task_dir(4242, "b").child("ctl").open(USER, writing=True, reading=False)
        with pytest.raises(ApeinxError) as refused:
            await handle.write_async(b"prio 3\n")
    assert refused.value.errno == code and len(rejects(router.rt)) == here


@pytest.mark.parametrize("b_models, lines, on_a, on_b", [
    (("sim",), [LINE] * 4, 1, 0),  # b's answer lost: a journals its lines
    (("sim", "m2"), [LINE] * 3 + [LINE.replace("sim", "m2")], 0, 1),  # b refused its lines: b's line
])
async def test_a_split_submit_partly_run_leaves_the_refusals_and_the_lost_answers_lines(
        tmp_path, b_models, lines, on_a, on_b):
    """A submit on a spread over a and b: b's lines refused by b (a model its record lists and it lacks) leave
    b's reject line and none on a; b's answer lost (a silent b) leaves one on a, where no line was before."""
    tree_b = Tree(standin_cluster.runtime(tmp_path / "b"))
    with silent() as quiet:
        async with serving(tree_b) as url:
            router, tree_a = a_router(tmp_path, url if on_b else quiet, [NodeRecord(
                name="a", epoch=1, seen_us=0, slots_free=8, kv_pages_free=100, models=("sim",), advertise="a")],
                models=b_models)
            rt = router.rt
            submit = attrs.evolve(resolve(tree_a, "/ctl/submit"), route=router.route_submit)
            handle = submit.open(ADMIN, writing=True, reading=True)
            with pytest.raises(ApeinxError) as refused:
                await handle.write_async("".join(f"{line}\n" for line in lines).encode())
    assert refused.value.errno == errno.EREMOTEIO, refused.value.reason  # split: some lines ran on a
    assert [len(rejects(rt)), len(rejects(tree_b.rt))] == [on_a, on_b]


# -- settings changes on a cluster node ---------------------------------------------------------------------


def tenants(rt):
    return ctl_tenants(rt, ADMIN)


@pytest.mark.parametrize("member, here", [(closed, 1), (silent, 0)])
async def test_a_settings_write_etcd_refused_leaves_a_reject_line_and_one_of_unknown_outcome_none(
        tmp_path, member, here):
    """A tenants write on a cluster node whose etcd cannot be connected to (no quorum: nothing applied) leaves
    its reject line; one whose put went unanswered (outcome unknown: it may apply) leaves none."""
    rt = node(tmp_path)
    with member() as url:
        async with Etcd([url], timeout=TIMEOUT_S, attempt_timeout=TIMEOUT_S / 4,
                        connect_timeout=TIMEOUT_S / 4) as etcd:
            rt.cluster.shared.etcd = etcd
            with pytest.raises(ApeinxError) as refused:
                await tenants(rt).write_async(b"add t2\n")
    assert refused.value.errno == errno.EAGAIN and len(rejects(rt)) == here, refused.value.reason
    rt.journal.close()


class DeafEtcd(EchoEtcd):
    """An etcd that takes every put and whose watch never brings it back (a watch behind)."""

    async def put(self, key: bytes, value: bytes) -> int:
        self.revision += 1
        return self.revision


async def test_a_settings_write_that_applies_once_the_watch_catches_up_leaves_no_reject_line(
        tmp_path, autojump_clock):
    """A tenants write whose entry etcd took but whose watch has not brought it back within WRITE_S fails
    EAGAIN (TryAgain) and leaves no reject line: the change applies later."""
    rt = node(tmp_path)
    rt.cluster.shared.etcd = DeafEtcd(rt.cluster.shared)
    with pytest.raises(ApeinxError) as later:
        await tenants(rt).write_async(b"add t2\n")
    assert later.value.errno == errno.EAGAIN and "applies once" in later.value.reason and rejects(rt) == []
    rt.journal.close()


def conflicting(shared):
    echo = EchoEtcd(shared)
    echo.first = ("b", [add("t1", 222)])
    return echo


def refusing(shared):
    return EchoEtcd(shared, refuse=ApeinxError("etcd: the request is too large"))



async def closed_and_drained(handle, shared) -> None:
    """Close `handle` (its last close), then let `shared` put what the close left in the background."""
    handle.release()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared.drain)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

@pytest.mark.parametrize("etcd", [conflicting, refusing])
async def test_a_settings_change_written_at_close_and_refused_later_leaves_its_reject_line(tmp_path, etcd):
    """`add t1` without a newline, run at close and put in the background: refused when its entry applies
    (another node's `add t1` came first) or by etcd, it leaves one reject line naming the file."""
    rt = node(tmp_path)
    shared = rt.cluster.shared
    shared.etcd = etcd(shared)
    handle = tenants(rt)
    handle.write(b"add t1 weight=300")
    await closed_and_drained(handle, shared)
    assert len(rejects(rt)) == 1 and rejects(rt)[0].startswith("/ctl/tenants: "), rejects(rt)
    rt.journal.close()


async def test_an_emptying_close_of_the_policy_refused_later_leaves_its_reject_line(tmp_path):
    """`: > ctl/policy` (an O_TRUNC open closed with nothing written) empties the list at close, put in the
    background: refused by etcd, it leaves one reject line naming the file."""
    rt = node(tmp_path)
    shared = rt.cluster.shared
    shared.etcd = refusing(shared)
    handle = resolve(Tree(rt), "/ctl/policy").open(ADMIN, writing=True, reading=False, truncating=True)
    await closed_and_drained(handle, shared)
    assert len(rejects(rt)) == 1 and rejects(rt)[0].startswith("/ctl/policy: "), rejects(rt)
    rt.journal.close()
