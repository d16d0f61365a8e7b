"""Tier 2: the node tree (nodes/) over a real Runtime, without FUSE.

Paths resolve through `Tree.lookup`, files render in the man page's formats, and ctl handles buffer,
run and refuse lines as a write(2) would. The pyfuse3 adapter on top is test_fs_ops.py.
"""
import errno
import os
import re

import pytest

from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Chunk, Kill, Step
from apeinxfs.kernel.task import State
from apeinxfs.nodes import members, views
from apeinxfs.nodes.base import Blocking, Caller, Command, Dir, Log, Show
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime, submit

ROOT = 1
USER = Caller(uid=1000, gid=1000, pid=1)
STATUS_KEYS = ["Name", "Pid", "PPid", "Tenant", "Uid", "Model", "State", "Prio", "Weight", "Vruntime",
               "TokensIn", "TokensOut", "TokensMax", "KVPages", "Exit"]
MEMINFO_SIZES = ["KVTotal", "KVFree", "KVUsed", "KVPageSize", "PrefixCached"]
MEMINFO_COUNTS = ["KVPagesTotal", "KVPagesFree", "PrefixHits", "PrefixMisses", "Evictions", "OOMKills"]


@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path) as runtime:
        yield Tree(runtime)


def resolve(tree, path: str):
    """The node at `path` (like /tasks/1/status), walked one lookup at a time."""
    node = tree.node(ROOT)
    for name in filter(None, path.split("/")):
        node = tree.lookup(node.inode, name)
    return node


def text(tree, path: str) -> str:
    return tree.render(resolve(tree, path)).decode()


def step_all(rt, count=1) -> None:
    """Deliver `count` one-word steps for every task running on GPU 0."""
    for _ in range(count):
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid=t.pid, text=" w", tokens=1, prefill=1)
                                       for t in rt.kernel.batch(0)]))


def refusal(call) -> ApeinxError:
    with pytest.raises(ApeinxError) as caught:
        call()
    return caught.value


# -- paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,kind", [
    ("/", Dir), ("/README", Show), ("/ctl/submit", Command), ("/ctl/kill", Command), ("/tasks", Dir),
    ("/models", Dir), ("/memory/meminfo", Show),
    ("/memory/pressure", Show), ("/trace/events", Log), ("/replay", Dir), ("/metrics", Show),
])
def test_static_paths_resolve(tree, path, kind):
    """Every static path of the man page resolves to its kind of node, and its inode finds it again."""
    node = resolve(tree, path)
    assert isinstance(node, kind)
    assert tree.node(node.inode) is node


@pytest.mark.parametrize("name,kind", [("status", Show), ("ctl", Command), ("prompt", Show), ("output", Log),
                                       ("stream", Blocking), ("wait", Blocking), ("events", Log)])
def test_task_paths_resolve_by_computed_inode(tree, name, kind):
    """A task's files resolve, and their computed inode gives back the same kind of node."""
    submit(tree.rt)
    node = resolve(tree, f"/tasks/1/{name}")
    again = tree.node(node.inode)
    assert isinstance(node, kind) and type(again) is type(node) and again.inode == node.inode


def test_directory_listings(tree):
    """Listings name the man page's entries; /tasks and /replay list one entry per pid."""
    submit(tree.rt)
    submit(tree.rt)
    assert [n for n, _ in resolve(tree, "/").entries()] == ["README", "ctl", "tasks", "models", "memory", "gpus",
                                                            "trace", "replay", "sched", "tenants", "billing", "metrics",
                                                            "health", "nodes", "cluster"]
    assert [n for n, _ in resolve(tree, "/tasks").entries()] == ["1", "2"]
    assert [n for n, _ in resolve(tree, "/tasks/2").entries()] == ["status", "ctl", "prompt", "output",
                                                                   "stream", "wait", "events", "children"]
    assert [n for n, _ in resolve(tree, "/replay").entries()] == ["1", "2"]


@pytest.mark.parametrize("path", ["/nope", "/tasks/1", "/tasks/abc", "/tasks/01x", "/tasks/" + "9" * 20,
                                  "/replay/7", "/README/x", "/models/other"])
def test_unknown_paths_are_enoent(tree, path):
    """Names that do not exist (no such task, a file used as a directory) are ENOENT."""
    assert refusal(lambda: resolve(tree, path)).errno == errno.ENOENT


