"""The views of tenanted files (Show.tenanted), each at an inode of its own.

A tenanted file shows each caller the rows of the caller's own tenant (Show.view_of). The kernel keeps one
size per inode for every caller, and splice and sendfile stop at it, so each view is a node of its own: the
admin's view (every row) is the file's boot-time inode; the view of tenant T, or of a caller of no role
(""), is at VIEW_BASE + number x files + index, where a view's number is given the first time it is asked
for and kept, as NamedDirs keeps a name's, and `index` is the file's among the tenanted ones. A view of a
tenant that no longer exists is ENOENT (to getattr only once no descriptor has it open: fs.getattr).
Which caller may hold which view is Show.hidden_from's to say.
"""
from collections.abc import Callable

import attrs

from ..kernel.errors import NoSpace, NotFound
from .base import Show

VIEW_BASE = 1 << 16
VIEW_LIMIT = 1 << 17  # the first inode past the views' range (members.NODE_BASE)


@attrs.define(eq=False)
class Views:
    """View name -> its nodes, one per tenanted file; built when asked for, dropped once the tenant goes."""

    files: list[Show]  # the tenanted files, in the order of their index
    exists: Callable[[str], bool]  # whether tenant T exists now
    numbers: dict[str, int] = attrs.Factory(dict)
    names: list[str] = attrs.Factory(list)
    built: dict[int, Show] = attrs.Factory(dict)  # inode -> a view's node

    def node(self, file: Show, view: str | None) -> Show:
        """The node of `file` that renders `view` (None: the file itself, every tenant's rows)."""
        if view is None:
            return file
        if view not in self.numbers:
            if VIEW_BASE + (len(self.names) + 1) * len(self.files) > VIEW_LIMIT:
                raise NoSpace(f"no inode left for the view of tenant {view!r}: {len(self.names)} views since start")
            self.numbers[view] = len(self.names)
            self.names.append(view)
        return self.by_inode(VIEW_BASE + self.numbers[view] * len(self.files) + self.files.index(file))

    def owns(self, inode: int) -> bool:
        return VIEW_BASE <= inode < VIEW_BASE + len(self.names) * len(self.files)

    def file_of(self, inode: int) -> Show:
        """The tenanted file whose view is at `inode`."""
        return self.files[(inode - VIEW_BASE) % len(self.files)]

    def by_inode(self, inode: int) -> Show:
        """The view's node at `inode` (owned by these views), or NotFound if its tenant is gone."""
        view = self.names[(inode - VIEW_BASE) // len(self.files)]
        if view and not self.exists(view):
            self.built.pop(inode, None)
            raise NotFound(f"no tenant {view}: its view is gone")
        if (node := self.built.get(inode)) is None:
            node = self.built[inode] = attrs.evolve(self.file_of(inode), inode=inode, view=view)
        return node
