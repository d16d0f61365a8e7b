"""The inodes of tenants' views of split files (nodes/views.py) are given back once unreachable and forgotten.

Tier 1: Views with a fake kernel (lookups counted and forgotten by hand) and fake open descriptors. Tier 2: the
FUSE adapter (fs.py) counts lookups and readdirplus entries and takes FORGETs. Tier 3-4: a real mount with a
small range, tenants added and removed in a loop by root while numeric uids walk to their views with `cat`,
`ls -l` and `stat`, and a descriptor held on an old view keeps reading its snapshot.
"""
import contextlib
import errno
import os
import shutil
import subprocess
import sys

import attrs
import pytest

from apeinxfs import health
from apeinxfs.kernel.errors import ApeinxError, NotFound
from apeinxfs.nodes import metrics, views
from apeinxfs.nodes.base import Show
from apeinxfs.health import Health
from daemon import APEINXFS, Daemon
from unixusers import shared_dir
from test_fs_ops import ROOT, add_tenant, ctx, fuse_errno, inode_of, listed, ops  # noqa: F401 (fixtures)

BASE = views.VIEW_BASE


class Kernel:
    """What Views asks about the world: which tenants and files exist, and which inodes are open."""

    def __init__(self, tenants=("a", "b", "c")):
        self.tenants, self.open, self.asked, self.files_asked = set(tenants), set(), 0, 0
        self.runqueue = Show(show=lambda view: f"{view} rows\n", tenanted=True, inode=7)
        self.files = {7: self.runqueue}

    def views(self, room: int) -> views.Views:
        """Views of room `room`; the state's version changes with the tenants alone (a node may go unlisted, or
        come back, with no event)."""
        return views.Views(self.file_at, self.exists, lambda: frozenset(self.tenants),
                           lambda inode: inode in self.open or None, base=BASE, limit=BASE + room)

    def exists(self, tenant: str) -> bool:
        self.asked += 1
        return tenant in self.tenants

    def file_at(self, inode: int) -> Show:
        self.files_asked += 1
        if inode not in self.files:
            raise NotFound(f"no file {inode}")
        return self.files[inode]


def seen(given: views.Views, kernel: Kernel, tenant: str, file: int = 7) -> int:
    """The inode of `tenant`'s view of the file at `file` (runqueue), as a lookup hands it to the kernel
    (counted)."""
    inode = given.node(kernel.files[file], tenant).inode
    given.looked_up(inode)
    given.check_invariants()
    return inode


def refused(call) -> int:
    with pytest.raises(ApeinxError) as caught:
        call()
    return caught.value.errno


def test_a_removed_tenants_view_is_given_again_once_the_kernel_forgot_it():
    """With room for one view, a's holds it while the kernel does, even with a removed; once forgotten, b gets it."""
    kernel = Kernel()
    given = kernel.views(1)
    inode = seen(given, kernel, "a")
    kernel.tenants.discard("a")
    assert refused(lambda: given.node(kernel.runqueue, "b")) == errno.ENOSPC
    given.forgotten(inode, 1)
    again = given.node(kernel.runqueue, "b")
    given.check_invariants()
    assert again.inode == inode and given.by_inode(inode).render() == b"b rows\n" and given.file_of(inode) == 7


def test_a_view_is_kept_until_every_lookup_is_forgotten():
    """Two lookups and one FORGET of one: the kernel still holds the view, so it is not given again."""
    kernel = Kernel()
    given = kernel.views(1)
    inode = seen(given, kernel, "a")
    given.looked_up(inode)
    kernel.tenants.discard("a")
    given.forgotten(inode, 1)
    assert refused(lambda: given.node(kernel.runqueue, "b")) == errno.ENOSPC
    given.forgotten(inode, 1)
    assert given.node(kernel.runqueue, "b").inode == inode


