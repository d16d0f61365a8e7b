"""The views of tenanted files (Show.tenanted), each at an inode of its own, given back once the kernel drops it.

A tenanted file shows each caller the rows of the caller's own tenant (Show.view_of). The kernel keeps one
size per inode for every caller, and splice and sendfile stop at it, so each view is a node of its own: the
admin's view (every row) is the file's own inode (a boot-time one, or a computed one: /nodes/NAME/tasks); the
view of tenant T, or of a caller of no role (""), of a file is at an inode of [base, limit) given to that
(file, view) pair the first time it is asked for. A view of a tenant that no longer exists, or of a file that
does not (a node no longer listed), is ENOENT (to getattr only once no descriptor has it open: fs.getattr).
Which caller may hold which view is Show.hidden_from's to say.

An inode is given back (`sweep`) once its view can no longer be reached (its tenant or its file gone) and the
kernel holds no reference to it: its lookup count, which fs.py adds to at each lookup and readdirplus entry it
answers and takes from at each FORGET (the kernel counts exactly those replies, and forgets each inode it
evicts, with its count), is 0, and no descriptor has it open (a RELEASE may come after the FORGET). The kernel
then has no inode of that number, so no dentry and no attributes of it: the number may go to a new pair. Numbers
never given go first, so a number given back waits as long as it can; once none is left, a new view sweeps. The
views are indexed by tenant and by file: a sweep asks once per tenant whether it exists and once per file
whether it does, and looks only at the views of those gone; and only if something happened that could free one
(`changes`, the state's version: a tenant removed; or a count gone to 0), else only at the views gone that a
descriptor held at the last sweep (a view of a node no longer listed, if that changed no version, waits for the
next change). One of those is given back once closed only if the kernel still has no count of it and it is
still gone. Nothing read sweeps: /metrics and /health say the views held now and at the last sweep.
The render cache (Tree.render, by inode and state version) cannot hand a new view its number's old text: the old
view was last rendered before its tenant's removal, an event, so at an older version (a node's tasks file is
volatile: never cached). With the range full, a walk that replaces a kernel's name of a view gone may be refused
ENOSPC before the FORGET of that name's inode arrives (the kernel may send it only as the walk ends); the next
walk gets it. Not here: who reaches which view (Tree), FUSE itself (fs.py).
"""
from collections import deque
from collections.abc import Callable

import attrs

from ..kernel.errors import NoSpace, NotFound
from .base import Show

VIEW_BASE = 1 << 16
VIEW_LIMIT = 1 << 17  # the first inode past the views' range (members.NODE_BASE)
WARNED_PERCENT = 80  # /health warns once more of the range than this is in use


