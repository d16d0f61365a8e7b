"""Tier 2: the tenant files, /ctl/tenants, /ctl/policy and the per-caller checks, without FUSE.

Callers are built with the role and tenant fs.py would give them; the same through a real
mount as other Unix users is test_tenants_mount.py.
"""
import csv
import errno
import io
import os

import attrs
import pytest

from apeinxfs import config as config_mod
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import SetTenant, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.nodes.base import Caller
from test_journal_runtime import open_runtime
from test_nodes import refusal, resolve, text
from apeinxfs.nodes.tasks import FILES, inode_of
from apeinxfs.nodes.tree import Tree

ADMIN = Caller(uid=0, pid=10)
ALICE = Caller(uid=1001, gid=1001, pid=11, role="user", tenant="a")
BOB = Caller(uid=1002, gid=1002, pid=12, role="user", tenant="b")
VIEWER = Caller(uid=1005, gid=1005, pid=13, role="viewer", tenant="a")


@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path) as runtime:
        tree = Tree(runtime)
        write(tree, "/ctl/tenants", b"add a weight=100 uids=1001 viewer_uids=1005\nadd b weight=300 uids=1002\n")
        yield tree


def write(tree, path: str, data: bytes, caller=ADMIN, truncating=False):
    """Open `path` for writing as `caller`, write `data`, close; the handle."""
    handle = resolve(tree, path).open(caller, writing=True, reading=False, truncating=truncating)
    handle.write(data)
    handle.release()
    return handle


def submit(tree, caller, line=b"job 50 5\n") -> int:
    handle = resolve(tree, "/ctl/submit").open(caller, writing=True, reading=True)
    handle.write(line)
    return int(handle.reply)


def audit(tree) -> list[dict]:
    return list(csv.DictReader(io.StringIO(tree.rt.kernel.audit.buffer.decode())))


# -- tenants ----------------------------------------------------------------------------------------

def test_added_tenants_get_directories_whose_settings_read_back(tree):
    """`add` creates /tenants/NAME; its files show the settings in KEY VALUE form."""
    assert [name for name, _ in resolve(tree, "/tenants").entries()] == ["default", "a", "b"]
    assert text(tree, "/tenants/b/weight") == "300\n"
    assert text(tree, "/tenants/a/members").splitlines() == ["uids 1001", "gids -", "viewer_uids 1005",
                                                            "viewer_gids -"]


def test_lines_of_one_write_to_a_settings_file_all_apply(tree):
    """Two KEY VALUE lines in one write both take effect (each builds on the one before)."""
    write(tree, "/tenants/a/quota", b"tokens 5000\nwindow 2m\n")
    assert text(tree, "/tenants/a/quota").splitlines()[:2] == ["tokens 5000", "window 120s"]


def test_what_a_settings_file_shows_can_be_written_back(tree):
    """Writing a file's own text back changes nothing (writes mirror reads)."""
    write(tree, "/tenants/a/budget", b"tokens 900\noverdraw 5\n")
    before = tree.rt.kernel.tenancy.tenants["a"]
    write(tree, "/tenants/a/budget", text(tree, "/tenants/a/budget").encode())
    assert tree.rt.kernel.tenancy.tenants["a"] == before


def test_only_admins_change_tenants(tree):
    """A user's write to a tenant file or /ctl/tenants is EACCES, and audited as a denial."""
    assert refusal(lambda: write(tree, "/tenants/a/quota", b"tasks 1\n", caller=ALICE)).errno == errno.EACCES
    assert refusal(lambda: write(tree, "/ctl/tenants", b"add c\n", caller=ALICE)).errno == errno.EACCES
    assert [(row["uid"], row["result"]) for row in audit(tree)][-2:] == [("1001", "denied"), ("1001", "denied")]


def test_removing_a_tenant_with_live_tasks_is_busy(tree):
    """`remove` of a tenant with a live task fails EBUSY; once it exits, the tenant goes."""
    pid = submit(tree, ALICE)
    assert refusal(lambda: write(tree, "/ctl/tenants", b"remove a\n")).errno == errno.EBUSY
    write(tree, "/ctl/kill", f"{pid}\n".encode())
    write(tree, "/ctl/tenants", b"remove a\n")
    assert "a" not in [name for name, _ in resolve(tree, "/tenants").entries()]


