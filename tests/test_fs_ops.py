"""Tier 2: the pyfuse3 adapter (fs.py) called directly, with a stand-in ctx and no /dev/fuse.

Checks the request handlers map onto the tree, that refusals leave as FUSEError with
the man page's errno and that a bug becomes EIO instead of an escaping exception. A real mount
and real shell tools are tiers 3-4.
"""
import errno
import os
import stat
import types

import pyfuse3
import pytest
import trio

from apeinxfs import fs
from apeinxfs.fs import Operations
from apeinxfs.nodes import views
from apeinxfs.nodes.readme import TEXT as README
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime, submit

ROOT = 1
ROOT_CTX = types.SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
NO_SUCH_PID = (1 << 22) + 1  # above the largest pid_max: /proc has no such process


def ctx(pid: int | None = None):
    """What pyfuse3 passes as ctx: the caller's uid, gid, pid and umask."""
    return types.SimpleNamespace(uid=1000, gid=1000, pid=os.getpid() if pid is None else pid, umask=0o022)


@pytest.fixture
def ops(tmp_path):
    with open_runtime(tmp_path) as runtime:
        yield Operations(Tree(runtime))


async def inode_of(ops, path: str, caller=None) -> int:
    inode = ROOT
    for name in filter(None, path.split("/")):
        inode = (await ops.lookup(inode, name.encode(), caller or ctx())).st_ino
    return inode


async def open_path(ops, path: str, flags=os.O_RDONLY, caller=None) -> int:
    info = await ops.open(await inode_of(ops, path, caller), flags, caller or ctx())
    assert info.direct_io and not info.keep_cache
    return info.fh


async def read_all(ops, fh: int) -> bytes:
    data, chunk = b"", b"x"
    while chunk:
        chunk = await ops.read(fh, len(data), 7)
        data += chunk
    return data


async def fuse_errno(call) -> int:
    """The errno of the FUSEError that awaiting `call()` raises."""
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await call()
    return caught.value.errno


# -- attributes -------------------------------------------------------------------------------------


async def test_lookup_and_getattr(ops):
    """lookup and getattr agree on a file's inode, mode and rendered size."""
    entry = await ops.lookup(ROOT, b"README", ctx())
    again = await ops.getattr(entry.st_ino, ctx())
    assert stat.S_ISREG(entry.st_mode) and entry.st_mode & 0o777 == 0o444
    assert entry.st_size == again.st_size == len(README.encode())
    assert entry.attr_timeout <= 1 and entry.st_ino == again.st_ino


async def test_boot_time_names_stay_cached_and_task_files_do_not(ops):
    """Boot-time names are cached long, with their attributes where those never change (/ctl, /ctl/submit), a
    rendered file's size never; a task's names only briefly; sched/runqueue's, each caller's view, never."""
    ctl = await ops.lookup(ROOT, b"ctl", ctx())
    ctl_submit = await ops.lookup(ctl.st_ino, b"submit", ctx())
    assert ctl.entry_timeout == ctl.attr_timeout == fs.STATIC_S > 1
    assert ctl_submit.entry_timeout == ctl_submit.attr_timeout == fs.STATIC_S
    readme = await ops.lookup(ROOT, b"README", ctx())
    assert (readme.entry_timeout, readme.attr_timeout) == (fs.STATIC_S, 0)
    pid = submit(ops.rt)
    task = await ops.lookup(await inode_of(ops, "/tasks"), str(pid).encode(), ctx())
    assert task.entry_timeout == task.attr_timeout == fs.ATTR_TIMEOUT_S
    sched = await inode_of(ops, "/sched")
    own_view, every = await ops.lookup(sched, b"runqueue", ctx()), await ops.lookup(sched, b"runqueue", ROOT_CTX)
    assert own_view.st_ino >= views.VIEW_BASE and own_view.entry_timeout == every.entry_timeout == 0


