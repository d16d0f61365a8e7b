"""The views of tenanted files (Show.tenanted), each at an inode of its own.

A tenanted file shows each caller the rows of the caller's own tenant (Show.view_of). The kernel keeps one
size per inode for every caller, and splice and sendfile stop at it, so each view is a node of its own: the
admin's view (every row) is the file's own inode (a boot-time one, or a computed one: /nodes/NAME/tasks); the
view of tenant T, or of a caller of no role (""), of a file is at VIEW_BASE + its number, a number given to
that (file, view) pair the first time it is asked for and kept, as NamedDirs keeps a name's. A view of a tenant
that no longer exists, or of a file that does not (a node no longer listed), is ENOENT (to getattr only once
no descriptor has it open: fs.getattr). Which caller may hold which view is Show.hidden_from's to say.
"""
from collections.abc import Callable

import attrs

from ..kernel.errors import NoSpace, NotFound
from .base import Show

VIEW_BASE = 1 << 16
VIEW_LIMIT = 1 << 17  # the first inode past the views' range (members.NODE_BASE)


@attrs.define(eq=False)
class Views:
    """(tenanted file, view) -> the view's node, built when asked for, dropped once its tenant or file goes."""

    file_at: Callable[[int], Show]  # the tenanted file at an inode, or NotFound (Tree.node)
    exists: Callable[[str], bool]  # whether tenant T exists now
    numbers: dict[tuple[int, str], int] = attrs.Factory(dict)  # (file's inode, view) -> its number
    pairs: list[tuple[int, str]] = attrs.Factory(list)  # by number
    built: dict[int, Show] = attrs.Factory(dict)  # inode -> a view's node

    def node(self, file: Show, view: str | None) -> Show:
        """The node of `file` that renders `view` (None: the file itself, every tenant's rows)."""
        if view is None:
            return file
        pair = (file.inode, view)
        if pair not in self.numbers:
            if VIEW_BASE + len(self.pairs) >= VIEW_LIMIT:
                raise NoSpace(f"no inode left for the view of tenant {view!r}: {len(self.pairs)} views since start")
            self.numbers[pair] = len(self.pairs)
            self.pairs.append(pair)
        return self.by_inode(VIEW_BASE + self.numbers[pair])

    def owns(self, inode: int) -> bool:
        return VIEW_BASE <= inode < VIEW_BASE + len(self.pairs)

    def file_of(self, inode: int) -> int:
        """The inode of the tenanted file whose view is at `inode`."""
        return self.pairs[inode - VIEW_BASE][0]

    def by_inode(self, inode: int) -> Show:
        """The view's node at `inode` (owned by these views), or NotFound if its tenant or its file is gone."""
        file_inode, view = self.pairs[inode - VIEW_BASE]
        if view and not self.exists(view):
            self.built.pop(inode, None)
            raise NotFound(f"no tenant {view}: its view is gone")
        file = self.file_at(file_inode)
        if (node := self.built.get(inode)) is None:
            node = self.built[inode] = attrs.evolve(file, inode=inode, view=view)
        return node