@attrs.define(eq=False)
class Views:
    """(tenanted file, view) -> the view's node, built when asked for; its inode given back once unreachable and
    unknown to the kernel."""

    file_at: Callable[[int], Show]  # the tenanted file at an inode, or NotFound (Tree.node)
    exists: Callable[[str], bool]  # whether tenant T exists now
    changes: Callable[[], object]  # changes whenever a tenant or a file may have gone (Runtime.version)
    opened: Callable[[int], object] = lambda inode: None  # what a descriptor has open at an inode (Tree.opened)
    base: int = VIEW_BASE
    limit: int = VIEW_LIMIT  # the first inode past the range
    numbers: dict[tuple[int, str], int] = attrs.Factory(dict)  # (file's inode, view) -> its inode
    pairs: dict[int, tuple[int, str]] = attrs.Factory(dict)  # inode -> (file's inode, view)
    of_view: dict[str, set[int]] = attrs.Factory(dict)  # view (a tenant, or "") -> the inodes of its views
    of_file: dict[int, set[int]] = attrs.Factory(dict)  # file's inode -> the inodes of its views
    lookups: dict[int, int] = attrs.Factory(dict)  # inode -> the kernel's lookup count of it, if not 0
    freed: deque[int] = attrs.Factory(deque)  # inodes given back, the first given back given again first
    unused: int = attrs.field(default=attrs.Factory(lambda self: self.base, takes_self=True))  # never given from here
    built: dict[int, Show] = attrs.Factory(dict)  # inode -> a view's node
    forgets: int = 0  # FORGETs that took a view's count to 0
    swept: object = None  # (changes(), forgets) at the last sweep
    closing: set[int] = attrs.Factory(set)  # views gone and forgotten at the last sweep, a descriptor open on each
    kept: int = 0  # inodes a sweep could not give back, at the last one

    def node(self, file: Show, view: str | None) -> Show:
        """The node of `file` that renders `view` (None: the file itself, every tenant's rows)."""
        if view is None:
            return file
        pair = (file.inode, view)
        if (inode := self.numbers.get(pair)) is None:
            inode = self.numbers[pair] = self._give(view)
            self.pairs[inode] = pair
            self.of_view.setdefault(view, set()).add(inode)
            self.of_file.setdefault(file.inode, set()).add(inode)
        return self.by_inode(inode)

    def _give(self, view: str) -> int:
        """An inode for a new view: one never given, else one given back; NoSpace if none is left."""
        if self.unused < self.limit:
            self.unused += 1
            return self.unused - 1
        if not self.freed:
            self.sweep()
        if not self.freed:
            raise NoSpace(f"no inode left for the view of tenant {view!r}: all {self.limit - self.base} are "
                          "in use (see /health)")
        return self.freed.popleft()

    def owns(self, inode: int) -> bool:
        return inode in self.pairs

    def file_of(self, inode: int) -> int:
        """The inode of the tenanted file whose view is at `inode`."""
        return self.pairs[inode][0]

    def by_inode(self, inode: int) -> Show:
        """The view's node at `inode` (owned by these views), or NotFound if its tenant or its file is gone."""
        try:
            file = self._file(inode)
        except NotFound:
            self.built.pop(inode, None)
            raise
        if (node := self.built.get(inode)) is None:
            node = self.built[inode] = attrs.evolve(file, inode=inode, view=self.pairs[inode][1])
        return node

    def _file(self, inode: int) -> Show:
        """The tenanted file of the view at `inode`, or NotFound if its tenant or the file is gone."""
        file_inode, view = self.pairs[inode]
        if view and not self.exists(view):
            raise NotFound(f"no tenant {view}: its view is gone")
        return self.file_at(file_inode)

    def looked_up(self, inode: int) -> None:
        """The kernel was given `inode` once more (a lookup's or a readdirplus entry's reply)."""
        if inode in self.pairs:
            self.lookups[inode] = self.lookups.get(inode, 0) + 1
            self.closing.discard(inode)

    def forgotten(self, inode: int, count: int) -> None:
        """The kernel dropped `count` of its lookups of `inode` (FORGET)."""
        left = self.lookups.pop(inode, 0) - count
        if left > 0:
            self.lookups[inode] = left
        elif inode in self.pairs:
            self.forgets += 1

    def sweep(self) -> None:
        """Give back the inode of each view that cannot be reached, that the kernel does not hold and that no
        descriptor has open. Only if a tenant or a file may have gone, or a count went to 0, since the last sweep
        are the views of tenants and files gone looked at; else only those a descriptor held then, each checked
        again once closed (a close is no event here): a walk refused at a full range walks no list of views."""
        if (mark := (self.changes(), self.forgets)) != self.swept:
            self.swept, self.closing = mark, self._unreachable() - self.lookups.keys()
            self._give_back({inode for inode in self.closing if self.opened(inode) is None})
        else:
            closed = {inode for inode in self.closing if self.opened(inode) is None}
            self.closing -= closed
            self._give_back({inode for inode in closed if self._gone(inode)})
        self.kept = len(self.pairs)

    def _unreachable(self) -> set[int]:
        """The views of tenants and of files gone: each tenant and each file asked about once."""
        gone: set[int] = set()
        for view, inodes in self.of_view.items():
            if view and not self.exists(view):
                gone |= inodes
        for file_inode, inodes in self.of_file.items():
            if not self._file_exists(file_inode):
                gone |= inodes
        return gone

    def _file_exists(self, file_inode: int) -> bool:
        """Whether the tenanted file at `file_inode` exists now."""
        try:
            self.file_at(file_inode)
        except NotFound:
            return False
        return True

    def _give_back(self, inodes: set[int]) -> None:
        """Free `inodes` (views gone, neither held by the kernel nor open) for new views, lowest first."""
        self.closing -= inodes
        for inode in sorted(inodes):
            file_inode, view = pair = self.pairs.pop(inode)
            del self.numbers[pair]
            _drop(self.of_view, view, inode)
            _drop(self.of_file, file_inode, inode)
            self.built.pop(inode, None)
            self.freed.append(inode)

    def _gone(self, inode: int) -> bool:
        """Whether no path walk can reach the view at `inode` again: its tenant or its file is gone."""
        file_inode, view = self.pairs[inode]
        return bool(view) and not self.exists(view) or not self._file_exists(file_inode)

    def check_invariants(self) -> None:
        """numbers and pairs are one map both ways, indexed by view and by file; only views in use have lookups;
        an inode given back is in use no more; every inode in use or given back was given, from the range."""
        assert {inode: pair for pair, inode in self.numbers.items()} == self.pairs
        assert {(file, self.pairs[inode][1]) for file, inodes in self.of_file.items() for inode in inodes} == \
            {(self.pairs[inode][0], view) for view, inodes in self.of_view.items() for inode in inodes} == \
            set(self.numbers)
        assert all(self.of_view.values()) and all(self.of_file.values())
        assert set(self.lookups) <= set(self.pairs) and all(count > 0 for count in self.lookups.values())
        assert not set(self.freed) & set(self.pairs) and len(set(self.freed)) == len(self.freed)
        assert self.closing <= set(self.pairs) - set(self.lookups)
        assert all(self.base <= inode < self.unused <= self.limit for inode in [*self.pairs, *self.freed])

    def in_use(self) -> int:
        """Inodes held by views now: given and not given back (views gone wait for the next sweep)."""
        return len(self.pairs)

    def warning(self) -> str | None:
        """/health's warning once the last sweep left more than WARNED_PERCENT of the range in use: how much, and
        what to do."""
        room = self.limit - self.base
        if self.kept * 100 <= room * WARNED_PERCENT:
            return None
        return (f"views: {self.kept} of {room} inodes for tenants' views of split files in use at the last look "
                "(a new view once none was left); once all are, a path walk to a view not given one yet fails "
                "ENOSPC: remove tenants no longer used, and close descriptors open on removed tenants' views (an "
                "inode is given back once its tenant is gone and the kernel forgot it)")


def _drop(index: dict, key, inode: int) -> None:
    """Take `inode` out of `index[key]`, and the key with its last inode."""
    index[key].discard(inode)
    if not index[key]:
        del index[key]