async def test_a_task_whose_uid_is_no_id_is_shown_owned_by_the_overflow_uid(ops, caplog):
    """A task holding a uid no uid_t holds (a bug, or a state from before ids were bounded) is looked up owned
    by 65534, logged, rather than failing every `ls` of /tasks with EIO."""
    pid = submit(ops.rt)
    ops.rt.kernel.tasks[pid].uid = 2 ** 64
    task = await ops.lookup(await inode_of(ops, "/tasks"), str(pid).encode(), ctx())
    assert (task.st_uid, task.st_gid) == (65534, os.getgid()) and "is no uid and gid" in caplog.text


async def test_directory_attributes(ops):
    """Directories are S_IFDIR 0555 with two links."""
    entry = await ops.getattr(await inode_of(ops, "/tasks"), ctx())
    assert stat.S_ISDIR(entry.st_mode) and entry.st_nlink == 2


async def test_log_size_is_bytes_so_far(ops):
    """trace/events reports its current length, so tail -f sees it grow."""
    inode = await inode_of(ops, "/trace/events")
    before = (await ops.getattr(inode, ctx())).st_size
    submit(ops.rt)
    assert (await ops.getattr(inode, ctx())).st_size == len(ops.rt.kernel.trace.buffer) > before


@pytest.mark.parametrize("parent,name", [("/", b"nope"), ("/tasks", b"1"), ("/tasks", b"\xff"), ("/README", b"x")])
async def test_lookup_unknown_is_enoent(ops, parent, name):
    """Unknown names, tasks that do not exist and non-UTF-8 names are ENOENT."""
    parent_inode = await inode_of(ops, parent)
    assert await fuse_errno(lambda: ops.lookup(parent_inode, name, ctx())) == errno.ENOENT


async def test_getattr_of_gone_inode_is_enoent(ops):
    """A task inode whose pid never existed is ENOENT."""
    assert await fuse_errno(lambda: ops.getattr((1 << 20) + 999 * 16, ctx())) == errno.ENOENT


async def test_statfs(ops):
    """statfs answers (df works) with a 4 KiB block size."""
    assert (await ops.statfs(ctx())).f_bsize == 4096


# -- directories -----------------------------------------------------------------------------------


@pytest.fixture
def listed(monkeypatch):
    """Collects what readdir replies; `room` entries fit before the buffer is full."""
    got = types.SimpleNamespace(entries=[], room=1000)

    def reply(token, name, attr, next_id):
        if got.room == 0:
            return False
        got.room -= 1
        got.entries.append((name, attr.st_ino, next_id))
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return got


async def test_readdir_lists_the_root(ops, listed):
    """readdir of / lists the man page's top entries with increasing next_ids."""
    fh = await ops.opendir(ROOT, ctx())
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    assert [n for n, _, _ in listed.entries] == [b"README", b"ctl", b"tasks", b"models", b"memory", b"gpus",
                                                 b"trace", b"replay", b"sched", b"tenants", b"billing",
                                                 b"metrics", b"health", b"nodes", b"cluster"]
    assert [i for _, _, i in listed.entries] == list(range(1, 16))


async def test_readdir_resumes_where_the_buffer_filled(ops, listed):
    """When the reply buffer fills, a second readdir from the last next_id gives the rest."""
    for _ in range(3):
        submit(ops.rt)
    fh = await ops.opendir(await inode_of(ops, "/tasks"), ctx())
    listed.room = 2
    await ops.readdir(fh, 0, None)
    listed.room = 1000
    await ops.readdir(fh, listed.entries[-1][2], None)
    assert [n for n, _, _ in listed.entries] == [b"1", b"2", b"3"]


async def test_opendir_of_a_file_is_enotdir(ops):
    """opendir on a regular file is ENOTDIR."""
    inode = await inode_of(ops, "/README")
    assert await fuse_errno(lambda: ops.opendir(inode, ctx())) == errno.ENOTDIR


# -- callers ----------------------------------------------------------------------------------------


async def add_tenant(ops, line: bytes) -> None:
    """Write one line (`add ...`, `remove ...`) to /ctl/tenants as root."""
    fh = await open_path(ops, "/ctl/tenants", os.O_WRONLY, caller=ROOT_CTX)
    await ops.write(fh, 0, line + b"\n")
    await ops.release(fh)