def test_inode_of_a_vanished_task_is_enoent(tree):
    """An inode computed for a pid that does not exist is ENOENT."""
    submit(tree.rt)
    inode = resolve(tree, "/tasks/1/status").inode
    assert refusal(lambda: tree.node(inode + 16 * 5)).errno == errno.ENOENT


# -- formats -------------------------------------------------------------------------------------------


def test_status_keys_in_order_with_tabs(tree):
    """status has the man page's keys first and in order, each `Key:<TAB>value`."""
    submit(tree.rt, name="job1", tokens=1000, prompt="hello there")
    lines = text(tree, "/tasks/1/status").splitlines()
    assert all(re.fullmatch(r"[A-Za-z]+:\t\S.*", line) for line in lines)
    fields = dict(line.split(":\t", 1) for line in lines)
    assert list(fields)[:len(STATUS_KEYS)] == STATUS_KEYS
    assert fields["Name"] == "job1" and fields["Pid"] == "1" and fields["Uid"] == "1000"
    assert (fields["State"], fields["Weight"], fields["TokensMax"], fields["Exit"]) == \
        ("R (running)", "1024", "1000", "-")


def test_status_after_exit(tree):
    """An exited task's status says Z (exited) and its wait line."""
    submit(tree.rt)
    tree.rt.commit([Kill(pid=1)])
    fields = dict(line.split(":\t", 1) for line in text(tree, "/tasks/1/status").splitlines())
    assert (fields["State"], fields["Exit"], fields["KVPages"]) == ("Z (exited)", "killed", "0")


def test_meminfo_layout(tree):
    """meminfo pads key+colon to 16, right-aligns values in 8, and says ` kB` on sizes only."""
    lines = text(tree, "/memory/meminfo").splitlines()
    fields = {line[:16].rstrip(): line[16:] for line in lines}
    for key in MEMINFO_SIZES + MEMINFO_COUNTS:
        assert key + ":" in fields
    for line in lines:
        assert re.fullmatch(r"[A-Za-z]+:\s*", line[:16]) and re.fullmatch(r" *\d+", line[16:24])
    assert all(fields[k + ":"].endswith(" kB") for k in MEMINFO_SIZES)
    assert all(len(fields[k + ":"]) == 8 for k in MEMINFO_COUNTS)


def test_meminfo_values_follow_the_pools(tree):
    """KVUsed and KVPagesFree move with a running task's pages."""
    submit(tree.rt)
    fields = {line[:16].rstrip().rstrip(":"): int(line[16:24]) for line in text(tree, "/memory/meminfo").splitlines()}
    pool = tree.rt.kernel.gpus[0].pool
    assert fields["KVPagesFree"] == pool.pages_free == fields["KVPagesTotal"] - 1
    assert fields["KVUsed"] == fields["KVPageSize"] and fields["KVTotal"] == fields["KVFree"] + fields["KVUsed"]


def test_pressure_psi_lines(tree):
    """pressure is a `some` and a `full` PSI line, then an `engine` one with the tasks stalled for a down engine."""
    lines = text(tree, "/memory/pressure").splitlines()
    pattern = r"avg10=\d+\.\d\d avg60=\d+\.\d\d avg300=\d+\.\d\d total=\d+"
    assert [line.split()[0] for line in lines] == ["some", "full", "engine"]
    assert all(re.fullmatch(r"(some|full) " + pattern, line) for line in lines[:2])
    assert re.fullmatch("engine " + pattern + " stalled=0", lines[2])


def test_metrics_exposition(tree):
    """metrics ends with a newline; every sample belongs to a family with HELP and TYPE."""
    submit(tree.rt)
    body = text(tree, "/metrics")
    assert body.endswith("\n")
    helped = set(re.findall(r"^# HELP (\w+) ", body, re.M))
    typed = dict(re.findall(r"^# TYPE (\w+) (counter|gauge)$", body, re.M))
    assert helped == set(typed)
    samples = [line for line in body.splitlines() if not line.startswith("#")]
    for sample in samples:
        assert re.fullmatch(r'(\w+)(\{\w+="[^"]*"(,\w+="[^"]*")*\})? \S+', sample)
        assert sample.split("{")[0].split()[0] in typed
    assert all(name.endswith("_total") for name, kind in typed.items() if kind == "counter")
    assert "apeinx_submits_total 1" in samples