# -- namespaces and roles -----------------------------------------------------------------------------

def test_a_user_submits_into_its_own_tenant_only(tree):
    """A user's task lands in its tenant; naming another tenant is ENOENT, as if it did not exist."""
    pid = submit(tree, ALICE)
    assert tree.rt.kernel.tasks[pid].tenant == "a"
    assert refusal(lambda: submit(tree, ALICE, b"name=x tenant=b\n")).errno == errno.ENOENT


def test_another_tenants_task_is_hidden_and_cannot_be_killed(tree):
    """Bob cannot see Alice's task directory (ENOENT) nor kill it by pid (ENOENT)."""
    pid = submit(tree, ALICE)
    task_dir = resolve(tree, f"/tasks/{pid}")
    assert refusal(lambda: BOB.may(task_dir, 0)).errno == errno.ENOENT
    assert refusal(lambda: write(tree, "/ctl/kill", f"{pid}\n".encode(), caller=BOB)).errno == errno.ENOENT
    assert not tree.rt.kernel.tasks[pid].done
    ALICE.may(task_dir, os.R_OK)


def test_a_task_file_node_kept_by_the_tree_follows_its_tenants_gid(tree):
    """A task file's node, kept once built, shows the tenant's new first gid after a members change."""
    pid = submit(tree, ALICE)
    inode = inode_of(pid, FILES.index("output") + 1)
    node = tree.node(inode)
    assert (node.tenant, tree.node(inode) is node) == ("a", True)
    write(tree, "/tenants/a/members", b"gids 4242\n")
    assert (tree.node(inode).owner, tree.node(inode).tenant) == ((1001, 4242), "a")


def test_a_viewer_reads_but_cannot_submit(tree):
    """A viewer may read its tenant's files but any write is EACCES."""
    submit(tree, ALICE)
    VIEWER.may(resolve(tree, "/tasks/1/prompt"), os.R_OK)
    assert refusal(lambda: VIEWER.may(resolve(tree, "/ctl/submit"), os.W_OK)).errno == errno.EACCES
    assert refusal(lambda: submit(tree, VIEWER)).errno == errno.EACCES


def test_the_whole_trace_and_the_bill_are_for_admins(tree):
    """trace/events, trace/audit and billing refuse a user's read with EACCES."""
    for path in ("/trace/events", "/trace/audit", "/billing"):
        assert refusal(lambda: ALICE.may(resolve(tree, path), os.R_OK)).errno == errno.EACCES
        ADMIN.may(resolve(tree, path), os.R_OK)


# -- the policy file ----------------------------------------------------------------------------------

def test_policy_file_appends_replaces_and_reads_back(tree):
    """`>>` appends, `>` replaces, a read shows the canonical rules."""
    write(tree, "/ctl/policy", b"DENY model=big\n# a comment\n\n")
    write(tree, "/ctl/policy", b"allow tenant=a\n")
    assert text(tree, "/ctl/policy") == "deny model=big\nallow tenant=a\n"
    write(tree, "/ctl/policy", b"limit tokens>100 max_tokens=100\n", truncating=True)
    assert text(tree, "/ctl/policy") == "limit tokens>100 max_tokens=100\n"


def test_truncating_without_writing_empties_the_policy(tree):
    """`: > ctl/policy` (an O_TRUNC open closed with nothing written) leaves no rules."""
    write(tree, "/ctl/policy", b"deny model=big\n")
    write(tree, "/ctl/policy", b"", truncating=True)
    assert text(tree, "/ctl/policy") == ""


def test_a_bad_rule_refuses_the_whole_write(tree):
    """A write with one malformed rule is EINVAL naming the line, and no rule of it is added."""
    error = refusal(lambda: write(tree, "/ctl/policy", b"deny model=big\ndeny tokens>=lots\n"))
    assert error.errno == errno.EINVAL and error.reason.startswith("line 2:")
    assert text(tree, "/ctl/policy") == ""


