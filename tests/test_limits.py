"""Tiers 1-2: `[limits]`, what one user's writes can make the daemon hold: live tasks (the kernel's
admission), lines per write and unfinished-line bytes per uid (nodes/buffers.py), and ctl/policy appending
in place. The same through a real mount with shell tools is test_limits_mount.py."""
import errno

import attrs
import pytest

from apeinxfs import config as config_mod
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import KernelLimits
from apeinxfs.kernel.errors import ApeinxError, Invalid, TryAgain
from apeinxfs.kernel.events import Kill, SetRules, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import ONE_GPU, open_runtime
from test_kernel import kernel_config
from test_nodes import refusal, resolve, text
from test_rejects import rejects
from test_tenant_nodes import ADMIN

ALICE = Caller(uid=1001, gid=1001, pid=11, role="user", tenant="default")
BOB = Caller(uid=1002, gid=1002, pid=12, role="user", tenant="default")


def limited_kernel(live_tasks: int) -> Kernel:
    return Kernel(attrs.evolve(kernel_config(), limits=KernelLimits(live_tasks=live_tasks)))


def admit_and_apply(kernel: Kernel, batch=None, now_us: int = 0) -> int:
    event = kernel.admit(Submit(spec=TaskSpec(name="job", max_tokens=4), uid=1000), now_us, batch)
    return kernel.apply(event, now_us)


# -- tier 1: the kernel ---------------------------------------------------------------------------------

def test_a_submit_past_live_tasks_is_eagain_naming_the_key():
    """With live_tasks live, a submit is EAGAIN naming limits.live_tasks; once one exits, one more is taken."""
    kernel = limited_kernel(2)
    first = admit_and_apply(kernel)
    admit_and_apply(kernel)
    with pytest.raises(TryAgain) as refused:
        admit_and_apply(kernel)
    assert refused.value.errno == errno.EAGAIN and "limits.live_tasks" in refused.value.reason
    kernel.apply(kernel.admit(Kill(pid=first, uid=0), 0), 0)
    assert admit_and_apply(kernel) > first


def test_the_lines_of_one_write_count_toward_live_tasks():
    """A write's earlier lines (admit's batch) count: the third line of a write is refused at live_tasks 2."""
    kernel, batch = limited_kernel(2), {}
    for _ in range(2):
        kernel.admit(Submit(spec=TaskSpec(name="job", max_tokens=4), uid=1000), 0, batch)
    with pytest.raises(TryAgain):
        kernel.admit(Submit(spec=TaskSpec(name="job", max_tokens=4), uid=1000), 0, batch)


def test_appended_rules_extend_the_list_in_place():
    """A rule appended to ctl/policy extends the rule list in place (no copy of it per line) and keeps order."""
    kernel = Kernel(kernel_config())
    kernel.apply(SetRules(rules=("deny model=a",), replace=True), 0)
    rules = kernel.tenancy.rules
    kernel.apply(SetRules(rules=("deny model=b",), replace=False), 0)
    assert kernel.tenancy.rules is rules and [r.text for r in rules] == ["deny model=a", "deny model=b"]


@pytest.mark.parametrize("toml, words", [
    ("[limits]\nlive_tasks = 0\n", "limits.live_tasks"),
    ("[limits]\nwrite_lines = 'many'\n", "limits.write_lines"),
    ("[limits]\npending_bytes = -1\n", "limits.pending_bytes"),
    ("[limits]\nopen_files = 3\n", "limits.open_files"),
    ("[limits]\nopen_bytes = 0\n", "limits.open_bytes"),
], ids=["zero", "not-a-number", "negative", "unknown", "no-open-bytes"])
def test_a_bad_limits_key_is_refused_at_start_naming_it(tmp_path, toml, words):
    """A [limits] value out of range, or an unknown key, is refused naming the key."""
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(Invalid) as refused:
        config_mod.load(str(tmp_path / "c.toml"), str(tmp_path), use_nvml=False)
    assert words in refused.value.reason


def test_limits_keys_reach_the_kernel_and_the_daemon(tmp_path):
    """[limits] live_tasks goes to the kernel's config (journaled), write_lines, pending_bytes and open_bytes to
    the daemon's."""
    (tmp_path / "c.toml").write_text("[limits]\nlive_tasks = 7\nwrite_lines = 8\npending_bytes = 9\nopen_bytes = 10\n")
    config = config_mod.load(str(tmp_path / "c.toml"), str(tmp_path), use_nvml=False)
    assert (config.kernel.limits.live_tasks, config.limits.write_lines, config.limits.pending_bytes,
            config.limits.open_bytes) == (7, 8, 9, 10)


# -- tier 2: the ctl files, without FUSE ----------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path, ONE_GPU + "[limits]\nwrite_lines = 3\npending_bytes = 100\n") as runtime:
        yield Tree(runtime)


