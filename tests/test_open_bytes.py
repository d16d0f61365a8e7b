"""What open descriptors make the daemon hold: shared snapshots, the per-uid `limits.open_bytes`, and directory
listings by offset (nodes/openfiles.py, Dir.entries_from, fs.py opendir/readdir).

Tier 1-2 on a Runtime's node tree (no FUSE), tier 4 on a real mount with shell tools for the refusal.
"""
import csv
import errno
import os
import subprocess

import pyfuse3
import pytest
import trio

from apeinxfs.fs import Operations
from apeinxfs.kernel.access import Identity
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Kill
from apeinxfs.nodes.openfiles import DESCRIPTOR_BYTES, RenderCache
from apeinxfs.nodes.tree import Tree
from daemon import Daemon, sim_config
from test_fs_ops import ROOT_CTX, fuse_errno, inode_of, open_path
from test_journal_runtime import ONE_GPU, open_runtime, submit
from test_nodes import resolve
from test_tenant_nodes import write

ADMIN = Identity(uid=0, role="admin", tenant=None)
PROMPT = "p" * 1000
# two distinct prompts and three descriptors fit (2 x 1,001 + 3 x 256), a third distinct prompt does not
LIMITS = "[limits]\nopen_bytes = 3000\n[retention]\ntasks = 0\n"


@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path, ONE_GPU + LIMITS) as runtime:
        yield Tree(runtime)


def prompt_of(tree, pid: int):
    return resolve(tree, f"/tasks/{pid}/prompt")


def test_opens_of_one_text_share_one_object_across_events_and_files(tree):
    """Two opens of a prompt with an event between, and an open of another task's equal prompt, read one object."""
    first, second = submit(tree.rt, prompt=PROMPT), submit(tree.rt, prompt=PROMPT)
    held = tree.open_snapshot(prompt_of(tree, first), 1000)
    submit(tree.rt, prompt="other")
    again = tree.open_snapshot(prompt_of(tree, first), 1000)
    twin = tree.open_snapshot(prompt_of(tree, second), 1001)
    assert again is held and twin is held and PROMPT.encode() in held
    tree.snapshots.check_invariants()


def test_a_uid_past_open_bytes_is_refused_enomem_until_it_closes_one(tree):
    """Uid 1000 holds two distinct snapshots of about 1,000 bytes by three descriptors (another of them costs only
    its descriptor's bytes); a third is ENOMEM naming the key, another uid's is not, and once the first prompt's
    descriptors close the third opens."""
    pids = [submit(tree.rt, prompt=PROMPT + str(n)) for n in range(3)]
    held = [tree.open_snapshot(prompt_of(tree, pid), 1000) for pid in (pids[0], pids[1], pids[0])]
    with pytest.raises(ApeinxError) as refused:
        tree.open_snapshot(prompt_of(tree, pids[2]), 1000)
    assert refused.value.errno == errno.ENOMEM and "limits.open_bytes (3000)" in refused.value.reason
    tree.open_snapshot(prompt_of(tree, pids[2]), 1001)
    for snapshot in held[::2]:
        tree.close_snapshot(prompt_of(tree, pids[0]).inode, 1000, snapshot)
    tree.open_snapshot(prompt_of(tree, pids[2]), 1000)
    tree.snapshots.check_invariants()
    one = DESCRIPTOR_BYTES + len(held[1])
    assert tree.snapshots.charged == {1000: 2 * one, 1001: one}


def test_closing_every_snapshot_forgets_the_texts_and_the_uids(tree):
    """Once every descriptor closed, nothing is held: no text, no inode's size, no uid's charge."""
    node = prompt_of(tree, submit(tree.rt, prompt=PROMPT))
    held = [tree.open_snapshot(node, uid) for uid in (1000, 1000, 1001)]
    for uid, snapshot in zip((1000, 1000, 1001), held):
        tree.close_snapshot(node.inode, uid, snapshot)
    snapshots = tree.snapshots
    assert (snapshots.texts, snapshots.pinned, snapshots.held, snapshots.descriptors, snapshots.charged) == ({},) * 5


def test_the_render_cache_forgets_its_oldest_texts_past_its_bytes():
    """Texts of 40 bytes into a cache of 100: it keeps the newest two, a text rendered again replaces its older one
    in the count, and a text larger than the whole cache is not kept."""
    cache = RenderCache(max_bytes=100)
    for inode in range(1, 5):
        cache.put(inode, 1, b"x" * 40)
    assert list(cache.texts) == [3, 4] and cache.size == 80 and cache.get(3, 1) == b"x" * 40
    cache.put(3, 2, b"y" * 10)
    assert cache.get(3, 1) is None and cache.get(3, 2) == b"y" * 10 and cache.size == 50
    cache.put(5, 2, b"z" * 101)
    assert cache.texts == {} and cache.size == 0


