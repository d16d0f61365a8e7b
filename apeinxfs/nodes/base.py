"""The kinds of node in the tree and their open-file handles, with no FUSE in sight.

- `Show`: a seq_file-like text, rendered by a function at open (a snapshot).
- `Log`: a growing byte buffer (output, trace); reads are live, size is bytes so far.
- `Blocking`: a pipe-like reader (stream, wait) that waits for the kernel to change.
- `Command`: a ctl file; complete lines run inside write(2), replies are read back.
- `Dir`: a directory of named children; `BuiltDir` builds its files when asked for, and
  `NamedDirs` holds one `BuiltDir` per name that exists now (tenants, models).
Nodes are cheap views built on demand; the FUSE adapter (fs.py) only maps inodes and
file handles onto these methods.
"""
import contextlib
import contextvars
import os
import re
import stat
import time
from collections.abc import Callable, Iterator

import attrs

from ..kernel.access import PID_MAX, UID_MAX, Identity, id_bound
from ..kernel.errors import ApeinxError, Denied, Hidden, Invalid, NotFound, RejectLine
from .buffers import Buffers, unfinished

LINE_MAX = (1 << 20) + 4096
OVER_LONG = bytes(LINE_MAX + 1)  # stands for the rest of a line already refused as too long
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
DIR_MODE = stat.S_IFDIR | 0o555
_AFTER_WRITE: contextvars.ContextVar[list | None] = contextvars.ContextVar("after_write", default=None)
_AT_CLOSE: contextvars.ContextVar = contextvars.ContextVar("at_close", default=lambda refusal: None)
BUG = "internal error in the daemon (logged)"  # the reason read back after a write that hit a bug


@attrs.frozen
class Caller:
    """Who opened a file, with the role and tenant access.py gave it: kept from the open
    request, since reads and writes have no ctx. Built without a role, it is root."""

    uid: int = attrs.field(default=0, validator=id_bound(UID_MAX))
    gid: int = attrs.field(default=0, validator=id_bound(UID_MAX))
    pid: int = attrs.field(default=0, validator=id_bound(PID_MAX))
    role: str = "admin"
    tenant: str | None = "default"
    identity: Identity = attrs.field(init=False, eq=False, repr=False)

    @identity.default
    def _identity(self) -> Identity:
        return Identity(self.uid, self.role, self.tenant)

    def may(self, node: "Node", want: int) -> None:
        """Raise ENOENT if `node` is another tenant's, EACCES if the role falls short of `want`."""
        identity = self.identity
        if node.hidden_from(identity):
            raise Hidden(f"no such entry for uid {self.uid}")
        if want & os.W_OK:
            identity.require(node.write_role, "writing this file")
        if want & os.R_OK:
            identity.require(node.read_role, "reading this file")


@attrs.define(eq=False)
class Node:
    """Something with an inode and a mode."""

    mode: int = stat.S_IFREG | 0o444
    inode: int = 0
    tenant: str | None = None  # whose it is: other tenants' callers do not see it
    owner: tuple | None = None  # (uid, gid) shown by getattr; None: the daemon's
    read_role: str = "none"  # the least role that may read it (access.RANKS)
    write_role: str = "user"

    def hidden_from(self, identity: Identity) -> bool:
        """Whether the node does not exist for `identity`: another tenant's."""
        return not identity.sees(self.tenant)

    def size(self) -> int:
        return 0

    def open(self, caller: Caller, writing: bool, reading: bool, truncating: bool = False):
        raise Denied("not a file")


@attrs.define(eq=False)
class Dir(Node):
    """A directory with a fixed set of children (`children`: name -> Node)."""

    mode: int = DIR_MODE
    children: dict = attrs.Factory(dict)

    def child(self, name: str) -> Node | None:
        return self.children.get(name)

    def entries(self) -> list[tuple[str, Node]]:
        return list(self.children.items())

    def entries_from(self, cookie: int) -> Iterator[tuple[int, str, Node]]:
        """readdir's entries from offset `cookie` on, each with the offset after it: here positions in
        entries(), listed anew at each readdir (a directory of many children names them by a key instead)."""
        for after, (name, node) in enumerate(self.entries()[cookie:], cookie + 1):
            yield after, name, node