def test_a_deny_rule_refuses_a_submit_naming_the_rule(tree):
    """A user's submit matched by a deny rule fails EACCES with the rule's number and text."""
    write(tree, "/ctl/policy", b"deny tenant=a model=sim\n")
    error = refusal(lambda: submit(tree, ALICE))
    assert error.errno == errno.EACCES and error.reason == "denied by policy rule 1: deny tenant=a model=sim"
    assert audit(tree)[-1]["detail"] == error.reason


@pytest.mark.parametrize("name", [".", ".."])
def test_a_tenant_cannot_be_named_as_a_directory_entry(tmp_path, name):
    """`add .` and `add ..` are EINVAL on /ctl/tenants, as they are on /ctl/models."""
    with open_runtime(tmp_path) as runtime:
        refused = refusal(lambda: write(Tree(runtime), "/ctl/tenants", f"add {name}\n".encode()))
    assert refused.errno == errno.EINVAL


def test_a_refused_policy_rewrite_keeps_the_rules(tmp_path):
    """A `>` write of ctl/policy whose line is refused leaves the rules as they were."""
    with open_runtime(tmp_path) as runtime:
        tree = Tree(runtime)
        write(tree, "/ctl/policy", b"deny uid=65534\n", truncating=True)
        handle = resolve(tree, "/ctl/policy").open(ADMIN, writing=True, reading=False, truncating=True)
        assert refusal(lambda: handle.write(b"deny uidd=5\n")).errno == errno.EINVAL
        handle.release()
        assert text(tree, "/ctl/policy") == "deny uid=65534\n"


def test_after_a_refused_first_write_the_first_taken_write_of_a_truncating_open_replaces(tmp_path):
    """On one `>` descriptor, a refused line then a good one: the good one replaces the list (the refused
    write changed nothing, so it was not the first write)."""
    with open_runtime(tmp_path) as runtime:
        tree = Tree(runtime)
        write(tree, "/ctl/policy", b"deny uid=65534\n", truncating=True)
        handle = resolve(tree, "/ctl/policy").open(ADMIN, writing=True, reading=False, truncating=True)
        assert refusal(lambda: handle.write(b"deny uidd=5\n")).errno == errno.EINVAL
        handle.write(b"allow tenant=a\n")
        handle.release()
        assert text(tree, "/ctl/policy") == "allow tenant=a\n"


def old_rows(name: str) -> list:
    """A tenant `name` and two tasks of it, as the journal's rows were written before `.` and `..` were refused."""
    with attrs.validators.disabled():
        tenant = SetTenant(tenant=TenantConfig(name=name), what=f"add {name}", uid=0)
        return [(1, tenant), *((2 + n, Submit(spec=TaskSpec(name="job", tenant=name), uid=0)) for n in range(2))]


@pytest.mark.parametrize("name", [".", ".."])
def test_a_tenant_named_so_before_the_rule_is_kept_on_replay(tmp_path, name):
    """A journal written before `.` and `..` were refused replays with the tenant and every task of it: billed in
    /billing, left out of /tenants' listing, removable once its tasks end; a new `add` of it is still EINVAL."""
    with open_runtime(tmp_path) as runtime:
        runtime.journal.append(old_rows(name))
    with open_runtime(tmp_path) as runtime:
        runtime.recover()
        tree = Tree(runtime)
        pids = [task.pid for task in runtime.kernel.tasks.values() if task.tenant == name]
        assert runtime.quarantined == {} and len(pids) == 2
        assert f",{name},sim," in text(tree, "/billing")
        assert name not in [entry for entry, _ in resolve(tree, "/tenants").entries()]
        write(tree, "/ctl/kill", "".join(f"{pid}\n" for pid in pids).encode())
        write(tree, "/ctl/tenants", f"remove {name}\n".encode())
        assert name not in runtime.kernel.tenancy.tenants
        assert refusal(lambda: write(tree, "/ctl/tenants", f"add {name}\n".encode())).errno == errno.EINVAL


def test_a_config_naming_a_tenant_dotdot_is_refused(tmp_path):
    """A [[tenants]] table named `..` in the config file is new, so held to the rule: EINVAL, saying why."""
    path = tmp_path / "config.toml"
    path.write_text('[[tenants]]\nname = ".."\n')
    with pytest.raises(Invalid, match="cannot be a directory name"):
        config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