def test_an_open_view_is_not_given_again_though_forgotten():
    """A descriptor open on a removed tenant's view (its RELEASE after the FORGET) keeps the inode until closed."""
    kernel = Kernel()
    given = kernel.views(1)
    inode = seen(given, kernel, "a")
    kernel.open.add(inode)
    kernel.tenants.discard("a")
    given.forgotten(inode, 1)
    assert refused(lambda: given.node(kernel.runqueue, "b")) == errno.ENOSPC and given.owns(inode)
    kernel.open.discard(inode)
    assert given.node(kernel.runqueue, "b").inode == inode


def test_a_reachable_view_keeps_its_inode_though_the_kernel_forgot_it():
    """A view whose tenant still exists keeps its number after FORGET: the next walk gets the same inode."""
    kernel = Kernel()
    given = kernel.views(1)
    inode = seen(given, kernel, "a")
    given.forgotten(inode, 1)
    assert refused(lambda: given.node(kernel.runqueue, "b")) == errno.ENOSPC
    assert given.node(kernel.runqueue, "a").inode == inode


def test_a_view_of_a_file_gone_is_given_back():
    """A view of a file no longer there (a node no longer listed) is given back once forgotten, its tenant alive."""
    kernel = Kernel()
    given = kernel.views(1)
    inode = seen(given, kernel, "a")
    del kernel.files[7]
    given.forgotten(inode, 1)
    given.sweep()
    assert given.in_use() == 0 and not given.owns(inode)


def test_numbers_never_given_go_first_then_those_given_back():
    """Forgotten views of removed tenants wait while numbers never given last; then their inodes are given again."""
    kernel = Kernel(tenants=[f"t{n}" for n in range(6)])
    given = kernel.views(3)
    first, second = seen(given, kernel, "t0"), seen(given, kernel, "t1")
    for tenant, inode in (("t1", second), ("t0", first)):
        kernel.tenants.discard(tenant)
        given.forgotten(inode, 1)
    assert seen(given, kernel, "t2") == BASE + 2
    assert {seen(given, kernel, tenant) for tenant in ("t3", "t4")} == {first, second}
    assert refused(lambda: given.node(kernel.runqueue, "t5")) == errno.ENOSPC


def test_a_refused_view_asks_about_each_tenant_again_only_once_one_may_have_gone():
    """At a full range, a second refusal asks about no tenant; a tenant removed, or a FORGET, makes the next ask
    once about each tenant with views, and a close only about the view closed."""
    kernel = Kernel(tenants=["a", "b", "c", "d"])
    given = kernel.views(2)
    inode, other = seen(given, kernel, "a"), given.node(kernel.runqueue, "b").inode  # b's: not in the kernel
    assert refused(lambda: given.node(kernel.runqueue, "c")) == errno.ENOSPC
    kernel.asked = 0
    assert refused(lambda: given.node(kernel.runqueue, "c")) == errno.ENOSPC and kernel.asked == 0
    kernel.tenants.discard("d")
    assert refused(lambda: given.node(kernel.runqueue, "c")) == errno.ENOSPC and kernel.asked == 2
    kernel.open.add(inode)
    kernel.tenants.discard("a")
    given.forgotten(inode, 1)
    assert refused(lambda: given.node(kernel.runqueue, "c")) == errno.ENOSPC and kernel.asked == 4
    assert refused(lambda: given.node(kernel.runqueue, "c")) == errno.ENOSPC and kernel.asked == 4
    kernel.open.discard(inode)
    assert given.node(kernel.runqueue, "c").inode == inode and kernel.asked == 6  # a's again, and c's own
    given.check_invariants()
    assert given.owns(other)