@attrs.define(eq=False)
class BuiltDir(Dir):
    """A directory of the files in `names`, built when asked for (`build(name)`) at inodes
    computed from its own (its inode + 1 + the name's index), with its tenant and owner."""

    names: tuple = ()

    def build(self, name: str) -> Node:
        raise NotImplementedError

    def child(self, name):
        if name not in self.names:
            return None
        node = self.build(name)
        node.inode = self.inode + 1 + self.names.index(name)
        node.tenant, node.owner = self.tenant, self.owner
        return node

    def entries(self):
        return [(name, self.child(name)) for name in self.names]

    def by_slot(self, slot: int):
        return self.child(self.names[slot - 1]) if 1 <= slot <= len(self.names) else None


@attrs.define(eq=False)
class NamedDirs(Dir):
    """A directory of one `BuiltDir` per name in `current()` (a tenant, a model). A name is
    numbered the first time it is seen and keeps its inodes, `base + number x slots + slot`
    (slot 0: its directory, 1..: its files), even if it goes and comes back; inodes of a name
    that does not exist now are ENOENT. Subclasses say which names exist and build the dir."""

    base: int = 0
    limit: int = 0  # the first inode past this directory's range
    slots: int = 16
    numbers: dict = attrs.Factory(dict)
    names: list = attrs.Factory(list)

    def current(self):
        """The names that exist now (anything with `in`)."""
        raise NotImplementedError

    def make(self, name: str, inode: int) -> BuiltDir:
        raise NotImplementedError

    def number(self, name: str) -> int:
        """`name`'s number, given it the first time it is seen."""
        if name not in self.numbers:
            self.numbers[name] = len(self.names)
            self.names.append(name)
        return self.numbers[name]

    def named(self, name: str) -> BuiltDir:
        return self.make(name, self.base + self.number(name) * self.slots)

    def child(self, name):
        return self.named(name) if name in self.current() else None

    def entries(self):
        """Every name's directory but `.` and `..` (a tenant from before they were refused): an entry so named
        would stand for the directory itself or its parent (Linux FUSE adds no `.` or `..` of its own, and
        fs.py's readdir lists none)."""
        return [(name, self.named(name)) for name in self.listed()]

    def listed(self) -> list[str]:
        """The names that exist now but `.` and `..`, in the order they were first seen (by their numbers)."""
        return sorted((name for name in self.current() if name not in (".", "..")), key=self.number)

    def entries_from(self, cookie):
        """Offsets are the names' numbers (an entry's is its number + 1), as pids are in /tasks: a name removed
        mid-listing moves none after it, so an `ls` meets each name that exists throughout once."""
        for name in self.listed():
            if (number := self.number(name)) >= cookie:
                yield number + 1, name, self.named(name)

    def owns(self, inode: int) -> bool:
        return self.base <= inode < self.limit

    def by_inode(self, inode: int) -> Node:
        """The directory or file at `inode`, or NotFound."""
        number, slot = divmod(inode - self.base, self.slots)
        name = self.names[number] if number < len(self.names) else None
        node = None
        if name in self.current():
            directory = self.named(name)
            node = directory if slot == 0 else directory.by_slot(slot)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return node

    def name_of(self, inode: int) -> str:
        """`NAME/FILE` of a file's inode, `NAME` of its directory's (for the audit trail)."""
        number, slot = divmod(inode - self.base, self.slots)
        name = self.names[number]
        return f"{name}/{self.named(name).names[slot - 1]}" if slot else name


@attrs.define(eq=False)
class Show(Node):
    """Text rendered by `show()` when the file is opened (a snapshot, like seq_file).

    `volatile` text depends on the clock too, not only on kernel state, so it is never reused. `tenanted`
    text has rows of many tenants, of which a caller reads those it sees: `show(view)` renders the rows of
    the view's tenant (None: every tenant's, for admins). Each view is a node of its own, at an inode of its own
    (views.py), which only its readers and admins may hold."""

    show: object = None
    volatile: bool = False
    tenanted: bool = False
    view: str | None = None  # the view this node renders, if tenanted

    def view_of(self, identity: Identity) -> str | None:
        """The view `identity` reads: None (every row) for an admin or a text the same for all, else its own
        tenant's ("" for a caller of no role: no tenant's rows)."""
        if not self.tenanted or identity.admin:
            return None
        return "" if identity.role == "none" else identity.tenant or ""

    def hidden_from(self, identity: Identity) -> bool:
        """Another tenant's, or a view other than the caller's own (an admin holds any)."""
        own_view = not self.tenanted or identity.admin or self.view_of(identity) == self.view
        return not own_view or super().hidden_from(identity)

    def render(self) -> bytes:
        text = self.show(self.view) if self.tenanted else self.show()
        return text.encode() if isinstance(text, str) else bytes(text)

    def open(self, caller, writing, reading, truncating=False):
        if writing:
            raise Denied("read-only file")
        return SnapshotHandle(self)


