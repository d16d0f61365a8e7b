"""The rendered texts that open show files read, and the bytes each uid's descriptors hold (`[limits]`).

An open of a show file reads the file's text as it was at that open, until it closes. Snapshots of the same
text are one bytes object, whichever file and descriptor hold it: 300 opens of one 1 MiB prompt hold 1 MiB,
even with events between them. A uid's descriptors together may hold at most `open_bytes` bytes of distinct
snapshots (ENOMEM, as open(2) of a pipe past the per-user pipe memory): root's and admins' too, each uid apart,
as a cgroup's memory.max binds whoever is in it. Each inode keeps the sizes of its open snapshots: getattr
shows the largest. Not here: rendering and its cache (Tree.render), who may open what (fs.py, access.py).
"""
import attrs

from ..kernel.errors import NoMemory
from .base import Show

OPEN_BYTES = 256 << 20


@attrs.define(eq=False)
class OpenSnapshots:
    """The open snapshots: each distinct text once, each inode's open sizes, each uid's share."""

    open_bytes: int = OPEN_BYTES
    texts: dict[bytes, list] = attrs.Factory(dict)  # text -> [the one object of it, descriptors reading it]
    pinned: dict[int, tuple[Show, list[int]]] = attrs.Factory(dict)  # inode -> its node, its open sizes
    held: dict[int, dict[bytes, int]] = attrs.Factory(dict)  # uid -> text -> its descriptors reading it
    charged: dict[int, int] = attrs.Factory(dict)  # uid -> bytes of the distinct texts in held[uid]

    def open(self, node: Show, uid: int, text: bytes) -> bytes:
        """The snapshot a new descriptor of `uid` on `node` reads: `text`, or the equal one already held;
        NoMemory if that would take the uid past open_bytes."""
        shared = self.texts.get(text, (text,))[0]
        mine = self.held.get(uid, {})
        if shared not in mine and (total := self.charged.get(uid, 0) + len(shared)) > self.open_bytes:
            raise NoMemory(f"uid {uid}'s open files would hold {total} bytes of snapshots, more than "
                           f"limits.open_bytes ({self.open_bytes}): close some")
        self.texts.setdefault(shared, [shared, 0])[1] += 1
        self.pinned.setdefault(node.inode, (node, []))[1].append(len(shared))
        if shared not in mine:
            self.charged[uid] = self.charged.get(uid, 0) + len(shared)
        self.held.setdefault(uid, mine)[shared] = mine.get(shared, 0) + 1
        return shared

    def close(self, inode: int, uid: int, text: bytes) -> None:
        """A descriptor of `uid` on `inode` that read `text` (what open returned) is closed."""
        sizes = self.pinned[inode][1]
        sizes.remove(len(text))
        if not sizes:
            del self.pinned[inode]
        entry = self.texts[text]
        entry[1] -= 1
        if not entry[1]:
            del self.texts[text]
        mine = self.held[uid]
        mine[text] -= 1
        if not mine[text]:
            del mine[text]
            self.charged[uid] -= len(text)
        if not mine:
            del self.held[uid], self.charged[uid]

    def check_invariants(self) -> None:
        """Each uid is charged its distinct texts once; each text counts every descriptor reading it."""
        for uid, mine in self.held.items():
            assert self.charged[uid] == sum(map(len, mine)), (uid, self.charged[uid])
        assert set(self.charged) == set(self.held)
        readers = sum(count for mine in self.held.values() for count in mine.values())
        assert readers == sum(entry[1] for entry in self.texts.values()) == sum(
            len(sizes) for _, sizes in self.pinned.values())

    def opened(self, inode: int) -> Show | None:
        pinned = self.pinned.get(inode)
        return pinned[0] if pinned else None

    def largest(self, inode: int) -> int | None:
        """The size of the largest snapshot open on `inode`; None if none is open."""
        pinned = self.pinned.get(inode)
        return max(pinned[1]) if pinned else None