def test_a_sweep_asks_once_per_tenant_and_per_file_and_reading_the_count_asks_nothing():
    """Six views of two tenants over three files: a sweep asks twice about a tenant and thrice about a file, and
    gives back the three of the tenant removed; the count of views in use, and /health, ask about none."""
    kernel = Kernel(tenants=["a", "b"])
    kernel.files = {inode: attrs.evolve(kernel.runqueue, inode=inode) for inode in (7, 8, 9)}
    given = kernel.views(6)
    held = {tenant: [seen(given, kernel, tenant, file) for file in (7, 8, 9)] for tenant in "ab"}
    kernel.tenants.discard("a")
    for inode in held["a"]:
        given.forgotten(inode, 1)
    kernel.asked = kernel.files_asked = 0
    assert given.in_use() == 6 and health.show(Health(), views=given) == "State:\tok\n"
    assert (kernel.asked, kernel.files_asked) == (0, 0)
    given.sweep()
    assert (kernel.asked, kernel.files_asked) == (2, 3) and given.in_use() == 3 and list(given.freed) == held["a"]
    given.check_invariants()


def test_a_view_looked_up_again_while_open_is_not_given_back_at_its_close():
    """Its node unlisted with no event, a view forgotten while open waits for its close; listed again and looked
    up before that close, it is kept at the close (the kernel counts that lookup)."""
    kernel = Kernel()
    given = kernel.views(1)
    inode = seen(given, kernel, "a")
    kernel.open.add(inode)
    del kernel.files[7]
    given.forgotten(inode, 1)
    assert refused(lambda: given.node(kernel.runqueue, "b")) == errno.ENOSPC
    kernel.files[7] = kernel.runqueue
    assert seen(given, kernel, "a") == inode
    kernel.open.discard(inode)
    assert refused(lambda: given.node(kernel.runqueue, "b")) == errno.ENOSPC and given.lookups == {inode: 1}


def test_a_forget_of_an_inode_of_no_view_changes_nothing():
    """FORGETs of boot-time or task inodes (never counted here) leave the views' counts alone."""
    kernel = Kernel()
    given = kernel.views(2)
    inode = seen(given, kernel, "a")
    given.looked_up(3)
    given.forgotten(3, 5)
    assert given.lookups == {inode: 1} and given.in_use() == 1


def test_health_warns_while_the_last_sweep_left_80_percent_of_the_views_in_use():
    """/health says Warning once a sweep (a new view past the range) left more than 80% in use, and what to do;
    not once a later sweep gave some back."""
    kernel = Kernel(tenants=[f"t{n}" for n in range(6)])
    given = kernel.views(5)
    held = [seen(given, kernel, f"t{n}") for n in range(5)]
    assert health.show(Health(), views=given) == "State:\tok\n"
    assert refused(lambda: given.node(kernel.runqueue, "t5")) == errno.ENOSPC
    warned = health.show(Health(), views=given)
    assert warned.startswith("State:\tok\nWarning:\tviews: 5 of 5 inodes") and "remove tenants" in warned
    kernel.tenants.discard("t4")
    given.forgotten(held[4], 1)
    assert seen(given, kernel, "t5") == held[4]
    assert health.show(Health(), views=given) == "State:\tok\n"


async def test_the_adapter_counts_lookups_and_readdir_entries_and_takes_forgets(ops, listed):  # noqa: F811
    """uid 1000's lookup and `ls` of sched/ in tenant a hand its views to the kernel; with a removed they are given
    again only after FORGET of every count, then to the uid's view in tenant b."""
    tree = ops.tree
    tree.views.limit = tree.views.base + 2
    await add_tenant(ops, b"add a weight=100 uids=1000")
    sched = await inode_of(ops, "/sched")
    runqueue = (await ops.lookup(sched, b"runqueue", ctx())).st_ino
    fh = await ops.opendir(sched, ctx())
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    listed_views = {inode for name, inode, _ in listed.entries if inode >= views.VIEW_BASE}
    assert runqueue in listed_views and len(listed_views) == 2 and tree.views.lookups[runqueue] == 2
    await add_tenant(ops, b"remove a")
    await add_tenant(ops, b"add b weight=100 uids=1000")
    assert await fuse_errno(lambda: ops.lookup(sched, b"runqueue", ctx())) == errno.ENOSPC
    await ops.forget([(inode, 1) for inode in listed_views] + [(runqueue, 1), (ROOT, 1)])
    assert (await ops.lookup(sched, b"runqueue", ctx())).st_ino in listed_views
    tree.views.check_invariants()