@attrs.define(eq=False)
class Writes:
    """What the writes of a ctl or settings file are held to and where their refusals go, one for every such
    file of a daemon (Runtime.writes): `limits`, what its descriptors may hold (the daemon's buffers);
    `rejects(node, refusal, caller)`, the `reject` line of a refused write, at the node's path in the tree
    (nodes/tree.py `Tree.reject_at`, set by `send_rejects_to` as the Tree is built); None: nowhere."""

    limits: Buffers = attrs.Factory(Buffers)
    rejects: Callable[[Node, ApeinxError, Caller], None] | None = None

    def send_rejects_to(self, rejects: Callable[[Node, ApeinxError, Caller], None]) -> None:
        """Send the reject lines of the files built over these Writes to `rejects` (the one Tree built over the
        daemon's Runtime, whose paths they name); RuntimeError if they go to another already."""
        if self.rejects is not None:
            raise RuntimeError("one Tree per Runtime: its reject lines go to a tree already")
        self.rejects = rejects


@attrs.define(eq=False)
class Setting(Show):
    """A cgroup-style knob: reads show the value, writes (`run`, as a Command) set it."""

    mode: int = stat.S_IFREG | 0o644
    run: object = None
    writes: Writes = attrs.field(kw_only=True)  # its limits and where its refused writes go (Runtime.writes)

    def open(self, caller, writing, reading, truncating=False):
        return CommandHandle(self, caller, self.writes.limits) if writing else SnapshotHandle(self)


@attrs.define(eq=False)
class Log(Node):
    """A growing buffer: `source()` returns it; reads see bytes appended after open. A buffer rendered as far as
    it is read gives `head(end)` too: the buffer holding its first `end` bytes at least, if it has them. The size
    (a stat, a lookup) takes `source()`, all of it."""

    source: object = None
    head: Callable[[int], bytes | bytearray] | None = None  # None: a read takes `source()`

    def size(self) -> int:
        return len(self.source())

    def open(self, caller, writing, reading, truncating=False):
        if writing:
            raise Denied("read-only file")
        return LogHandle(self)


@attrs.define(eq=False)
class Blocking(Node):
    """A pipe-like file: `poll(offset, size)` returns up to `size` bytes, b'' at end, or None to wait on `key`."""

    poll: object = None
    key: object = None
    length: object = None

    def size(self) -> int:
        return self.length()

    def open(self, caller, writing, reading, truncating=False):
        if writing:
            raise Denied("read-only file")
        return BlockingHandle(self, caller)


@attrs.define(eq=False)
class Command(Node):
    """A ctl file: `run(lines, caller)` acts on complete lines and returns reply lines."""

    mode: int = stat.S_IFREG | 0o222
    run: object = None
    writes: Writes = attrs.field(kw_only=True)  # its limits and where its refused writes go (Runtime.writes)

    def open(self, caller, writing, reading, truncating=False):
        if reading and not self.mode & 0o444:
            raise Denied("write-only file: write commands to it")
        return CommandHandle(self, caller, self.writes.limits)


class Handle:
    """An open file. Subclasses override what they support."""

    node: Node

    async def read(self, offset: int, size: int, waiter) -> bytes:
        raise Denied("not open for reading")

    def write(self, data: bytes) -> int:
        raise Denied("not open for writing")

    async def write_async(self, data: bytes) -> int:
        """A write through the mount: `write`, unless the handle may wait (one forwarded to another node)."""
        return self.write(data)

    def release(self) -> None:
        """The last close; nothing to do by default (errors here reach no one)."""


def viewed(node) -> bool:
    """Whether each caller reaches a view of its own of `node`: a tenanted Show (views.py)."""
    return isinstance(node, Show) and node.tenanted