def test_lookups_of_many_large_prompts_keep_the_render_cache_within_its_bytes(tree):
    """getattr of 12 prompts of 1 MiB each fills the render cache (of 8 MiB here) only up to its bound."""
    tree._rendered.max_bytes = 8 << 20
    for n in range(12):
        assert tree.size(prompt_of(tree, submit(tree.rt, prompt=f"{n:02}" + "q" * ((1 << 20) - 2)))) >= 1 << 20
    assert 7 << 20 < tree._rendered.size <= 8 << 20


def listed(tree, path: str, cookie: int, count: int) -> tuple[list[str], int]:
    """(The names of up to `count` entries of `path` from readdir offset `cookie`, the offset after them)."""
    names = []
    for cookie, name, _ in tree.entries_from(resolve(tree, path), ADMIN, cookie):
        names.append(name)
        if len(names) == count:
            break
    return names, cookie


@pytest.mark.parametrize("path", ["/tasks", "/replay"])
def test_a_listing_while_tasks_come_and_go_names_each_task_that_stayed_once(tree, path):
    """Listed 3 entries at a time while tasks are submitted and reaped between the reads: no name twice, every
    task that existed throughout listed, none reaped before its turn."""
    pids = [submit(tree.rt) for _ in range(8)]
    seen, cookie = listed(tree, path, 0, 3)
    tree.rt.commit([Kill(pid=pids[1]), Kill(pid=pids[5])])  # retention.tasks = 0: reaped at once
    submit(tree.rt)
    more, cookie = listed(tree, path, cookie, 3)
    submit(tree.rt)
    rest, _ = listed(tree, path, cookie, 100)
    names = seen + more + rest
    assert len(names) == len(set(names)) and str(pids[5]) not in names
    assert {str(pid) for pid in pids} - {str(pids[1]), str(pids[5])} <= set(names)


def test_a_fixed_directory_lists_from_its_offset(tree):
    """Read two entries at a time, /ctl lists each of its files once, in order."""
    names, cookie, part = [], 0, [None]
    while part:
        part, cookie = listed(tree, "/ctl", cookie, 2)
        names += part
    assert names == list(resolve(tree, "/ctl").children)


def test_a_tenants_listing_while_an_earlier_tenant_goes_names_each_that_stayed_once(tree):
    """/tenants listed two entries (default, t0), then t0 removed and another added: the rest of the listing names
    every tenant that stayed, none twice, and the new one after them (offsets are the names' numbers)."""
    write(tree, "/ctl/tenants", b"".join(b"add t%d\n" % n for n in range(4)))
    seen, cookie = listed(tree, "/tenants", 0, 2)
    write(tree, "/ctl/tenants", b"remove t0\nadd late\n")
    rest, _ = listed(tree, "/tenants", cookie, 100)
    assert (seen, rest) == (["default", "t0"], ["t1", "t2", "t3", "late"])


def test_a_tenant_removed_and_added_again_is_listed_at_its_first_place(tree):
    """t0, listed, then removed and added again after t2 and t3 is listed before them, at the number it was first
    given; tenants first seen by one listing are numbered in the order the kernel holds them (t3 before t2)."""
    write(tree, "/ctl/tenants", b"add t0\nadd t1\n")
    assert listed(tree, "/tenants", 0, 100) == (["default", "t0", "t1"], 3)
    write(tree, "/ctl/tenants", b"remove t0\n")
    write(tree, "/ctl/tenants", b"add t3\nadd t2\nadd t0\n")
    assert listed(tree, "/tenants", 0, 100) == (["default", "t0", "t1", "t3", "t2"], 5)
    assert listed(tree, "/tenants", 2, 100) == (["t1", "t3", "t2"], 5)


@pytest.mark.mount
def test_cat_past_open_bytes_fails_enomem_while_a_shell_holds_another_prompt_open(tmp_path):
    """A shell holding two prompts open (`exec 3<`) cannot `cat` a third distinct one (Cannot allocate memory),
    can `cat` an equal one, and after closing one can `cat` the third; the refusal leaves one `reject` line."""
    with Daemon(tmp_path / "ai", tmp_path / "state", sim_config(100) + LIMITS) as daemon:
        pids = [daemon.submit(f"name=p{n} max_tokens=1000 prompt={PROMPT}{n}") for n in range(3)]
        first, second, third = (daemon.path("tasks", str(pid), "prompt") for pid in pids)
        script = (f'exec 3< {first} 4< {second}; cat {third} >/dev/null; echo "refused $?"; cat {first} >/dev/null '
                  f'&& echo shared; exec 3<&-; cat {third} | head -c 6; echo')
        shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert shell.stdout.splitlines() == ["refused 1", "shared", PROMPT[:6]], shell
        assert "Cannot allocate memory" in shell.stderr, shell.stderr
        with open(daemon.path("trace", "events")) as trace:
            refusals = [row for row in csv.DictReader(trace) if row["type"] == "reject" and "open_bytes" in row["detail"]]
        assert len(refusals) == 1, daemon.log_tail()