def test_replay_timeline(tree):
    """replay/PID heads with the task and has one timed line per trace event of the task."""
    submit(tree.rt, name="job1", tokens=2)
    step_all(tree.rt, 2)
    lines = text(tree, "/replay/1").splitlines()
    assert lines[0] == "pid 1 job1 model=sim tenant=default exit=done"
    assert [line.split()[1] for line in lines[1:]] == ["submit", "dispatch", "first_token", "bill", "exit"]
    assert all(re.match(r" *[+-]\d+\.\d{6}s  ", line) for line in lines[1:])


def test_trace_log_grows(tree):
    """trace/events starts with the CSV header and its size follows new lines."""
    node = resolve(tree, "/trace/events")
    assert node.source() == (b"seq,time_us,type,pid,tenant,model,gpu,node,detail\n", 0)
    before = node.size()
    submit(tree.rt)
    assert node.size() > before


def test_open_snapshot_fixes_the_size_until_closed(tree):
    """While a status file is open its size is its snapshot's, though a new open would read the text now; after
    close it is the text now again."""
    submit(tree.rt)
    node = resolve(tree, "/tasks/1/status")
    first = tree.open_snapshot(node, 0)
    tree.rt.commit([Kill(pid=1)])
    now = tree.render(node)
    assert b"Z (exited)" in now and b"Z (exited)" not in first and tree.size(node) == len(first)
    tree.close_snapshot(node.inode, 0, first)
    assert tree.size(node) == len(now)


def test_overlapping_snapshots_report_the_largest_size_until_the_last_closes(tree):
    """Two opens of one file with snapshots of different sizes: the size is the larger while it is open,
    the other once it closes, and the text now once both did."""
    submit(tree.rt)
    node = resolve(tree, "/tasks/1/status")
    longer = tree.open_snapshot(node, 0)
    tree.rt.commit([Kill(pid=1)])
    shorter = tree.open_snapshot(node, 0)
    assert len(shorter) != len(longer)
    longer, shorter = max(longer, shorter, key=len), min(longer, shorter, key=len)
    assert tree.size(node) == len(longer)
    tree.close_snapshot(node.inode, 0, longer)
    assert tree.size(node) == len(shorter)
    tree.close_snapshot(node.inode, 0, shorter)
    assert tree.size(node) == len(tree.render(node))


# -- command handles --------------------------------------------------------------------------------------


def open_ctl(tree, path="/ctl/submit"):
    """Open a ctl file as `echo` does, or read-write where it replies (/ctl/submit)."""
    return resolve(tree, path).open(USER, writing=True, reading=path == "/ctl/submit")


async def reply(handle) -> bytes:
    return await handle.read(0, 4096, None)


async def test_submit_reply_per_line(tree):
    """Each line of one write gets its pid in the reply, in order."""
    handle = open_ctl(tree)
    assert handle.write(b"a 5 5\nb 5 5\n") == 12
    assert await reply(handle) == b"1\n2\n"
    assert tree.rt.kernel.tasks[1].uid == 1000


async def test_split_lines_are_joined_and_reply_resets(tree):
    """A line cut across writes runs when completed, and each write's reply replaces the last."""
    handle = open_ctl(tree)
    handle.write(b"a 5 5\nb 5")
    assert await reply(handle) == b"1\n"
    handle.write(b" 5\n")
    assert await reply(handle) == b"2\n"
    assert tree.rt.kernel.tasks[2].spec.name == "b"


async def test_bad_line_refuses_the_whole_write(tree):
    """One bad line fails the write with its errno, submits nothing and is traced."""
    handle = open_ctl(tree)
    error = refusal(lambda: handle.write(b"a 5 5\nb 5 high\n"))
    assert error.errno == errno.EINVAL
    assert tree.rt.kernel.tasks == {}
    assert (await reply(handle)).startswith(b"error: line 2: PRIORITY must be an integer")
    assert tree.rt.kernel.counters.rejected == 1


async def test_unknown_model_is_enoent(tree):
    """A submit naming an unknown model fails ENOENT."""
    assert refusal(lambda: open_ctl(tree).write(b"name=j model=gpt9\n")).errno == errno.ENOENT