@attrs.define(eq=False)
class SnapshotHandle(Handle):
    node: Show
    data: bytes = b""  # the text it reads, set at open (fs.py, Tree.open_snapshot)

    async def read(self, offset, size, waiter):
        return self.data[offset:offset + size]


@attrs.define(eq=False)
class LogHandle(Handle):
    node: Log

    async def read(self, offset, size, waiter):
        node = self.node
        return bytes((node.source() if node.head is None else node.head(offset + size))[offset:offset + size])


@attrs.define(eq=False)
class BlockingHandle(Handle):
    node: Blocking
    caller: Caller

    async def read(self, offset, size, waiter):
        while (data := self.node.poll(offset, size)) is None:
            await waiter(self.node.key, self.caller)
        return data


@attrs.define(eq=False)
class CommandHandle(Handle):
    """Buffers partial lines; each write runs its complete lines and resets the reply. `limits`: its node's,
    given at open. `write_lines`: the lines of the whole write its lines are part of, when it was placed on
    several nodes (a peer's request says so, peer_server.py); 0: its own. Only a Forwarding node's `settle`
    counts it (forwarding.py). `part`: its writes are the lines a route runs here as part of a write through
    another handle (forwarding.py run_here), whose refusal that handle journals."""

    node: Command
    caller: Caller
    limits: Buffers
    pending: bytearray = attrs.Factory(bytearray)
    reply: bytes = b""
    refused_rest: bytes | None = None  # the piece of an unterminated over-long line that was refused
    write_lines: int = 0
    part: bool = False
    held: int = 0  # the bytes the limits' buffers count for this descriptor: len(pending), kept by `holding`
    written: bool = False  # whether any bytes came to it, taken or refused (by a line, or whole: E2BIG, ENOBUFS)

    async def read(self, offset, size, waiter):
        data, self.reply = self.reply[:size], self.reply[size:]
        return data

    async def write_async(self, data: bytes) -> int:
        return await self.write_here(data)

    async def write_here(self, data: bytes, checked: bool = False) -> int:
        """`write(data)` (with no check of its limits if this handle `checked` them already: a routed write), then
        what its lines left to finish before the write returns (`after_write`: a cluster's settings change waits
        until etcd has it and this node applied it, a submit until etcd has its tasks); a refusal then is the
        write's."""
        with self.holding(data, check=not checked):
            waits: list = []
            token = _AFTER_WRITE.set(waits)
            try:
                count = self._take(data)
            finally:
                _AFTER_WRITE.reset(token)
            with self.refusals():
                for wait in waits:
                    await wait()
        return count

    @contextlib.contextmanager
    def holding(self, writing: bytes | None = None, check: bool = True):
        """Whatever happens inside, the daemon's buffers count len(pending) for this descriptor after it: the
        one place `held` changes, around whatever changes `pending` (a write, its route and waits, the last
        close). `writing`: a write about to be taken (through any path: `write`, `write_here` from the mount, a
        route or a peer), the one place `written` is set; its limits are checked first unless `check` is False
        (E2BIG, ENOBUFS, before any line is read: a refusal is the write's); the unfinished line it will leave
        counts from then on if more (while its route or waits await, no other descriptor of the uid can take
        those bytes)."""
        self.written = self.written or bool(writing)
        try:
            if writing is not None and check:
                self._reserve(writing)
            yield
        finally:
            self.held = self.limits.hold(self.caller.uid, self.held, len(self.pending))

    def _reserve(self, data: bytes) -> None:
        with self.refusals():
            self.limits.check_write(self.caller.uid, data, len(self.pending), self.held)
        if (tail := unfinished(data, len(self.pending))) > self.held:
            self.held = self.limits.hold(self.caller.uid, self.held, tail)

    @contextlib.contextmanager
    def refusals(self):
        """A refusal or a bug raised inside is this write's: its reasons (a bug's: BUG) become the reply, its
        partial line is dropped (as any failed write's), and it goes on up (fs.py makes a bug EIO). A refusal is
        journaled here (`journal`), the one place every refused write of every ctl and settings file passes."""
        try:
            yield
        except Exception as exc:
            self.reply = reply_text(exc.reply() if isinstance(exc, ApeinxError) else [f"error: {BUG}"])
            self.pending.clear()
            if isinstance(exc, ApeinxError):
                self.journal(exc)
            raise

    def journal(self, refusal: ApeinxError) -> None:
        """The `reject` line of a refused write (its node's `writes.rejects`), if it is this node's to write
        (RejectLine.HERE) and the write this handle's (not `part` of another's); none while degraded
        (Runtime.reject)."""
        rejects = self.node.writes.rejects
        if refusal.reject_line is RejectLine.HERE and not self.part and rejects is not None:
            rejects(self.node, refusal, self.caller)

    def write(self, data: bytes) -> int:
        """Run the complete lines, all or none; a line over LINE_MAX, or a write over the limits, refuses the
        whole write. Any refusal or bug empties the buffer, so the descriptor starts afresh at the next write.
        The reply is this write's, empty if it ran no line."""
        with self.holding(data):
            return self._take(data)

    def _take(self, data: bytes) -> int:
        self.reply = b""
        self._refuse_rest(data)
        self.pending += data
        cut = self.pending.rfind(b"\n") + 1
        lines = bytes(self.pending[:cut]).split(b"\n")[:-1]
        tail_too_long = len(self.pending) - cut > LINE_MAX
        try:
            if lines or tail_too_long:
                self._run(lines + [bytes(self.pending[cut:])] if tail_too_long else lines)
        except BaseException:
            self.pending.clear()
            self.refused_rest = bytes(data) if tail_too_long else None
            raise
        del self.pending[:cut]
        return len(data)

    def _refuse_rest(self, data: bytes) -> None:
        """Refuse the rest of an over-long line. FUSE splits a write(2) into requests of about
        1 MiB, and a refused one after the first makes write(2) return a short count: the caller
        then writes the rest, which starts with the refused piece (or is the start of it)."""
        refused, self.refused_rest = self.refused_rest, None
        common = min(len(refused or b""), len(data))
        if refused is not None and common and data[:common] == refused[:common]:
            self.refused_rest = refused
            self._run([OVER_LONG])  # refused, journaled and traced as the line's first piece was

    def release(self) -> None:
        """An unterminated last line runs at the last close. FUSE sends no flush (fs.py), so its
        refusal reaches no caller: like any refusal it is journaled, traced and audited, also when it comes
        after the close (`refused_at_close`)."""
        with self.holding(), self.closing():
            self._last_close()

    def _last_close(self) -> None:
        """What the last close runs (inside `closing`): an unterminated last line."""
        if self.pending:
            lines, self.pending = [bytes(self.pending)], bytearray()
            self._run(lines)

    @contextlib.contextmanager
    def closing(self):
        """Inside, what runs is this handle's last close: a refusal that comes after it is journaled by its
        `journal` (`refused_at_close`)."""
        token = _AT_CLOSE.set(self.journal)
        try:
            yield
        finally:
            _AT_CLOSE.reset(token)

    def _run(self, raw_lines: list[bytes]) -> None:
        self.reply = b""
        with self.refusals():
            replies = self._command(raw_lines)
        self.reply = reply_text(replies)

    def _command(self, raw_lines: list[bytes]) -> list[str]:
        return self.node.run(raw_lines, self.caller)