@pytest.mark.mount
def test_descriptors_of_directories_and_ctl_files_count_against_open_bytes(tmp_path):
    """With room for 11 descriptors (open_bytes 3000), a uid holding 6 of tasks/ and 5 of ctl/submit is refused
    ENOMEM at its next open of either, each leaving a `reject` line at its path, and opens again once it closed one."""
    with Daemon(tmp_path / "ai", tmp_path / "state", sim_config(100) + LIMITS) as daemon:
        tasks, submit_file = daemon.path("tasks"), daemon.path("ctl", "submit")
        held = [os.open(tasks, os.O_RDONLY | os.O_DIRECTORY) for _ in range(6)]
        held += [os.open(submit_file, os.O_WRONLY) for _ in range(5)]
        try:
            for path, flags in ((tasks, os.O_RDONLY | os.O_DIRECTORY), (submit_file, os.O_WRONLY)):
                with pytest.raises(OSError) as refused:
                    os.close(os.open(path, flags))
                assert refused.value.errno == errno.ENOMEM
            os.close(held.pop())
            os.close(os.open(tasks, os.O_RDONLY | os.O_DIRECTORY))
        finally:
            for fd in held:
                os.close(fd)
        with open(daemon.path("trace", "events")) as trace:
            refused_at = [row["detail"].split(":")[0] for row in csv.DictReader(trace)
                          if row["type"] == "reject" and "open_bytes" in row["detail"]]
        assert refused_at == ["/tasks", "/ctl/submit"], daemon.log_tail()


@pytest.mark.mount
def test_a_directory_read_through_the_mount_while_tasks_come_and_go_names_each_that_stayed_once(tmp_path):
    """os.scandir of tasks/ (several getdents calls) paused after 100 entries while tasks are submitted and reaped:
    every pid once, every task that stayed listed, in pid order; `ls` then lists exactly the tasks left."""
    with Daemon(tmp_path / "ai", tmp_path / "state", sim_config(100) + LIMITS) as daemon:
        with open(daemon.path("ctl", "submit"), "wb") as ctl:
            ctl.write(b"name=d max_tokens=1000\n" * 600)
        listing = os.scandir(daemon.path("tasks"))
        names = [entry.name for _, entry in zip(range(100), listing)]
        with open(daemon.path("ctl", "kill"), "w") as kill:
            kill.write("50\n450\n")  # retention.tasks = 0: reaped at once
        daemon.submit("name=late max_tokens=1000")
        names += [entry.name for entry in listing]
        listing.close()
        pids = [int(name) for name in names]
        assert pids == sorted(set(pids)) and set(range(1, 601)) - {50, 450} <= set(pids) and 450 not in pids
        shell = subprocess.run(["ls", daemon.path("tasks")], capture_output=True, text=True, check=True)
        assert sorted(map(int, shell.stdout.split())) == sorted(set(range(1, 602)) - {50, 450})


def test_an_open_of_ctl_policy_refused_enomem_leaves_the_rules(tmp_path):
    """An admin past open_bytes (11 directory descriptors) opening ctl/policy with O_TRUNC (`: > ctl/policy`) is
    refused ENOMEM and the rules stay: a refused open is no last close that empties them."""
    with open_runtime(tmp_path, ONE_GPU + LIMITS) as runtime:
        tree = Tree(runtime)
        write(tree, "/ctl/policy", b"limit tenant=default max_prio=3\n")
        ops = Operations(tree)

        async def refused_open() -> int:
            held = [await ops.opendir(pyfuse3.ROOT_INODE, ROOT_CTX) for _ in range(11)]
            policy = await inode_of(ops, "/ctl/policy", ROOT_CTX)
            errno_seen = await fuse_errno(lambda: ops.open(policy, os.O_WRONLY | os.O_TRUNC, ROOT_CTX))
            for fh in held:
                await ops.releasedir(fh)
            return errno_seen
        assert trio.run(refused_open) == errno.ENOMEM
        assert [rule.text for rule in runtime.kernel.tenancy.rules] == ["limit tenant=default max_prio=3"]


def test_a_last_line_refused_at_close_still_frees_its_descriptors_bytes(tmp_path):
    """A descriptor of ctl/submit closed on an unterminated line that is refused (the refusal journaled at its last
    close) charges its uid nothing more once closed: 20 such closes leave uid 1000 room to open."""
    with open_runtime(tmp_path, ONE_GPU + LIMITS) as runtime:
        ops = Operations(Tree(runtime))

        async def refused_closes() -> None:
            for _ in range(20):
                fh = await open_path(ops, "/ctl/submit", os.O_WRONLY)
                await ops.write(fh, 0, b"no such line")
                await fuse_errno(lambda: ops.release(fh))
            await ops.release(await open_path(ops, "/ctl/submit", os.O_WRONLY))
        trio.run(refused_closes)
        assert ops.tree.snapshots.charged == {} and ops.charged == {}