def test_unterminated_line_runs_at_release(tree):
    """A last line without newline waits for the last close (release) and then runs."""
    handle = open_ctl(tree)
    handle.write(b"late 5 5")
    assert tree.rt.kernel.tasks == {}
    handle.release()
    assert tree.rt.kernel.tasks[1].spec.name == "late"


def test_blank_and_control_lines(tree):
    """Blank lines are skipped; a line with control characters is EINVAL."""
    handle = open_ctl(tree)
    handle.write(b"\n\n")
    assert tree.rt.kernel.tasks == {}
    assert refusal(lambda: handle.write(b"a\x01 5 5\n")).errno == errno.EINVAL


def test_task_ctl_and_kill_files(tree):
    """tasks/PID/ctl stops a task, cont on a running task is EBUSY, ctl/kill kills it."""
    submit(tree.rt)
    open_ctl(tree, "/tasks/1/ctl").write(b"stop\n")
    assert tree.rt.kernel.tasks[1].state is State.STOPPED
    open_ctl(tree, "/tasks/1/ctl").write(b"cont\n")
    assert refusal(lambda: open_ctl(tree, "/tasks/1/ctl").write(b"cont\n")).errno == errno.EBUSY
    open_ctl(tree, "/ctl/kill").write(b"1\n")
    assert tree.rt.kernel.tasks[1].exit == "killed"
    assert refusal(lambda: open_ctl(tree, "/ctl/kill").write(b"7\n")).errno == errno.ENOENT


def test_open_modes_are_enforced(tree):
    """A write-only ctl refuses readers and a shown file refuses writers, both EACCES."""
    assert refusal(lambda: resolve(tree, "/ctl/kill").open(USER, writing=True, reading=True)).errno == errno.EACCES
    assert refusal(lambda: resolve(tree, "/README").open(USER, writing=True, reading=False)).errno == errno.EACCES


# -- blocking and growing files ------------------------------------------------------------------------------


async def test_wait_blocks_until_exit(tree):
    """wait's read calls the waiter while the task runs and returns its exit line after."""
    submit(tree.rt, tokens=3)
    handle = resolve(tree, "/tasks/1/wait").open(USER, writing=False, reading=True)
    woken = []

    async def waiter(key, caller):
        woken.append(key)
        step_all(tree.rt)
    assert await handle.read(0, 100, waiter) == b"done\n"
    assert woken == [("done", 1)] * 3


async def test_stream_yields_text_then_eof(tree):
    """stream returns output from the offset and b'' once the task is done and all is read."""
    submit(tree.rt, tokens=2)
    step_all(tree.rt)
    handle = resolve(tree, "/tasks/1/stream").open(USER, writing=False, reading=True)
    assert await handle.read(0, 100, None) == b" w"

    async def waiter(key, caller):
        step_all(tree.rt)
    assert await handle.read(2, 100, waiter) == b" w"
    assert await handle.read(4, 100, None) == b""


async def test_output_log_reads_live_bytes(tree):
    """An output handle opened early sees text generated after the open."""
    submit(tree.rt, tokens=5)
    handle = resolve(tree, "/tasks/1/output").open(USER, writing=False, reading=True)
    step_all(tree.rt, 2)
    assert await handle.read(0, 100, None) == b" w w"


def test_the_views_range_lies_between_the_boot_inodes_and_the_nodes(tree):
    """Every boot-time inode is below the views' range, which ends where /nodes/NAME's inodes begin."""
    assert max(tree.static) < views.VIEW_BASE and views.VIEW_LIMIT == members.NODE_BASE


def test_views_past_their_range_are_refused_and_the_others_keep_their_inodes():
    """Once every inode of the views' range is given, a new view is ENOSPC and the views given keep theirs."""
    runqueue = Show(show=lambda view: f"{view}\n", tenanted=True, inode=7)
    given = views.Views({7: runqueue}.__getitem__, lambda tenant: True, lambda: None)
    first = given.node(runqueue, "t0").inode
    for number in range(1, views.VIEW_LIMIT - views.VIEW_BASE):
        given.node(runqueue, f"t{number}")
    with pytest.raises(ApeinxError) as refused:
        given.node(runqueue, "one more")
    assert refused.value.errno == errno.ENOSPC and given.node(runqueue, "t0").inode == first
    assert given.node(runqueue, None) is runqueue and given.by_inode(first).render() == b"t0\n"