async def test_caller_follows_a_tenant_change(ops):
    """A kept caller is not reused once the kernel changes: a uid just added to a tenant is in it at once."""
    assert (ops.caller(ctx()).role, ops.caller(ctx()).tenant) == ("user", "default")
    await add_tenant(ops, b"add a weight=100 viewer_uids=1000")
    assert (ops.caller(ctx()).role, ops.caller(ctx()).tenant) == ("viewer", "a")


async def test_caller_rereads_groups_where_gids_count(ops, monkeypatch):
    """Where a gid grants a role, every request reads the caller's supplementary groups again."""
    groups = {4242}
    monkeypatch.setattr(fs, "supplementary_groups", lambda pid: set(groups))
    await add_tenant(ops, b"add g weight=100 gids=4242")
    assert ops.caller(ctx()).tenant == "g"
    groups.clear()
    assert ops.caller(ctx()).tenant == "default"


# -- files ------------------------------------------------------------------------------------------


async def test_open_read_release(ops):
    """README reads whole in small pieces at increasing offsets."""
    fh = await open_path(ops, "/README")
    assert await read_all(ops, fh) == README.encode()
    await ops.release(fh)
    assert fh not in ops.handles


async def test_each_view_of_the_runqueue_has_its_own_inode_and_size(ops):
    """An admin and a user of tenant a reach sched/runqueue at different inodes: the user's reads a's rows, its
    own agent's included, and getattr of each inode gives that view's size, open or not."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    await ops.write(fh, 0, b"job 10 5\n")
    await ops.release(fh)
    admin_inode, user_inode = await inode_of(ops, "/sched/runqueue", ROOT_CTX), await inode_of(ops, "/sched/runqueue")
    assert admin_inode != user_inode
    admin_fh, user_fh = await open_path(ops, "/sched/runqueue", caller=ROOT_CTX), await open_path(ops, "/sched/runqueue")
    every, own = await read_all(ops, admin_fh), await read_all(ops, user_fh)
    assert b"tenant/default" in every and b"agent/1 " in every
    assert [row.split()[0] for row in own.splitlines()[1:]] == [b"tenant/a", b"agent/1"]
    for inode, text in ((user_inode, own), (admin_inode, every)):
        assert (await ops.getattr(inode, ROOT_CTX)).st_size == (await ops.getattr(inode, None)).st_size == len(text)
    await ops.release(admin_fh)
    await ops.release(user_fh)
    assert (await ops.getattr(user_inode, ctx())).st_size == len(own)


async def test_a_user_may_not_hold_another_view_of_the_runqueue(ops):
    """The admin's view of sched/runqueue, and tenant a's, are ENOENT to a user of tenant b, at getattr and open."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    await add_tenant(ops, b"add b weight=100 uids=1001")
    bob = types.SimpleNamespace(uid=1001, gid=1001, pid=os.getpid(), umask=0o022)
    for inode in (await inode_of(ops, "/sched/runqueue", ROOT_CTX), await inode_of(ops, "/sched/runqueue")):
        assert await fuse_errno(lambda: ops.getattr(inode, bob)) == errno.ENOENT
        assert await fuse_errno(lambda: ops.open(inode, os.O_RDONLY, bob)) == errno.ENOENT
    admin_and_alice = (await inode_of(ops, "/sched/runqueue", ROOT_CTX), await inode_of(ops, "/sched/runqueue"))
    assert await inode_of(ops, "/sched/runqueue", bob) not in admin_and_alice