def reply_text(replies: list[str]) -> bytes:
    """What a writer reads back after a write (docs/apeinxfs.5.md, Replies): a line per reply (a pid,
    `ok`; `error: REASON` of a refused write, ApeinxError.reply)."""
    return "".join(f"{reply}\n" for reply in replies).encode()


def after_write(wait) -> bool:
    """Have the write running now (`CommandHandle.write_here`: a write through the mount, lines a route runs
    here, a peer's request) await `wait()` before it returns; False outside one (a last line run at close:
    nothing waits for it)."""
    waits = _AFTER_WRITE.get()
    if waits is not None:
        waits.append(wait)
    return waits is not None


def refused_at_close():
    """How a refusal of the line run at close now (CommandHandle.release) is journaled once it comes, after the
    close (a cluster settings change put in the background): its handle's `journal`; outside a close, nowhere."""
    return _AT_CLOSE.get()


def decode_line(raw: bytes) -> str:
    """A line as text: UTF-8, no NUL or control characters except tab."""
    if len(raw) > LINE_MAX:
        raise Invalid(f"line longer than {LINE_MAX} bytes")
    try:
        line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise Invalid("line is not valid UTF-8") from None
    if _CONTROL.search(line):
        raise Invalid("line holds control characters")
    return line


def now_ns() -> int:
    return time.time_ns()
