"""The FUSE adapter: pyfuse3 Operations mapped onto the node tree (nodes/).

Thin on purpose: inodes and file handles in, node methods called, attributes out. The
one error boundary of the daemon lives here: ApeinxError becomes FUSEError(errno), any
other exception is logged (one line, rate-limited per uid) and becomes EIO, so no request
can take the mount down. Blocking reads wait through the runtime's `readers` (readers.py),
which caps them and ends them with EINTR once the reader has a signal pending (pyfuse3
has no interrupt hook). FLUSH is answered ENOSYS, which turns it off for the mount:
close(2) costs no round trip, and handles act at release instead.
"""
import errno
import functools
import itertools
import logging
import math
import os
import traceback

import pyfuse3
import trio

from .kernel.access import OVERFLOW_ID, UID_MAX, id_fits, identify, uses_gids
from .kernel.errors import ApeinxError, Denied, NoMemory, NotPermitted
from .nodes.base import BlockingHandle, Caller, Command, Dir, Setting, SnapshotHandle, viewed
from .ratelog import RateLog

log = logging.getLogger(__name__)

ATTR_TIMEOUT_S = 1.0
STATIC_S = 60.0  # how long the kernel may keep boot-time names (and their attributes if constant): fewer requests
CALLERS_MAX = 4096  # callers kept at once (all are dropped when the tenants or access rules change)
NEEDS = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}  # access mode -> permission it needs (O_RDWR: both)