async def test_a_listing_that_fails_midway_counts_none_of_its_entries(ops, listed, monkeypatch):  # noqa: F811
    """A bug rendering sched/stat (for its size) fails uid 1000's `ls` of sched/ with EIO once runqueue's entry
    was added: the reply is an error, the kernel counts no entry of it, and neither do the views."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    sched = await inode_of(ops, "/sched")

    def broken(*args):
        raise RuntimeError("a bug in sched/stat")
    monkeypatch.setattr(ops.tree.root.children["sched"].children["stat"], "show", broken)
    fh = await ops.opendir(sched, ctx())
    assert await fuse_errno(lambda: ops.readdir(fh, 0, None)) == errno.EIO
    assert any(inode >= views.VIEW_BASE for _, inode, _ in listed.entries) and ops.tree.views.lookups == {}


async def test_a_forget_whose_first_inode_fails_takes_the_others_counts_off(ops, monkeypatch):  # noqa: F811
    """A bug taking the root's count off, first in a FORGET's batch, still lets uid 1000's runqueue view's count
    be taken off."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    runqueue = await inode_of(ops, "/sched/runqueue")
    forgotten = views.Views.forgotten

    def broken_for_root(given, inode, count):
        if inode == ROOT:
            raise RuntimeError("a bug in forgetting the root")
        forgotten(given, inode, count)
    monkeypatch.setattr(views.Views, "forgotten", broken_for_root)
    assert ops.tree.views.lookups == {runqueue: 1}
    await ops.forget([(ROOT, 1), (runqueue, 1)])
    assert ops.tree.views.lookups == {}


async def test_metrics_show_the_view_inodes_in_use_and_there_are(ops):  # noqa: F811
    """apeinx_view_inodes_used says how many of the range's inodes are given (uid 1000's runqueue view), and
    apeinx_view_inodes_max how many there are."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    await inode_of(ops, "/sched/runqueue")
    text = metrics.show(ops.rt, ops.tree.views)
    assert "\napeinx_view_inodes_used 1\n" in text
    assert f"\napeinx_view_inodes_max {views.VIEW_LIMIT - views.VIEW_BASE}\n" in text


# -- a real mount ---------------------------------------------------------------------------------------------

LAUNCH = ("import functools, sys; from apeinxfs import cli; from apeinxfs.nodes import tree, views; "
          "tree.Views = functools.partial(views.Views, limit=views.VIEW_BASE + int(sys.argv.pop(1))); "
          "sys.exit(cli.main())")
HELD_UID, WALKER_UID = 23201, 23202
HOLD = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
before = os.pread(fd, 1 << 16, 0)
print(os.fstat(fd).st_ino, flush=True)
sys.stdin.readline()
after = os.pread(fd, 1 << 16, 0)
print(after == before and os.fstat(fd).st_size == len(before) and b"held" in before, flush=True)
"""


class SmallRangeDaemon(Daemon):
    """A daemon whose Tree has room for `room` views (its Views built with that limit)."""

    def __init__(self, mountpoint, state_dir, room: int):
        super().__init__(mountpoint, state_dir)
        self.room = room

    def command(self) -> list[str]:
        return [sys.executable, "-c", LAUNCH, str(self.room)] + super().command()[len(APEINXFS):]


@contextlib.contextmanager
def small_range_mount(state_dir, room: int):
    """A mount with room for `room` views, in a directory every uid may traverse."""
    if os.geteuid() != 0:
        pytest.skip("tenants of other uids, on an allow_other mount, need root")
    top = shared_dir("apeinx-views-")
    try:
        with SmallRangeDaemon(os.path.join(top, "ai"), state_dir, room) as daemon:
            yield daemon
    finally:
        shutil.rmtree(top, ignore_errors=True)