async def test_a_gone_tenants_view_is_enoent(ops):
    """Once tenant a is removed, the inode of its view of sched/runqueue is gone, even to an admin."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    inode = await inode_of(ops, "/sched/runqueue")
    await ops.getattr(inode, ROOT_CTX)
    fh = await open_path(ops, "/ctl/tenants", os.O_WRONLY, caller=ROOT_CTX)
    await ops.write(fh, 0, b"remove a\n")
    await ops.release(fh)
    assert await fuse_errno(lambda: ops.getattr(inode, ROOT_CTX)) == errno.ENOENT


async def test_a_view_past_the_inode_range_is_left_out_of_a_listing(ops, listed, monkeypatch):
    """With room for one view, alice's takes it: bob (tenant b) lists sched/ without its tenanted files (runqueue,
    stat), and only his lookup of one is ENOSPC."""
    monkeypatch.setattr(ops.tree.views, "limit", views.VIEW_BASE + 1)
    await add_tenant(ops, b"add a weight=100 uids=1000")
    await add_tenant(ops, b"add b weight=100 uids=1001")
    await inode_of(ops, "/sched/runqueue")
    bob = types.SimpleNamespace(uid=1001, gid=1001, pid=os.getpid(), umask=0o022)
    sched = await inode_of(ops, "/sched", bob)
    fh = await ops.opendir(sched, bob)
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    names = [name for name, _, _ in listed.entries]
    assert names == [b"policy"]
    assert await fuse_errno(lambda: ops.lookup(sched, b"runqueue", bob)) == errno.ENOSPC


async def test_an_open_view_of_a_removed_tenant_still_stats(ops):
    """A user's open sched/runqueue answers getattr (fstat) with its snapshot's size after its tenant a is
    removed; once closed, its inode is ENOENT."""
    await add_tenant(ops, b"add a weight=100 uids=1000")
    inode = await inode_of(ops, "/sched/runqueue")
    fh = await ops.open(inode, os.O_RDONLY, ctx())
    snapshot = await read_all(ops, fh.fh)
    await add_tenant(ops, b"remove a")
    assert (await ops.getattr(inode, ctx())).st_size == len(snapshot)
    await ops.release(fh.fh)
    assert await fuse_errno(lambda: ops.getattr(inode, ctx())) == errno.ENOENT


async def test_open_a_directory_is_eisdir(ops):
    """open on a directory is EISDIR."""
    assert await fuse_errno(lambda: ops.open(ROOT, os.O_RDONLY, ctx())) == errno.EISDIR


async def test_submit_write_and_reply(ops):
    """A write to ctl/submit returns its length; a read on the same fd gives the pid."""
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    assert await ops.write(fh, 0, b"job1 10 5\n") == 10
    assert await ops.read(fh, 10, 100) == b"1\n"
    await ops.release(fh)
    assert ops.rt.kernel.tasks[1].uid == 1000


@pytest.mark.parametrize("line,code", [(b"job1 10 high\n", errno.EINVAL), (b"name=j model=nope\n", errno.ENOENT),
                                       (b"job1 100000000 5\n", errno.EINVAL)])
async def test_refused_write_carries_the_errno(ops, line, code):
    """A refused submit fails the write itself with the man page's errno and explains on the fd."""
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    assert await fuse_errno(lambda: ops.write(fh, 0, line)) == code
    assert (await ops.read(fh, 0, 100)).startswith(b"error: ")
    assert ops.rt.kernel.tasks == {}


async def test_task_ctl_errnos(ops):
    """cont on a running task is EBUSY; killing a task twice is EBUSY the second time."""
    submit(ops.rt)
    fh = await open_path(ops, "/tasks/1/ctl", os.O_WRONLY)
    assert await fuse_errno(lambda: ops.write(fh, 0, b"cont\n")) == errno.EBUSY
    assert await ops.write(fh, 0, b"kill\n") == 5
    assert await fuse_errno(lambda: ops.write(fh, 0, b"kill\n")) == errno.EBUSY


async def test_flush_is_enosys(ops):
    """FLUSH is ENOSYS (the kernel then stops sending it), and runs nothing pending."""
    fh = await open_path(ops, "/ctl/submit", os.O_WRONLY)
    await ops.write(fh, 0, b"late 5 5")
    assert await fuse_errno(lambda: ops.flush(fh)) == errno.ENOSYS
    assert ops.rt.kernel.tasks == {}


async def test_release_runs_an_unterminated_line(ops):
    """A last line without newline runs at release; a refused one fails the release (heard by no one) and is traced."""
    late = await open_path(ops, "/ctl/submit", os.O_WRONLY)
    await ops.write(late, 0, b"late 5 5")
    await ops.release(late)
    bad = await open_path(ops, "/ctl/submit", os.O_WRONLY)
    await ops.write(bad, 0, b"bad line")
    assert await fuse_errno(lambda: ops.release(bad)) == errno.EINVAL
    assert [task.spec.name for task in ops.rt.kernel.tasks.values()] == ["late"]
    assert ops.rt.kernel.counters.rejected == 1
    assert ops.handles == {}