def guarded(method):
    """Turn refusals into their errno and bugs into EIO; never let one escape."""
    @functools.wraps(method)
    async def wrapper(self, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except ApeinxError as exc:
            log.debug("%s refused: %s", method.__name__, exc.reason)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception as exc:
            self.log_bug(method.__name__, args, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def names_fixed(operation: str):
    """The handler of a FUSE call that would change the tree's names (mkdir, unlink, rename...): EPERM, as
    Linux's VFS answers for a directory without that operation (pyfuse3's default is ENOSYS)."""
    async def refuse(self, *args):
        raise NotPermitted(f"{operation}: the names of this file system are the daemon's")
    refuse.__name__ = operation
    return guarded(refuse)


def personal(node) -> bool:
    """Whether what `node` is depends on who asks: a tenant's (hidden from others), or a tenanted file's view."""
    return node.tenant is not None or viewed(node)


def supplementary_groups(pid: int) -> set:
    try:
        return pyfuse3.get_sup_groups(pid)
    except OSError:  # the caller is gone
        return set()


def request_timeout_s() -> float | None:
    """The kernel's FUSE request timeout, if one is set: blocking reads stay below it."""
    limits = []
    for name in ("default_request_timeout", "max_request_timeout"):
        try:
            with open(f"/proc/sys/fs/fuse/{name}") as file:
                limits.append(int(file.read()))
        except (OSError, ValueError):
            pass
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


class Operations(pyfuse3.Operations):
    """pyfuse3's request handlers over a `nodes.tree.Tree`."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree):
        super().__init__()
        self.tree = tree
        self.rt = tree.rt
        self.owner = (os.getuid(), os.getgid())
        self.handles: dict[int, object] = {}
        self.listings: dict[int, tuple[Dir, Caller]] = {}  # directory handle -> (its directory, who opened it)
        self.charged: dict[int, int] = {}  # file or directory handle -> the uid its bytes are charged to (openfiles.py)
        self._fh = itertools.count(1)
        self._callers: dict[tuple, Caller] = {}
        self._callers_rules = None
        limit = request_timeout_s()
        self.max_block_s = None if limit is None else max(1.0, limit - 2.0)
        self.bug_log = RateLog(log)

    def log_bug(self, method: str, args: tuple, exc: Exception) -> None:
        """One line per bug, where it was raised, rate-limited per uid: a user who makes every
        write fail cannot fill the disk with the log."""
        where = traceback.extract_tb(exc.__traceback__)[-1]
        self.bug_log.log(f"uid {self.uid_of(args)}", logging.ERROR, "bug in %s: %s: %r at %s:%d", method,
                         type(exc).__name__, str(exc)[:200], os.path.basename(where.filename), where.lineno)

    def uid_of(self, args: tuple):
        """The uid behind a request: its ctx's, or the opener's of its file handle (None: unknown)."""
        ctx = next((arg for arg in args if hasattr(arg, "uid")), None)
        if ctx is not None:
            return ctx.uid
        handle = self.handles.get(args[0]) if args and isinstance(args[0], int) else None
        return getattr(getattr(handle, "caller", None), "uid", None)

    def attributes(self, node) -> pyfuse3.EntryAttributes:
        """The node's attributes. A tenanted file's name is never cached (entry timeout 0): the kernel's
        dentry cache is shared by all callers, and each caller's lookup answers its own view's inode."""
        entry = pyfuse3.EntryAttributes()
        is_dir = isinstance(node, Dir)
        entry.st_ino, entry.st_mode = node.inode, node.mode
        entry.st_nlink = 2 if is_dir else 1
        entry.st_size = 0 if is_dir else self.tree.size(node)
        entry.st_uid, entry.st_gid = self.shown_owner(node.owner or self.owner)
        entry.st_blksize, entry.st_blocks = 4096, (entry.st_size + 511) // 512
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self.rt.clock.now_us() * 1000  # never back
        static = node.inode in self.tree.static and not viewed(node)  # a name made at boot, which never goes
        private = viewed(node) or node.tenant is not None and not self.all_see_all()
        entry.entry_timeout = STATIC_S if static else 0 if private else ATTR_TIMEOUT_S
        entry.attr_timeout = STATIC_S if static and isinstance(node, (Dir, Command)) else (  # never change
            ATTR_TIMEOUT_S if is_dir else 0)  # sizes change: the kernel must ask
        return entry

    def shown_owner(self, owner: tuple[int, int]) -> tuple[int, int]:
        """(uid, gid) as getattr can show them: an id out of bounds (a bug: pyfuse3 would raise, and every
        `ls` of its directory fail EIO) shown as OVERFLOW_ID, as Linux shows an id it cannot map, and logged."""
        if all(id_fits(value, UID_MAX) for value in owner):
            return owner
        self.bug_log.log("owner", logging.ERROR, "bug: a file's owner %r is no uid and gid; shown as %d",
                         owner, OVERFLOW_ID)
        uid, gid = (value if id_fits(value, UID_MAX) else OVERFLOW_ID for value in owner)
        return uid, gid

    def all_see_all(self) -> bool:
        """Whether every caller sees every task: one tenant, `default`, where unmapped callers are
        users or viewers. Otherwise a task's names are never cached (entry timeout 0): the kernel's
        dentry cache is shared by all callers, so each path walk must ask the daemon, which answers
        ENOENT to another tenant's caller (its attributes are reached only through such a walk). Names
        cached just before a second tenant came stay for at most ATTR_TIMEOUT_S, and every caller
        could see them until then."""
        kernel = self.rt.kernel
        return len(kernel.tenancy.tenants) == 1 and "default" in kernel.tenancy.tenants and kernel.config.access.unmapped != "none"

    def caller(self, ctx) -> Caller:
        """Who sent the request: its role and tenant (access.py), from uid, gid and groups. Kept per
        (uid, gid, pid) while the tenants and access rules are unchanged (all access.identify reads),
        unless supplementary groups may count."""
        kernel, key = self.rt.kernel, (ctx.uid, ctx.gid, ctx.pid)
        rules = (kernel.config.access, *kernel.tenancy.tenants.values())  # frozen records: == is mostly `is`
        if self._callers_rules != rules or len(self._callers) >= CALLERS_MAX:
            self._callers, self._callers_rules = {}, rules
        if (caller := self._callers.get(key)) is None:
            access = kernel.config.access
            who = identify(kernel.tenancy.tenants, access, ctx.uid, ctx.gid, lambda: supplementary_groups(ctx.pid))
            caller = Caller(ctx.uid, ctx.gid, ctx.pid, who.role, who.tenant)
            if not uses_gids(kernel.tenancy.tenants, access):
                self._callers[key] = caller
        return caller

    def node_for(self, inode: int, ctx):
        """The node of `inode` if the caller may see it (another tenant's, or another's view, is ENOENT)."""
        node = self.tree.node(inode)
        if ctx is not None and personal(node):
            self.caller(ctx).may(node, 0)
        return node

    def check(self, node, caller: Caller, want: int) -> None:
        """The mount has no default_permissions: roles and tenants (access.py) are checked here."""
        caller.may(node, want)
        if want & os.X_OK and not (node.mode & 0o111 or isinstance(node, Dir)):
            raise Denied("not executable")

    @guarded
    async def access(self, inode, mode, ctx):
        self.check(self.tree.node(inode), self.caller(ctx), mode)
        return True

    @guarded
    async def lookup(self, parent_inode, name, ctx=None):
        child = self.tree.lookup(parent_inode, os.fsdecode(name))
        if ctx is not None and personal(child):
            caller = self.caller(ctx)
            child = self.tree.reached(child, caller.identity)
            caller.may(child, 0)
        entry = self.attributes(child)
        self.tree.views.looked_up(child.inode)  # the kernel counts each inode it is given, until FORGET
        return entry

    @guarded
    async def getattr(self, inode, ctx=None):
        """The attributes of `inode`; of a file open now, with no check of who asks: Linux checks access at open,
        and fstat(2) of an open descriptor works even once its caller could open it no more (its tenant
        removed, or the caller moved to another: then a new lookup reaches the caller's view now)."""
        return self.attributes(self.tree.opened(inode) or self.node_for(inode, ctx))

    @guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        """Truncation to 0 of a file the caller may write is a no-op (commands are not stored), so
        `truncate -s 0` works; modes, owners and times are the daemon's to say: EPERM."""
        node = self.node_for(inode, ctx)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise NotPermitted("modes and owners are fixed on this file system")
        if fields.update_size:  # truncate(2) sets the mtime too: times are refused only on their own
            self.truncate(node, attr.st_size, self.caller(ctx))
        elif fields.update_atime or fields.update_mtime or fields.update_ctime:
            raise NotPermitted("times are fixed on this file system")
        return self.attributes(node)

    def truncate(self, node, size: int, caller: Caller) -> None:
        """Allow truncation to 0 of a file the caller may write; it does nothing."""
        if size != 0:
            raise NotPermitted("only truncation to size 0 is allowed, and it does nothing")
        if not isinstance(node, (Command, Setting)):
            raise Denied("read-only file")
        caller.may(node, os.W_OK)

    @guarded
    async def opendir(self, inode, ctx):
        """A directory handle holds its directory and caller, no listing: each readdir lists from its offset."""
        node = self.tree.node(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        caller = self.caller(ctx)
        self.check(node, caller, os.R_OK)
        fh = self.admit(node, caller, None)
        self.listings[fh] = (node, caller)
        return fh

    @guarded
    async def readdir(self, fh, start_id, token):
        directory, caller = self.listings[fh]
        given = []
        for after, name, node in self.tree.entries_from(directory, caller.identity, start_id):
            if caller.role != "admin" and node.hidden_from(caller.identity):
                continue
            if not pyfuse3.readdir_reply(token, name.encode(), self.attributes(node), after):
                break
            given.append(node.inode)
        for inode in given:  # only once the reply holds them all: one that raises makes the reply an error
            self.tree.views.looked_up(inode)  # readdirplus: the kernel counts each entry as a lookup

    @guarded
    async def releasedir(self, fh):
        if self.listings.pop(fh, None) is not None:
            self.tree.drop_descriptor(self.charged.pop(fh))

    @guarded
    async def open(self, inode, flags, ctx):
        node = self.tree.node(inode)
        if isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        mode, caller = flags & os.O_ACCMODE, self.caller(ctx)
        try:
            self.check(node, caller, NEEDS.get(mode, os.R_OK | os.W_OK))
        except Denied as exc:  # a role refused at open (a viewer's submit): a denial, so audited
            self.tree.reject_at(node, exc, caller)
            raise
        handle = node.open(caller, writing=mode != os.O_RDONLY, reading=mode != os.O_WRONLY,
                           truncating=bool(flags & os.O_TRUNC))
        fh = self.admit(node, caller, handle)  # refused: no last close runs (`: > ctl/policy` would empty the rules)
        self.handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def admit(self, node, caller: Caller, handle) -> int:
        """A new descriptor's number, its bytes charged to `caller`'s uid: its own, and the snapshot it reads if
        `handle` is a show file's (set here). One past limits.open_bytes is refused (ENOMEM) and recorded as a
        rejected write is."""
        try:
            if isinstance(handle, SnapshotHandle):
                handle.data = self.tree.open_snapshot(node, caller.uid)
            else:
                self.tree.hold_descriptor(caller.uid)
        except NoMemory as exc:
            self.tree.reject_at(node, exc, caller)
            raise
        fh = next(self._fh)
        self.charged[fh] = caller.uid
        return fh

    @guarded
    async def read(self, fh, off, size):
        handle = self.handles[fh]
        if not isinstance(handle, BlockingHandle):
            return await handle.read(off, size, None)
        deadline = trio.current_time() + self.max_block_s if self.max_block_s else math.inf
        with self.rt.readers.waiting(deadline) as waiter:
            return await handle.read(off, size, waiter)

    @guarded
    async def write(self, fh, off, buf):
        return await self.handles[fh].write_async(buf)

    async def flush(self, fh):
        """ENOSYS, so the kernel sends no more FLUSH on this mount: each close(2) saves a round trip
        (pyfuse3 cannot set FOPEN_NOFLUSH per file). What a close does happens at release."""
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @guarded
    async def release(self, fh):
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        uid = self.charged.pop(fh)
        try:
            handle.release()  # a last line refused here raises: its bytes are freed all the same
        finally:
            if isinstance(handle, SnapshotHandle):
                self.tree.close_snapshot(handle.node.inode, uid, handle.data)
            else:
                self.tree.drop_descriptor(uid)

    @guarded
    async def create(self, parent_inode, name, mode, flags, ctx):
        """A name that does not exist, opened with O_CREAT (`echo x > /ai/ctl/submt`, a typo): EACCES, as
        Linux's VFS answers for a directory without create."""
        raise Denied(f"cannot create {os.fsdecode(name)!r}: the names of this file system are the daemon's")

    mknod = names_fixed("mknod")
    mkdir = names_fixed("mkdir")
    unlink = names_fixed("unlink")
    rmdir = names_fixed("rmdir")
    rename = names_fixed("rename")
    symlink = names_fixed("symlink")
    link = names_fixed("link")

    @guarded
    async def statfs(self, ctx):
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = stats.f_frsize = 4096
        stats.f_namemax = 255
        stats.f_files = len(self.rt.kernel.tasks)
        return stats

    async def forget(self, inode_list):
        """The kernel drops its lookups of inodes: a view's inode is given back once it holds none (views.py);
        the others are computed, not stored. Raises nothing: it answers no request (pyfuse3)."""
        for inode, count in inode_list:
            try:
                self.tree.views.forgotten(inode, count)
            except Exception as exc:  # the others' counts are still taken off
                self.log_bug("forget", (), exc)
