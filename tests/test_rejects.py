"""Tier 2: every refused write of every writable file leaves exactly one `reject` trace line (within its uid's rate,
test_reject_rate.py), `PATH: REASON
(uid U)` (apeinxfs(5), ERRORS), through one path (CommandHandle.refusals, Runtime.reject): a refused line,
a refusal of the command around the lines (a tenant removed while its settings file is open), and on a
cluster node a settings change refused by etcd or when its entry applies, journaled on that node once. Which
node of a cluster journals a write is test_rejects_cluster.py; the same through a real mount with shell tools
is test_rejects_mount.py."""
import csv
import errno
import io

import pytest

from apeinxfs.cluster.etcd_records import Unavailable
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime
from test_nodes import refusal, resolve
from test_shared_settings import EchoEtcd, add, node, settings_lines

ADMIN = Caller(uid=0, pid=10)
USER = Caller(uid=1000, gid=1000, pid=11, role="user")
REFUSED = [  # (file, a line it refuses, who writes it, errno)
    ("/ctl/submit", "BAD", USER, errno.EINVAL), ("/ctl/kill", "99", USER, errno.ENOENT),
    ("/tasks/1/ctl", "bogus", USER, errno.EINVAL), ("/ctl/tenants", "add default", ADMIN, errno.EEXIST),
    ("/ctl/tenants", "BAD", ADMIN, errno.EINVAL), ("/ctl/models", "remove nosuch", ADMIN, errno.ENOENT),
    ("/ctl/policy", "BAD", ADMIN, errno.EINVAL), ("/sched/policy", "BAD", ADMIN, errno.EINVAL),
    ("/tenants/default/weight", "0", ADMIN, errno.EINVAL), ("/tenants/default/weight", "5", USER, errno.EACCES),
    ("/tenants/default/members", "BAD", ADMIN, errno.EINVAL), ("/tenants/default/quota", "BAD", ADMIN, errno.EINVAL),
    ("/tenants/default/budget", "BAD", ADMIN, errno.EINVAL), ("/tenants/default/sandbox", "BAD", ADMIN, errno.EINVAL),
]


def rejects(rt) -> list[str]:
    """The details of the trace's reject lines, in order."""
    rows = csv.DictReader(io.StringIO(rt.kernel.trace.view()[0].decode()))
    return [row["detail"] for row in rows if row["type"] == "reject"]


@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path) as runtime:
        yield Tree(runtime)


@pytest.mark.parametrize("path, line, caller, code", REFUSED)
def test_a_refused_line_of_every_writable_file_leaves_one_reject_line(tree, path, line, caller, code):
    """A line the file refuses fails the write with its errno and leaves one reject line naming the file,
    the reason and the uid."""
    resolve(tree, "/ctl/submit").open(USER, writing=True, reading=False).write(b"job 5 1\n")  # task 1
    handle = resolve(tree, path).open(caller, writing=True, reading=False)
    refused = refusal(lambda: handle.write(f"{line}\n".encode()))
    assert refused.errno == code and rejects(tree.rt) == [f"{path}: {refused.reason} (uid {caller.uid})"]



@pytest.mark.parametrize("written, prefix", [(b"x\n", ""), (b"\nx\n", "line 2: "), (b"x\n\n", "line 1: ")])
def test_a_reject_line_names_the_refused_line_of_a_write_of_several(tree, written, prefix):
    """The reject line of a write of several lines (blank ones counted) names the refused one, `line N: `, as its
    reply does; a one-line write's does not."""
    handle = resolve(tree, "/ctl/kill").open(ADMIN, writing=True, reading=False)
    refused = refusal(lambda: handle.write(written))
    assert rejects(tree.rt) == [f"/ctl/kill: {prefix}PID must be a positive integer of digits only, not 'x' (uid 0)"]
    assert refused.reason.startswith(prefix)

def test_a_settings_write_after_its_tenant_is_removed_is_enoent_and_leaves_a_reject_line(tree):
    """A tenant's weight file opened for writing, then the tenant removed: the write is ENOENT and the trace
    keeps one reject line for the weight file."""
    resolve(tree, "/ctl/tenants").open(ADMIN, writing=True, reading=False).write(b"add t1\n")
    weight = resolve(tree, "/tenants/t1/weight").open(ADMIN, writing=True, reading=False)
    resolve(tree, "/ctl/tenants").open(ADMIN, writing=True, reading=False).write(b"remove t1\n")
    refused = refusal(lambda: weight.write(b"300\n"))
    assert refused.errno == errno.ENOENT
    assert rejects(tree.rt) == ["/tenants/t1/weight: no tenant 't1' (uid 0)"]


async def test_a_cluster_settings_write_refused_by_etcd_or_when_applied_leaves_one_reject_line_here(tmp_path):
    """On a cluster node, a tenants write whose put fails (no quorum: EAGAIN) and one refused when its entry
    applies (another node's `add t1` came first: EEXIST) each leave one reject line on this node; the
    refused entry's `settings` line is there too, as on every node."""
    rt = node(tmp_path)
    echo = rt.cluster.shared.etcd = EchoEtcd(rt.cluster.shared, refuse=Unavailable("etcd: no quorum within 8s"))
    handle = Tree(rt).root.children["ctl"].children["tenants"].open(ADMIN, writing=True, reading=False)
    with pytest.raises(Unavailable):
        await handle.write_async(b"add t2\n")
    echo.refuse, echo.first = None, ("b", [add("t1", 222)])
    with pytest.raises(ApeinxError) as exists:
        await handle.write_async(b"add t1 weight=300\n")
    assert exists.value.errno == errno.EEXIST and len(settings_lines(rt)) == 2
    assert rejects(rt) == ["/ctl/tenants: etcd: no quorum within 8s (uid 0)",
                           f"/ctl/tenants: {exists.value.reason} (uid 0)"]
    rt.journal.close()


def test_a_second_tree_over_one_runtime_is_refused(tree):
    """A second Tree over the Runtime of the first is refused: the ctl files either builds would send their reject
    lines to one tree's paths."""
    with pytest.raises(RuntimeError, match="one Tree per Runtime"):
        Tree(tree.rt)
    handle = resolve(tree, "/ctl/kill").open(USER, writing=True, reading=False)
    refused = refusal(lambda: handle.write(b"99\n"))
    assert rejects(tree.rt) == [f"/ctl/kill: {refused.reason} (uid {USER.uid})"]