def as_uid(uid: int, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def walk(uid: int, shell: str) -> str:
    """What `shell` prints, run as `uid`; it must succeed."""
    done = subprocess.run(as_uid(uid, ["sh", "-c", shell]), capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done
    return done.stdout


def tenants(daemon, line: str) -> None:
    with open(daemon.path("ctl", "tenants"), "w") as file:
        file.write(line + "\n")


@pytest.mark.mount
def test_tenants_added_and_removed_past_the_range_keep_their_views_and_a_held_one_its_snapshot(tmp_path):
    """With room for 6 views, 12 tenants come and go, each uid walking to its runqueue and stat (`ls -l`, `cat`,
    `stat`): each works, inodes are given again, never the one a descriptor of a removed tenant holds open, which
    reads its snapshot to the end."""
    with small_range_mount(tmp_path / "state", 6) as daemon:
        runqueue = daemon.path("sched", "runqueue")
        tenants(daemon, f"add held weight=100 uids={HELD_UID}")
        holder = subprocess.Popen(as_uid(HELD_UID, [sys.executable, "-c", HOLD, runqueue]), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            held = int(holder.stdout.readline())
            tenants(daemon, "remove held")
            seen = set()
            for n in range(12):
                tenants(daemon, f"add t{n} weight=100 uids={WALKER_UID}")
                out = walk(WALKER_UID, f"ls -l {os.path.dirname(runqueue)} >/dev/null && cat {runqueue} && "
                                       f"stat -c %i {runqueue}")
                assert f"tenant/t{n} " in out
                seen.add(int(out.split()[-1]))
                tenants(daemon, f"remove t{n}")
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline() == "True\n" and holder.wait(10) == 0
        finally:
            holder.kill()
            holder.wait()
    assert held not in seen and seen <= set(range(views.VIEW_BASE, views.VIEW_BASE + 6)) and len(seen) > 1


WATCH = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
watches = libc.inotify_init()
assert watches >= 0 and libc.inotify_add_watch(watches, os.fsencode(sys.argv[1]), 2) >= 0, ctypes.get_errno()
print(os.stat(sys.argv[1]).st_ino, flush=True)
sys.stdin.readline()
"""


@pytest.mark.mount
def test_a_view_the_kernel_still_holds_is_not_given_again(tmp_path):
    """With room for 3 views: an inotify watch on a's runqueue pins its inode in the kernel (no FORGET, whatever
    the kernel evicts, and no descriptor open) after a is removed; b's and c's stat take the other two (c's walk
    makes the kernel drop b's); once the range is spent, d's stat gets one the kernel let go, never a's."""
    with small_range_mount(tmp_path / "state", 3) as daemon:
        tenants(daemon, f"add a weight=100 uids={WALKER_UID}")
        watcher = subprocess.Popen(as_uid(WALKER_UID, [sys.executable, "-c", WATCH, daemon.path("sched", "runqueue")]),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            inodes = {"a": int(watcher.stdout.readline())}
            tenants(daemon, "remove a")
            for tenant in "bcd":
                tenants(daemon, f"add {tenant} weight=100 uids={WALKER_UID}")
                inodes[tenant] = int(walk(WALKER_UID, f"stat -c %i {daemon.path('sched', 'stat')}"))
                tenants(daemon, f"remove {tenant}")
        finally:
            watcher.kill()
            watcher.wait()
    assert len({inodes["a"], inodes["b"], inodes["c"]}) == 3 and inodes["d"] in {inodes["b"], inodes["c"]}


async def test_a_listing_opened_before_its_callers_tenant_went_lists_the_rest(ops, listed):  # noqa: F811
    """uid 1000 opens sched/ in tenant a, a is removed, then it lists: the rest is listed without a's views (gone),
    none of them handed to the kernel."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    sched = await inode_of(ops, "/sched")
    fh = await ops.opendir(sched, ctx())
    await add_tenant(ops, b"remove a")
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    assert [name for name, _, _ in listed.entries] == [b"policy"] and ops.tree.views.lookups == {}
    ops.tree.views.check_invariants()