def opened(tree, caller, path="/ctl/submit"):
    """A descriptor of `path` opened by `caller` as fs.py opens it."""
    return resolve(tree, path).open(caller, writing=True, reading=True)


def test_a_write_over_write_lines_is_e2big_and_runs_none_of_its_lines(tree):
    """4 lines on a write_lines = 3 daemon: E2BIG saying 'split it', no task made; 3 lines run."""
    handle = opened(tree, ALICE)
    error = refusal(lambda: handle.write(b"job 5 1\n" * 4))
    assert error.errno == errno.E2BIG and b"at most 3 lines (limits.write_lines), not 4: split it" in handle.reply
    assert len(tree.rt.kernel.tasks) == 0
    handle.write(b"job 5 1\n" * 3)
    assert len(tree.rt.kernel.tasks) == 3


def test_a_uids_unfinished_lines_are_bounded_across_its_descriptors(tree):
    """Two of a uid's descriptors holding 60 and 50 unfinished bytes pass pending_bytes 100: ENOBUFS, and the
    refused descriptor holds nothing; another uid is unaffected; a closed descriptor frees its bytes."""
    first, second = opened(tree, ALICE), opened(tree, ALICE)
    first.write(b"x" * 60)
    error = refusal(lambda: second.write(b"y" * 50))
    assert error.errno == errno.ENOBUFS and b"limits.pending_bytes (100)" in second.reply
    assert tree.rt.buffers.held == {ALICE.uid: 60}
    opened(tree, BOB).write(b"z" * 90)
    with pytest.raises(ApeinxError):
        first.release()  # its unfinished line runs at close: "xxx..." is no submit line
    second.write(b"y" * 50)
    assert tree.rt.buffers.held == {ALICE.uid: 50, BOB.uid: 90}


def test_a_finished_line_frees_its_bytes(tree):
    """An unfinished line's bytes count until its newline comes, then no longer."""
    handle = opened(tree, ALICE)
    handle.write(b"job 5")
    assert tree.rt.buffers.held == {ALICE.uid: 5}
    handle.write(b" 1\n")
    assert tree.rt.buffers.held == {} and len(tree.rt.kernel.tasks) == 1


def test_a_policy_rewrite_refused_whole_by_a_limit_keeps_the_rules(tree):
    """A `>` write of ctl/policy over write_lines (E2BIG, refused before any line is read) leaves the rules as
    they were at close, as any refused write does, where the close emptied the list."""
    rules = opened(tree, ADMIN, "/ctl/policy")
    rules.write(b"deny model=big\n")
    rules.release()
    truncating = resolve(tree, "/ctl/policy").open(ADMIN, writing=True, reading=False, truncating=True)
    with pytest.raises(ApeinxError) as refused:
        truncating.write(b"allow tenant=a\n" * 4)
    truncating.release()
    assert refused.value.errno == errno.E2BIG and text(tree, "/ctl/policy") == "deny model=big\n"


@pytest.mark.parametrize("path", ["/ctl/submit", "/ctl/kill", "/ctl/tenants", "/ctl/models", "/ctl/policy",
                                  "/sched/policy", "/tenants/default/weight", "/tasks/1/ctl"])
def test_every_ctl_file_opens_descriptors_with_the_daemons_limits_and_journals_their_refusal(tree, path):
    """A descriptor of any ctl file, as its node opens it (no opener adds anything), refuses a write over
    write_lines with E2BIG, and the trace keeps one reject line naming the file and the limit."""
    opened(tree, ALICE).write(b"job 5 1\n")  # task 1, for /tasks/1/ctl
    handle = resolve(tree, path).open(ADMIN, writing=True, reading=False)
    assert refusal(lambda: handle.write(b"x\n" * 4)).errno == errno.E2BIG
    assert rejects(tree.rt) == [f"{path}: a write holds at most 3 lines (limits.write_lines), not 4: split it (uid 0)"]


def test_held_bytes_are_the_open_descriptors_unfinished_lines_on_every_path(tree):
    """After a partial write, a write refused by a line, one refused by each limit, and a close mid-line whose
    line runs or is refused, the daemon counts for the uid exactly what its open descriptors hold unfinished."""
    first, second, third = opened(tree, ALICE), opened(tree, ALICE), opened(tree, ALICE)
    first.write(b"job 5")
    refusal(lambda: second.write(b"name=x max_tokens=-1\npart"))
    assert refusal(lambda: second.write(b"y" * 96)).errno == errno.ENOBUFS
    assert tree.rt.buffers.held == {ALICE.uid: 5} and not second.pending
    third.write(b"job 5 1")
    assert tree.rt.buffers.held == {ALICE.uid: 12}
    third.release()
    assert tree.rt.buffers.held == {ALICE.uid: 5} and len(tree.rt.kernel.tasks) == 1
    refusal(lambda: first.write(b"\n" * 4))
    second.write(b"nonsense")
    with pytest.raises(ApeinxError):
        second.release()
    assert tree.rt.buffers.held == {} and not first.pending