@pytest.mark.parametrize("path,flags", [("/ctl/kill", os.O_RDWR), ("/README", os.O_WRONLY)])
async def test_open_against_mode_is_eacces(ops, path, flags):
    """Reading a write-only ctl file or writing a read-only one is EACCES."""
    inode = await inode_of(ops, path)
    assert await fuse_errno(lambda: ops.open(inode, flags, ctx())) == errno.EACCES


async def test_unexpected_exception_becomes_eio(ops, monkeypatch):
    """A bug inside a handler comes out as EIO, not as an exception that kills the mount."""
    def broken(inode):
        raise RuntimeError("boom")
    monkeypatch.setattr(ops.tree, "node", broken)
    assert await fuse_errno(lambda: ops.getattr(ROOT, ctx())) == errno.EIO
    assert await fuse_errno(lambda: ops.read(12345, 0, 10)) == errno.EIO


# -- blocking reads -----------------------------------------------------------------------------------


async def test_wait_blocks_until_the_task_ends(ops, autojump_clock):
    """A read of wait blocks while the task runs and returns `done` when it ends."""
    pid = submit(ops.rt, tokens=5)
    fh = await open_path(ops, f"/tasks/{pid}/wait")
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.rt.run)
        with trio.fail_after(60):
            assert await ops.read(fh, 0, 100) == b"done\n"
        nursery.cancel_scope.cancel()
    assert len(ops.rt.readers) == 0


async def test_stream_reads_to_eof(ops, autojump_clock):
    """stream gives the whole output as it is generated, then EOF."""
    pid = submit(ops.rt, tokens=6, prompt="tell me")
    fh = await open_path(ops, f"/tasks/{pid}/stream")
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.rt.run)
        with trio.fail_after(60):
            text = await read_all(ops, fh)
        nursery.cancel_scope.cancel()
    assert text == bytes(ops.rt.kernel.tasks[pid].output) and len(text.split()) == 6


async def test_blocked_reader_with_signal_gets_eintr(ops, autojump_clock):
    """A blocked read whose caller is gone (or has a signal pending) ends with EINTR."""
    pid = submit(ops.rt, tokens=5)
    fh = await open_path(ops, f"/tasks/{pid}/wait", caller=ctx(pid=NO_SUCH_PID))
    with trio.fail_after(60):
        assert await fuse_errno(lambda: ops.read(fh, 0, 100)) == errno.EINTR


@pytest.mark.parametrize("call", ["create", "mkdir", "unlink", "rmdir", "rename", "symlink", "link", "mknod"])
async def test_changing_the_tree_s_names_is_refused_with_a_documented_errno(tmp_path, call):
    """Creating a file is EACCES, making a directory, removing or renaming a name EPERM (as Linux's VFS says of
    a directory without those operations), never ENOSYS."""
    with open_runtime(tmp_path) as runtime:
        ops = Operations(Tree(runtime))
        ctl = await inode_of(ops, "/ctl")
        calls = {
            "create": lambda: ops.create(ctl, b"new", 0o644, os.O_WRONLY, ctx()),
            "mkdir": lambda: ops.mkdir(ctl, b"new", 0o755, ctx()),
            "unlink": lambda: ops.unlink(ctl, b"submit", ctx()),
            "rmdir": lambda: ops.rmdir(ROOT, b"ctl", ctx()),
            "rename": lambda: ops.rename(ctl, b"submit", ctl, b"x", 0, ctx()),
            "symlink": lambda: ops.symlink(ctl, b"l", b"submit", ctx()),
            "link": lambda: ops.link(ctl, ROOT, b"l", ctx()),
            "mknod": lambda: ops.mknod(ctl, b"n", 0o644, 0, ctx()),
        }
        assert await fuse_errno(calls[call]) == (errno.EACCES if call == "create" else errno.EPERM)
